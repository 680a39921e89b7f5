"""The asset bundle in databricks.yml: its job loads with the databricks-bundles models in every
target, keeps the settings a nightly paid job needs, and runs a command line that works here."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import tomllib
import yaml
from databricks.bundles.jobs import DataSecurityMode, Job, PauseStatus

from pipeline.cli import build_parser
from pipeline.core.loader import load_config

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = yaml.safe_load((ROOT / "databricks.yml").read_text())
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


# Lists the CLI merges item by item, matched on this key (job clusters, tasks).
LIST_KEYS = ("job_cluster_key", "task_key")


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A target's override laid over the bundle's top level, key by key (as the CLI merges)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        elif isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = _merged_list(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _merged_list(base: list[Any], override: list[Any]) -> list[Any]:
    def key_of(item: Any) -> Any:
        return next((item.get(k) for k in LIST_KEYS if isinstance(item, dict) and k in item),
                    None)  # fmt: skip

    out = copy.deepcopy(base)
    for item in override:
        match = next((i for i, old in enumerate(out) if key_of(old) is not None
                      and key_of(old) == key_of(item)), None)  # fmt: skip
        if match is None:
            out.append(copy.deepcopy(item))
        else:
            out[match] = merged(out[match], item)
    return out


def target_job(target: str) -> Job:
    settings = merged(BUNDLE, BUNDLE["targets"][target])
    return Job.from_dict(settings["resources"]["jobs"]["batch_chat"])


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_job_loads_in_every_target_and_keeps_one_run_at_a_time(target: str) -> None:
    job = target_job(target)
    assert job.max_concurrent_runs == 1
    assert job.email_notifications is not None and job.email_notifications.on_failure
    clusters = {cluster.job_cluster_key for cluster in job.job_clusters}
    assert clusters and all(task.job_cluster_key in clusters for task in job.tasks)
    assert {p.name for p in job.parameters} == {"config", "endpoint"}


def test_schedule_is_paused_in_dev_and_runs_in_prod() -> None:
    dev, prod = target_job("dev"), target_job("prod")
    assert dev.schedule is not None and dev.schedule.pause_status == PauseStatus.PAUSED
    assert prod.schedule is not None and prod.schedule.pause_status == PauseStatus.UNPAUSED
    assert dev.schedule.quartz_cron_expression.split()[0] == "0"  # a cron line, not an interval
    assert BUNDLE["targets"]["dev"]["mode"] == "development"
    assert BUNDLE["targets"]["prod"]["mode"] == "production"


def test_wheel_task_runs_our_entry_point_with_a_valid_config() -> None:
    """The task's command line, with the job parameters' defaults, parses and validates here."""
    (task,) = target_job("prod").tasks
    wheel = task.python_wheel_task
    assert wheel is not None
    assert wheel.package_name == PROJECT["name"]
    assert wheel.entry_point in PROJECT["scripts"]
    assert [lib.whl for lib in task.libraries] == ["./dist/*.whl"]
    assert BUNDLE["artifacts"]["batch_chat_wheel"]["type"] == "whl"
    variables = {name: spec["default"] for name, spec in BUNDLE["variables"].items()}
    values = {"config": str(ROOT / variables["config"]), "endpoint": variables["endpoint"]}
    argv = []
    for arg in wheel.parameters:
        for name, value in values.items():
            arg = arg.replace(f"{{{{job.parameters.{name}}}}}", value)
        argv.append(arg)
    args = build_parser().parse_args(argv)
    config = load_config(
        args.config, args.overrides, env={"DATABRICKS_HOST": "https://x.cloud.databricks.com"}
    )
    assert config.endpoint.name == variables["endpoint"]
    assert config.sink.mode == "merge"  # a rerun after a failure resumes, never pays twice


def test_prod_is_deployable_in_production_mode() -> None:
    """Production mode needs a shared root path; the job runs as a service principal given
    as a variable, on a dedicated (single user) cluster whose one user is that principal, with
    the token taken from a secret scope."""
    prod = merged(BUNDLE, BUNDLE["targets"]["prod"])
    assert prod["workspace"]["root_path"].startswith("/Workspace/Shared/")
    assert prod["run_as"] == {"service_principal_name": "${var.service_principal}"}
    assert "service_principal" in BUNDLE["variables"]
    job = target_job("prod")
    (cluster,) = job.job_clusters
    spec = cluster.new_cluster
    assert spec.data_security_mode == DataSecurityMode.DATA_SECURITY_MODE_DEDICATED
    assert str(spec.single_user_name) == "${var.service_principal}"
    assert str(spec.node_type_id) == "${var.node_type}" and spec.spark_version
    token = str(spec.spark_env_vars["DATABRICKS_TOKEN"])
    assert token.startswith("{{secrets/") and "${var.token_secret_scope}" in token
    dev_cluster = target_job("dev").job_clusters[0].new_cluster
    assert str(dev_cluster.single_user_name) == "${workspace.current_user.userName}"
