"""`alignflow promote / rollback / status` against a temporary SQLite registry, through typer's CliRunner."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from flows.cli import app
from tasks.core import paths
from tasks.core.config import load_config

NAME = "alignflow-policy"
METRICS = {"eval/harmful_refusal_rate": 0.95, "eval/perplexity": 10.25}

# The CLI callback sets environment defaults (PREFECT_HOME, …); keep them out of the other tests.
pytestmark = pytest.mark.usefixtures("restored_environment")


@pytest.fixture
def store(tracked, tmp_path, template_store) -> tuple[Path, str]:
    """(config file pointing at a fresh copy of the template store, the model URI to register)."""
    shutil.copy(template_store[0], tmp_path / "mlflow.db")
    dump = load_config(paths.DEMO_CONFIG).model_dump(mode="json")
    dump["tracking"]["tracking_uri"] = f"sqlite:///{tmp_path}/mlflow.db"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(dump))
    mlflow.set_tracking_uri(dump["tracking"]["tracking_uri"])
    return config, template_store[1]


def _register(model_uri: str, n: int) -> list[str]:
    tags = {f"alignflow.{k}": f"{v:.6g}" for k, v in METRICS.items()}
    tags.update({"alignflow.git_sha": "0123456789abcdef" * 2 + "01234567", "alignflow.source_stage": "sft",
                 "alignflow.parent.base": "runs:/abc/model"})
    return [str(mlflow.register_model(model_uri, NAME, tags=tags).version) for _ in range(n)]


def _aliases() -> dict[str, str]:
    return {alias: str(v) for alias, v in MlflowClient().get_registered_model(NAME).aliases.items()}


def _cli(*args: str):
    return CliRunner().invoke(app, list(args))


def test_promote_rollback_and_status(store):
    config, model_uri = store
    v1, v2, v3 = _register(model_uri, 3)
    MlflowClient().set_registered_model_alias(NAME, "candidate", v3)

    first = _cli("promote", "--version", v1, "--config", str(config))
    assert first.exit_code == 0, first.output
    assert f"promoted v{v1} to champion (manual, reason: manual)" in first.stdout
    assert f"champion: - -> v{v1}" in first.stdout and "previous-champion: - -> -" in first.stdout

    second = _cli("promote", "--version", v2, "--config", str(config))
    assert second.exit_code == 0, second.output
    assert f"champion: v{v1} -> v{v2}" in second.stdout and f"previous-champion: - -> v{v1}" in second.stdout
    assert _aliases() == {"champion": v2, "previous-champion": v1, "candidate": v3}
    tags = MlflowClient().get_model_version(NAME, v2).tags
    assert tags["alignflow.promotion"] == "manual" and tags["alignflow.promotion_reason"] == "manual"

    again = _cli("promote", "--version", v2, "--config", str(config))
    assert again.exit_code == 0 and "already the champion; nothing changed" in again.stdout

    status = _cli("status", "--config", str(config))
    assert status.exit_code == 0, status.output
    out = status.stdout
    assert f"champion: v{v2}   previous-champion: v{v1}   candidate: v{v3}" in out
    assert "metrics: eval/harmful_refusal_rate=0.95  eval/perplexity=10.25" in out
    # Lineage: source stage/run, git sha, parent model.
    source_run = MlflowClient().get_model_version(NAME, v1).run_id
    assert f"sft/{source_run[:8]}  01234567" in out and "parents: base=runs:/abc/model" in out
    lines = out.splitlines()
    assert [line.split()[0] for line in lines if line[:2] in ("v1", "v2", "v3")] == [f"v{v3}", f"v{v2}", f"v{v1}"]

    back = _cli("rollback", "--config", str(config))
    assert back.exit_code == 0, back.output
    assert f"champion is now v{v1}" in back.stdout and f"v{v2} demoted and tagged alignflow.rolled_back=true" \
        in back.stdout
    assert "previous-champion: -" in back.stdout
    assert _aliases() == {"champion": v1, "candidate": v3}
    assert MlflowClient().get_model_version(NAME, v2).tags["alignflow.rolled_back"] == "true"

    rows = json.loads(_cli("status", "--json", "--config", str(config)).stdout)
    assert [(row["version"], row["aliases"], row["rolled_back"]) for row in rows] == [
        (v3, ["candidate"], False), (v2, [], True), (v1, ["champion"], False)]
    assert "(rolled back)" in _cli("status", "--config", str(config)).stdout


def test_errors_exit_non_zero_with_a_message(store):
    config, model_uri = store
    (v1,) = _register(model_uri, 1)

    missing = _cli("promote", "--version", "99", "--config", str(config))
    assert missing.exit_code == 1
    assert f"error: {NAME} has no version 99" in missing.output and "Traceback" not in missing.output
    assert _aliases() == {}

    nothing = _cli("rollback", "--config", str(config))
    assert nothing.exit_code == 1 and "nothing to roll back" in nothing.output

    assert _cli("promote", "--version", v1, "--config", str(config)).exit_code == 0
    still = _cli("rollback", "--config", str(config))
    assert still.exit_code == 1 and "nothing to roll back" in still.output
    assert "current champion: version 1" in still.output
    assert _aliases() == {"champion": v1}

    bad_key = _cli("status", "--config", str(config), "--set", "registry.nope=1")
    assert bad_key.exit_code == 1 and "registry.nope" in bad_key.output and "Traceback" not in bad_key.output


def test_commands_on_a_store_without_the_model(store, tmp_path):
    config, _ = store
    override = f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db"
    empty = _cli("status", "--set", override)  # the demo config with --set, no config file of our own
    assert empty.exit_code == 0 and f"{NAME}: no versions registered" in empty.stdout
    missing = _cli("rollback", "--config", str(config))
    assert missing.exit_code == 1 and f"no registered model named '{NAME}'" in missing.output
