from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.serving.__main__ import build_parser, settings_from_args, tls_context
from pipeline.serving.settings import ServingSettings, SettingsError
from tests.conftest import write_certificate


def test_defaults_serve_the_model_name() -> None:
    settings = ServingSettings()

    assert (settings.model, settings.served_names) == ("echo", ("echo",))
    assert (settings.fail_first, settings.fail_status, settings.retry_after_s) == (0, 503, None)
    assert (settings.max_tokens_limit, settings.reasoning_item) == (4096, False)


def test_explicit_endpoint_names_replace_the_model_name() -> None:
    settings = ServingSettings(endpoint_names=("a", "b"))

    assert settings.served_names == ("a", "b")


def test_from_dict_converts_json_types() -> None:
    settings = ServingSettings.from_dict(
        {"endpoint_names": ["a"], "retry_after_s": 1, "fail_first": 2, "token_env": "T"}
    )

    assert settings.endpoint_names == ("a",)
    assert settings.retry_after_s == 1.0 and isinstance(settings.retry_after_s, float)
    assert (settings.fail_first, settings.token_env) == (2, "T")


def test_to_dict_round_trips_through_json() -> None:
    settings = ServingSettings(endpoint_names=("a",), retry_after_s=0.5, fail_first=1)

    assert ServingSettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"nope": 1}, "nope"),
        ({"fail_first": "2"}, "fail_first"),
        ({"fail_first": True}, "fail_first"),
        ({"fail_first": 1.5}, "fail_first"),
        ({"reasoning_item": 1}, "reasoning_item"),
        ({"retry_after_s": "0.1"}, "retry_after_s"),
        ({"retry_after_s": float("nan")}, "retry_after_s"),
        ({"endpoint_names": "echo"}, "endpoint_names"),
        ({"endpoint_names": ["ok", 3]}, "endpoint_names[1]"),
        ({"endpoint_names": [""]}, "endpoint_names"),
        ({"fail_status": 200}, "fail_status"),
        ({"fail_first": -1}, "fail_first"),
        ({"max_tokens_limit": 0}, "max_tokens_limit"),
        ({"retry_after_s": -1}, "retry_after_s"),
        ({"port": 70000}, "port"),
        ({"model": ""}, "model"),
        ({"latency_jitter_s": -0.1}, "latency_jitter_s"),
        ({"seed": 1.5}, "seed"),
        ({"requests_per_minute": 0}, "requests_per_minute"),
        ({"tokens_per_minute": "100"}, "tokens_per_minute"),
        ({"window_s": 0}, "window_s"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"overload": "drop"}, "overload"),
        ({"overload": 1}, "overload"),
        ({"error_rate": 1.5}, "error_rate"),
        ({"reset_rate": -0.1}, "reset_rate"),
        ({"empty_choices_rate": float("inf")}, "empty_choices_rate"),
        ({"error_statuses": []}, "error_statuses"),
        ({"error_statuses": [503, 200]}, "error_statuses"),
        ({"error_statuses": ["500"]}, "error_statuses[0]"),
        ({"timeout_hold_s": -1}, "timeout_hold_s"),
        # Rates together over 1: the key named is the first one that crosses it.
        ({"error_rate": 0.5, "timeout_rate": 0.25, "malformed_rate": 0.3}, "malformed_rate"),
    ],
)
def test_refused_values_name_their_key(data: dict[str, Any], key: str) -> None:
    with pytest.raises(SettingsError) as caught:
        ServingSettings.from_dict(data)

    assert caught.value.key == key
    assert str(caught.value).startswith(f"{key}: ")


def test_replace_is_checked_too() -> None:
    with pytest.raises(SettingsError, match="fail_status"):
        dataclasses.replace(ServingSettings(), fail_status=302)


def test_with_changes_applies_runtime_fields_and_leaves_the_original() -> None:
    original = ServingSettings()

    changed = original.with_changes({"fail_first": 2, "fail_status": 429, "retry_after_s": 0.01})

    assert (changed.fail_first, changed.fail_status, changed.retry_after_s) == (2, 429, 0.01)
    assert original == ServingSettings()


@pytest.mark.parametrize("key", ["model", "host", "port", "token_env", "access_log"])
def test_with_changes_refuses_startup_only_fields(key: str) -> None:
    value = ServingSettings().to_dict()[key]

    with pytest.raises(SettingsError, match="only be set when the server starts") as caught:
        ServingSettings().with_changes({key: value})
    assert caught.value.key == key


def test_new_knobs_default_to_a_healthy_unlimited_endpoint() -> None:
    settings = ServingSettings()

    assert (settings.latency_jitter_s, settings.seed, settings.window_s) == (0.0, 0, 60.0)
    assert (settings.requests_per_minute, settings.tokens_per_minute) == (None, None)
    assert (settings.max_concurrency, settings.overload) == (None, "queue")
    assert all(rate == 0 for _, rate in settings.fault_rates)
    assert (settings.error_statuses, settings.timeout_hold_s) == ((500, 502, 503), 300.0)


