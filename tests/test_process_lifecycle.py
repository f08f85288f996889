"""A real `alignflow run`, failed, stopped and killed: what it prints, what it leaves running, how its runs end.

Each command runs in its own process with a marker in its environment; every process it starts inherits the
marker, so whatever still carries it after the command exits outlived it (the ephemeral Prefect server did).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import mlflow
import psutil
import pytest

from tasks.core import paths
from tasks.run.lifecycle import ENDED_BY_TAG, PROCESS_TAG
from tests.helpers.dvc import init_dvc_repo

pytestmark = pytest.mark.heavy(3)  # about 3 minutes (conftest.py)

ALIGNFLOW = str(Path(sys.executable).with_name("alignflow"))
MARKER = "ALIGNFLOW_TEST_PROCESS"


class Command:
    """`alignflow <args>` in `root`, with its own Prefect home and MLflow store there."""

    def __init__(self, root: Path, data_dir: Path, *args: str):
        self.root, self.marker = root, uuid.uuid4().hex
        env = {**os.environ, MARKER: self.marker, "PREFECT_HOME": str(root / ".prefect")}
        for name in ("PREFECT_API_URL", "ALIGNFLOW_DEBUG", "MLFLOW_TRACKING_URI"):
            env.pop(name, None)
        overrides = [f"--set=data.dir={data_dir}", f"--set=work_dir={root / 'work'}",
                     f"--set=tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}"]
        command = [ALIGNFLOW, *args, "--config", str(paths.DEMO_CONFIG), *overrides]
        # Output goes to a file: a pipe nobody reads can fill and block the command, and a process that outlived
        # it would hold a pipe open forever.
        self.log = root / f"{args[0]}-{self.marker[:8]}.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            pytest.fail(f"still running after {timeout} s:\n{self.log.read_text()[-3000:]}")
        return self.process.returncode, self.log.read_text()

    def survivors(self) -> list[psutil.Process]:
        """Processes still carrying this command's marker, a few seconds after it exited."""
        deadline = time.monotonic() + 10
        while True:
            found = []
            for process in psutil.process_iter():
                try:
                    if process.environ().get(MARKER) == self.marker:
                        found.append(process)
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
            if not found or time.monotonic() > deadline:
                return found
            time.sleep(0.5)


def _kill(processes: list[psutil.Process]) -> None:
    for process in processes:
        process.kill()


def _runs(root: Path) -> list[mlflow.entities.Run]:
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("alignflow")
    return client.search_runs([experiment.experiment_id], max_results=100)


def _flow_run_states(root: Path) -> list[str]:
    with sqlite3.connect(root / ".prefect" / "prefect.db") as db:
        return [row[0] for row in db.execute("SELECT state_type FROM flow_run ORDER BY created")]


def _wait_for(condition, timeout: float, what: str, command: Command):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if command.process.poll() is not None:
            pytest.fail(f"the command exited ({command.process.returncode}) before {what}:\n{command.finish()[1]}")
        if value := condition():
            return value
        time.sleep(0.5)
    pytest.fail(f"no {what} within {timeout} s")


def _complete_checkpoints(root: Path) -> list[Path]:
    return sorted((root / "work" / "sft").glob("*/**/checkpoint-*/COMPLETE"))


@pytest.fixture()
def workspace(tmp_path, demo_data_dir):
    init_dvc_repo(tmp_path)  # lineage reads the DVC status of the data
    return tmp_path


def test_a_data_error_prints_its_message_and_leaves_no_process(workspace, demo_data_dir):
    bad = workspace / "bad"
    bad.mkdir()
    for source in demo_data_dir.glob("*.jsonl"):
        (bad / source.name).write_bytes(source.read_bytes())
    with (bad / "preferences_train.jsonl").open("a") as handle:
        handle.write('{"prompt": "hi", "chosen": "a", \n')

    command = Command(workspace, bad, "run")
    status, output = command.finish()
    survivors = command.survivors()
    _kill(survivors)

    assert status == 1
    assert f"error: data validation failed (report: {workspace / 'work' / 'validate'}" in output
    assert f"{bad / 'preferences_train.jsonl'}: line 481 is not valid JSON" in output
    assert "Traceback" not in output and len(output.splitlines()) < 40, output
    assert survivors == [], [process.cmdline() for process in survivors]
    # The failure is still on record: the first stage (validate) and its parent FAILED, the flow run Failed.
    runs = {run.info.run_name: run for run in _runs(workspace)}
    assert {name: run.info.status for name, run in runs.items()} == {"demo-pipeline": "FAILED",
                                                                     "validate": "FAILED"}
    assert _flow_run_states(workspace) == ["FAILED"]


def test_sigterm_ends_the_runs_killed_and_after_kill_9_they_are_reaped(workspace, demo_data_dir):
    training = ("--set", "sft.epochs=400", "--set", "sft.save_steps=10")

    # SIGTERM in the middle of SFT, once a checkpoint is on disk.
    command = Command(workspace, demo_data_dir, "run", *training)
    _wait_for(lambda: _complete_checkpoints(workspace), 240, "SFT checkpoint", command)
    command.process.send_signal(signal.SIGTERM)
    status, output = command.finish(timeout=120)
    survivors = command.survivors()
    _kill(survivors)

    assert status == 128 + signal.SIGTERM, output
    assert "stopped by SIGTERM" in output and "Traceback" not in output, output
    assert survivors == [], [process.cmdline() for process in survivors]
    runs = {run.info.run_name: run for run in _runs(workspace)}
    assert runs["demo-pipeline"].info.status == "KILLED" and runs["sft"].info.status == "KILLED"
    assert "the run was stopped" in runs["sft"].data.tags[ENDED_BY_TAG]
    assert _flow_run_states(workspace) == ["CRASHED"]
    assert _complete_checkpoints(workspace)  # still there to resume from

    # The rerun resumes from that checkpoint; kill -9 leaves its runs RUNNING until they are reaped.
    rerun = Command(workspace, demo_data_dir, "run", *training)

    def resumed_sft():
        return [run for run in _runs(workspace) if run.info.run_name == "sft" and run.info.status == "RUNNING"
                and "alignflow.resumed_from_step" in run.data.tags]

    killed = _wait_for(resumed_sft, 240, "resumed SFT run", rerun)
    rerun.process.send_signal(signal.SIGKILL)
    rerun.finish()
    _kill(rerun.survivors())  # nothing outlives kill -9 on its own: its server is orphaned
    running = {run.info.run_id for run in _runs(workspace) if run.info.status == "RUNNING"}
    assert killed[0].info.run_id in running and len(running) == 2  # the stage and its parent
    assert all(run.data.tags[PROCESS_TAG].split()[1] == str(rerun.process.pid)
               for run in _runs(workspace) if run.info.run_id in running)

    reap = Command(workspace, demo_data_dir, "runs", "reap")
    status, output = reap.finish()
    assert status == 0 and "2 run(s) ended KILLED" in output, output
    after = {run.info.run_id: run for run in _runs(workspace)}
    for run_id in running:
        assert after[run_id].info.status == "KILLED"
        assert after[run_id].data.tags[ENDED_BY_TAG].startswith(f"reaped: process {rerun.process.pid} ")
    assert [run for run in after.values() if run.info.status == "RUNNING"] == []
