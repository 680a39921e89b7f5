from pathlib import Path

import pytest

from pipeline.core.config import JobConfig
from pipeline.core.errors import ConfigError
from pipeline.core.loader import apply_override, config_from_dict, load_config

ROOT = Path(__file__).resolve().parent.parent


def minimal(**sections: dict) -> dict:
    raw = {
        "source": {"path": "in", "prompt_column": "prompt"},
        "endpoint": {"name": "echo", "host": "http://127.0.0.1:1"},
        "sink": {"path": "out"},
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return raw


def error_for(raw: dict, env: dict | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        config_from_dict(raw, env=env or {})
    return caught.value


@pytest.mark.parametrize("name", ["local.yaml", "databricks.yaml"])
def test_shipped_configs_load(name: str) -> None:
    config = load_config(ROOT / "conf" / name, env={"DATABRICKS_HOST": "https://example.com"})
    assert isinstance(config, JobConfig)
    assert config.endpoint.serving_base_url.endswith("/serving-endpoints")


def test_defaults_live_next_to_fields() -> None:
    config = config_from_dict(minimal(), env={})
    assert config.limits.concurrency == 32
    assert (config.sink.mode, config.sink.chunk_rows, config.sink.retries_errors) == (
        "merge", 1_000_000, True
    )
    assert config.request.dedupe is True
    assert config.endpoint.api == "invocations"
    assert config.endpoint.token_env == "DATABRICKS_TOKEN"


def test_unknown_key_is_named_with_a_suggestion() -> None:
    err = error_for(minimal(source={"promt_column": "x"}))
    assert err.key == "source.promt_column"
    assert "did you mean 'prompt_column'" in str(err)


def test_wrong_type_names_key_and_expected_type() -> None:
    err = error_for(minimal(limits={"concurrency": "many"}))
    assert err.key == "limits.concurrency"
    assert "integer" in str(err)


def test_bool_is_not_a_number() -> None:
    assert error_for(minimal(request={"max_tokens": True})).key == "request.max_tokens"


def test_missing_required_key() -> None:
    raw = minimal()
    del raw["endpoint"]["name"]
    assert error_for(raw).key == "endpoint.name"


def test_missing_section() -> None:
    raw = minimal()
    del raw["sink"]
    assert error_for(raw).key == "sink"


def test_literal_lists_accepted_values() -> None:
    err = error_for(minimal(endpoint={"api": "completions"}))
    assert err.key == "endpoint.api"
    assert "invocations, chat_completions, responses" in str(err)


def test_exactly_one_input_kind() -> None:
    err = error_for(minimal(source={"template": "Hi {name}"}))
    assert "prompt_column" in str(err) and "template" in str(err)


def test_host_defaults_from_environment() -> None:
    raw = minimal()
    del raw["endpoint"]["host"]
    config = config_from_dict(raw, env={"DATABRICKS_HOST": "https://adb.example.net/"})
    assert config.endpoint.serving_base_url == "https://adb.example.net/serving-endpoints"
    assert error_for(raw).key == "endpoint.host"


def test_base_url_wins_over_host() -> None:
    config = config_from_dict(minimal(endpoint={"base_url": "http://gw/v1/"}), env={})
    assert config.endpoint.serving_base_url == "http://gw/v1"


def test_template_placeholders_must_be_plain_columns() -> None:
    raw = minimal(source={"prompt_column": None, "template": "Hi {user.name}"})
    assert error_for(raw).key == "source.template"


def test_extra_may_not_override_pipeline_fields() -> None:
    assert error_for(minimal(request={"extra": {"messages": []}})).key == "request.extra.messages"


def test_ranges_are_checked() -> None:
    assert error_for(minimal(limits={"max_attempts": 0})).key == "limits.max_attempts"
    assert error_for(minimal(request={"temperature": 3})).key == "request.temperature"


def test_override_parses_yaml_scalars() -> None:
    raw = minimal()
    apply_override(raw, "limits.concurrency=64")
    apply_override(raw, "endpoint.token_env=null")
    apply_override(raw, "request.extra.top_p=0.9")
    config = config_from_dict(raw, env={})
    assert config.limits.concurrency == 64
    assert config.endpoint.token_env is None
    assert config.request.extra == {"top_p": 0.9}


def test_override_needs_section_and_key() -> None:
    with pytest.raises(ConfigError) as caught:
        apply_override({}, "concurrency=3")
    assert caught.value.key == "--set"


def test_load_config_reports_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "missing.yaml")
    assert caught.value.key == "--config"


def test_saved_config_has_no_token() -> None:
    config = config_from_dict(minimal(), env={})
    assert "token_env" in str(config.to_dict())


def test_parquet_cannot_replace_error_rows_so_merge_keeps_them() -> None:
    parquet = {"path": "/tmp/x", "format": "parquet"}
    assert config_from_dict(minimal(sink=parquet), env={}).sink.retries_errors is False
    err = error_for(minimal(sink={**parquet, "retry_errors": True}))
    assert err.key == "sink.retry_errors" and "sink.format=delta" in str(err)
    assert error_for(minimal(sink={"path": "/tmp/x", "chunk_rows": 0})).key == "sink.chunk_rows"


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("limits", "timeout_s", float("nan")),
        ("limits", "requests_per_minute", float("inf")),
        ("pricing", "input_per_million", float("nan")),
        ("request", "temperature", float("nan")),
    ],
)
def test_numbers_must_be_finite(section: str, key: str, value: float) -> None:
    err = error_for(minimal(**{section: {key: value}}))
    assert err.key == f"{section}.{key}" and "finite" in str(err)


