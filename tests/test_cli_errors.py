"""`alignflow` prints a failure for people: one message and exit 1; the traceback only with --debug."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ALIGNFLOW = str(Path(sys.executable).with_name("alignflow"))


def _alignflow(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "ALIGNFLOW_DEBUG"}
    return subprocess.run([ALIGNFLOW, *args], capture_output=True, text=True, check=False,
                           env={**environment, **env})


@pytest.fixture
def blocked(tmp_path) -> Path:
    """An output folder that cannot be made: a file holds its name."""
    path = tmp_path / "data"
    path.write_text("in the way\n")
    return path


def test_an_unexpected_error_is_one_message_without_a_traceback(blocked):
    done = _alignflow("data", "demo", "--out", str(blocked))
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: FileExistsError: [Errno 17] File exists: '{blocked}'")
    assert "rerun with --debug or ALIGNFLOW_DEBUG=1" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 2


@pytest.mark.parametrize(("args", "env"), [(("--debug",), {}), ((), {"ALIGNFLOW_DEBUG": "1"})])
def test_debug_shows_the_traceback(blocked, args, env):
    done = _alignflow(*args, "data", "demo", "--out", str(blocked), **env)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr and "FileExistsError" in done.stderr


def test_compare_from_results_names_a_file_that_is_not_a_runs_results(tmp_path):
    not_json = tmp_path / "results.json"
    not_json.write_text("{not json")
    done = _alignflow("compare", "--from-results", str(not_json), "--set", f"tracking.tracking_uri=sqlite:///"
                      f"{tmp_path / 'mlflow.db'}", "--set", f"reports_dir={tmp_path / 'reports'}")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"error: {not_json}: not the stage results `alignflow run --out` writes" in done.stderr

    partial = tmp_path / "partial.json"
    partial.write_text('{"sft": {"stage": "sft", "run_id": "r", "cache_key": "k"}}')
    done = _alignflow("compare", "--from-results", str(partial), "--set", f"tracking.tracking_uri=sqlite:///"
                      f"{tmp_path / 'mlflow.db'}", "--set", f"reports_dir={tmp_path / 'reports'}")
    assert done.returncode == 1
    assert f"error: {partial}: no data, evaluate-sft, promote result" in done.stderr
    assert not (tmp_path / "reports").exists()  # nothing written


@pytest.mark.parametrize(("cai_settings", "expected"), [
    (["cai.config=missing-cai.yaml"], "missing-cai.yaml"),
    (["cai.overrides=[critique.roundz=2]"], "key 'critique.roundz': unknown key"),  # a bad key of the CAI config
])
def test_compare_checks_its_cai_config_before_anything_trains(tmp_path, cai_settings, expected):
    settings = [arg for setting in cai_settings for arg in ("--set", setting)]
    done = _alignflow("compare", *settings, "--set",
                      f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", "--set",
                      f"reports_dir={tmp_path / 'reports'}", "--set", f"work_dir={tmp_path / 'work'}")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: ") and expected in done.stderr, done.stderr
    assert not (tmp_path / "reports").exists() and not (tmp_path / "work").exists()  # no stage ran