def test_fault_rates_are_listed_in_decision_order() -> None:
    settings = ServingSettings(error_rate=0.1, timeout_rate=0.2, reset_rate=0.05,
                               malformed_rate=0.15, truncated_rate=0.25, empty_choices_rate=0.25)

    assert settings.fault_rates == (("error", 0.1), ("timeout", 0.2), ("reset", 0.05),
                                    ("malformed", 0.15), ("truncated", 0.25),
                                    ("empty_choices", 0.25))


def test_rates_may_add_up_to_exactly_one_despite_float_rounding() -> None:
    rates = {f"{kind}_rate": 1 / 6 for kind, _ in ServingSettings().fault_rates}

    assert sum(rate for _, rate in ServingSettings.from_dict(rates).fault_rates) == (
        pytest.approx(1.0))


def test_every_new_knob_changes_at_runtime() -> None:
    changes = {
        "latency_jitter_s": 0.5, "seed": 9, "requests_per_minute": 10, "tokens_per_minute": 500,
        "window_s": 2, "max_concurrency": 4, "overload": "reject", "error_rate": 0.1,
        "error_statuses": [429], "timeout_rate": 0.1, "timeout_hold_s": 1, "reset_rate": 0.1,
        "malformed_rate": 0.1, "truncated_rate": 0.1, "empty_choices_rate": 0.1,
    }

    changed = ServingSettings().with_changes(changes)

    assert {key: changed.to_dict()[key] for key in changes} == changes
    assert ServingSettings().with_changes({"max_concurrency": None}).max_concurrency is None


# --- the CLI: one flag per setting ---


def test_every_setting_has_a_flag_named_after_it() -> None:
    options = {opt for action in build_parser()._actions for opt in action.option_strings}
    # A list's flag is given once per item, so it is named in the singular.
    lists = {"endpoint_names", "required_headers"}
    names = {f.name for f in dataclasses.fields(ServingSettings)} - lists

    assert {f"--{name.replace('_', '-')}" for name in names} <= options
    assert {"--endpoint-name", "--required-header"} <= options


def test_no_flags_give_the_default_settings() -> None:
    assert settings_from_args(build_parser().parse_args([])) == ServingSettings()


def test_new_flags_reach_the_settings() -> None:
    args = build_parser().parse_args([
        "--latency-jitter-s", "0.2", "--seed", "4", "--requests-per-minute", "60",
        "--tokens-per-minute", "9000", "--window-s", "1.5", "--max-concurrency", "3",
        "--overload", "reject", "--error-rate", "0.1", "--error-statuses", "500", "503",
        "--timeout-rate", "0.05", "--timeout-hold-s", "2", "--reset-rate", "0.05",
        "--malformed-rate", "0.05", "--truncated-rate", "0.05", "--empty-choices-rate", "0.05",
    ])

    settings = settings_from_args(args)

    assert settings == ServingSettings(
        latency_jitter_s=0.2, seed=4, requests_per_minute=60, tokens_per_minute=9000,
        window_s=1.5, max_concurrency=3, overload="reject", error_rate=0.1,
        error_statuses=(500, 503), timeout_rate=0.05, timeout_hold_s=2.0, reset_rate=0.05,
        malformed_rate=0.05, truncated_rate=0.05, empty_choices_rate=0.05,
    )


def test_refused_flag_values_name_the_setting() -> None:
    args = build_parser().parse_args(["--error-rate", "0.7", "--reset-rate", "0.7"])

    with pytest.raises(SettingsError) as caught:
        settings_from_args(args)

    assert caught.value.key == "reset_rate"


def test_a_choice_setting_lists_the_accepted_values() -> None:
    with pytest.raises(SettingsError) as caught:
        ServingSettings.from_dict({"overload": 1})

    assert str(caught.value) == "overload: expected one of 'queue', 'reject', got integer"


def test_tls_files_are_checked_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="tls_key: tls_cert and tls_key go together"):
        ServingSettings(tls_cert="cert.pem")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    with pytest.raises(SettingsError, match=f"tls_cert: cannot read {cert}"):
        tls_context(ServingSettings(tls_cert=str(cert), tls_key=str(key)))
    assert write_certificate(tmp_path) == (cert, key)
    with pytest.raises(SettingsError, match=f"tls_cert: {key} and {cert} are not a PEM"):
        tls_context(ServingSettings(tls_cert=str(key), tls_key=str(cert)))  # swapped
    assert tls_context(ServingSettings(tls_cert=str(cert), tls_key=str(key))) is not None
