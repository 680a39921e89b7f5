from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from pipeline.serving.settings import ServingSettings, SettingsError


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
