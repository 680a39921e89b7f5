"""Reading the job config: a YAML file, `--set` overrides and the environment → a `JobConfig`.

Kept apart from the section dataclasses (`pipeline.core.config`) because loading reaches outside
the process: the file system, the environment, and the Databricks SDK, which may know the
workspace URL (`pipeline.core.secrets`). The dataclasses stay plain data that `secrets` and the
executors import without any of that, and the import graph has no cycle.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.coerce import Dialect, build
from pipeline.core.config import JobConfig
from pipeline.core.errors import ConfigError
from pipeline.core.io_config import absolute
from pipeline.core.secrets import sdk_host, sdk_may_have_credentials

# The job config's wording of a refused key or value, raised as ConfigError.
_YAML = Dialect()


def load_config(
    path: str | Path, overrides: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> JobConfig:
    """Read a YAML job config, apply `section.key=value` overrides, validate.

    Raises:
        ConfigError: naming the key that is unknown, missing or of the wrong type (`--config`
            when the file cannot be read or parsed, `--set` for a malformed override).
    """
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise ConfigError("--config", f"cannot read {path}: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise ConfigError("--config", f"{path} is not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError("--config", f"{path} must hold a mapping of sections")
    for item in overrides:
        apply_override(raw, item)
    return config_from_dict(raw, env=os.environ if env is None else env)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set `section.key=value` in `raw`; the value is read as a YAML scalar (`null`, `3`, `x`).

    Raises:
        ConfigError: (key `--set`) not `section.key=value`; or a part of the path is not a section.
    """
    dotted, sep, text = item.partition("=")
    parts = dotted.strip().split(".")
    if not sep or len(parts) < 2 or not all(parts):
        raise ConfigError("--set", f"expected section.key=value, got {item!r}")
    target = raw
    for part in parts[:-1]:
        child = target.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(".".join(parts[:-1]), "is not a section")
        target = child
    target[parts[-1]] = yaml.safe_load(text) if text.strip() else None


def config_from_dict(raw: Mapping[str, Any], env: Mapping[str, str]) -> JobConfig:
    """Validate a plain mapping into a JobConfig (see `load_config`).

    `endpoint.host` defaults to DATABRICKS_HOST, else to the Databricks SDK's workspace; relative
    source and sink paths are made absolute (see `io_config.absolute`).

    Raises:
        ConfigError: naming the key that is unknown, missing, of the wrong type or out of range.
    """
    endpoint = raw.get("endpoint")
    if isinstance(endpoint, dict) and endpoint.get("host") is None and not endpoint.get("base_url"):
        host = env.get("DATABRICKS_HOST") or _sdk_host(env)
        if host:
            raw = {**raw, "endpoint": {**endpoint, "host": host}}
    config = build(JobConfig, raw, _YAML)
    return dataclasses.replace(
        config,
        source=dataclasses.replace(config.source, path=absolute(config.source.path)),
        sink=dataclasses.replace(
            config.sink,
            path=absolute(config.sink.path),
            inflight_path=config.sink.inflight_path
            if config.sink.inflight_path == "off" else absolute(config.sink.inflight_path),
        ),
    )


def _sdk_host(env: Mapping[str, str]) -> str | None:
    # Inside a Databricks job, or with a ~/.databrickscfg profile, the SDK knows the workspace.
    return sdk_host(env.get("DATABRICKS_CONFIG_PROFILE")) if sdk_may_have_credentials(env) else None