def test_yaml_nan_in_an_override_is_refused() -> None:
    raw = minimal()
    apply_override(raw, "limits.timeout_s=.nan")
    assert error_for(raw).key == "limits.timeout_s"


@pytest.mark.parametrize("url", ["http://", "https://:8080", "http:///serving", "http://h:port"])
def test_a_host_needs_a_name(url: str) -> None:
    assert error_for(minimal(endpoint={"host": url})).key == "endpoint.host"
    assert error_for(minimal(endpoint={"base_url": url})).key == "endpoint.base_url"


@pytest.mark.parametrize(
    ("source", "sink", "key"),
    [
        ({"path": "data/in"}, {"path": "data/in"}, "sink.path"),
        ({"path": "data/in"}, {"path": "./data/in/"}, "sink.path"),
        ({"path": "/abs/in"}, {"path": "file:/abs/in"}, "sink.path"),
        ({"path": "data/in"}, {"path": "data/in/answers"}, "sink.path"),
        ({"path": "data/in/prompts"}, {"path": "data/in"}, "sink.path"),
        ({"path": "s3://b/in"}, {"path": "s3://b/in/"}, "sink.path"),
        ({"path": "dbfs:/mnt/in"}, {"path": "dbfs:/mnt/in/out"}, "sink.path"),
        ({"table": "main.s.prompts"}, {"table": "Main.S.`prompts`"}, "sink.table"),
    ],
)
def test_the_sink_may_not_be_the_source(source: dict, sink: dict, key: str) -> None:
    for mode in ("merge", "overwrite", "append", "error"):
        for fmt in ("delta", "parquet"):
            raw = minimal(sink={**sink, "mode": mode, "format": fmt})
            raw["source"] = {**source, "prompt_column": "prompt"}
            assert error_for(raw).key == key


def test_a_sink_next_to_the_source_is_fine() -> None:
    raw = minimal(sink={"path": "data/in_answers"})
    raw["source"] = {"path": "data/in", "prompt_column": "prompt"}
    assert config_from_dict(raw, env={}).sink.path == str(Path("data/in_answers").absolute())


@pytest.mark.parametrize("uri", ["s3://bucket/answers", "dbfs:/mnt/answers", "file:/tmp/answers"])
def test_relative_paths_are_made_absolute_and_uris_kept(uri: str) -> None:
    config = config_from_dict(minimal(sink={"path": uri}), env={})
    assert config.source.path == str(Path("in").absolute())
    assert config.sink.path == uri


def test_on_change_and_lease_settings() -> None:
    config = config_from_dict(minimal(), env={})
    assert (config.sink.on_change, config.sink.lease_ttl_s) == ("resend", 600.0)
    assert error_for(minimal(sink={"on_change": "ignore"})).key == "sink.on_change"
    assert error_for(minimal(sink={"lease_ttl_s": 5})).key == "sink.lease_ttl_s"



def test_in_flight_answers_live_next_to_a_path_sink_unless_told() -> None:
    config = config_from_dict(minimal(), env={})
    assert config.sink.inflight_folder == str(Path("out").absolute()) + "_inflight"
    assert config.sink.inflight_flush_s == 1.0
    told = config_from_dict(minimal(sink={"inflight_path": "keep/here"}), env={})
    assert told.sink.inflight_folder == str(Path("keep/here").absolute())
    table = minimal(sink={"table": "main.llm.answers", "path": None})
    assert config_from_dict(table, env={}).sink.inflight_folder is None
    off = config_from_dict(minimal(sink={"inflight_path": "off"}), env={})
    assert off.sink.inflight_folder is None
    assert error_for(minimal(sink={"inflight_path": "out/inflight"})).key == "sink.inflight_path"
    assert error_for(minimal(sink={"inflight_flush_s": 0})).key == "sink.inflight_flush_s"
