"""The fault-injection suite, small: real pipelines killed with -9 at a training step and inside a promotion,
then rerun; nothing may be lost. The full suite is `benchmarks/fault_suite.py`."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from benchmarks.fault_suite import SMALL, run_suite, summary
from models.failpoints import FAILPOINTS

pytestmark = pytest.mark.heavy(4)  # about 4 minutes (conftest.py)



def test_a_failpoint_kills_at_its_nth_pass_and_only_then(monkeypatch):
    script = ("from models.failpoints import failpoint\n"
              "for i in range(1, 4):\n"
              "    failpoint('other.point'); failpoint('sft.step'); print(i, flush=True)\n")

    def run(spec: str | None) -> subprocess.CompletedProcess:
        env = {"ALIGNFLOW_FAILPOINT": spec} if spec else {}
        return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False,
                              env={**env, "PATH": "/usr/bin:/bin"})

    assert run(None).stdout.split() == ["1", "2", "3"]
    killed = run("sft.step@2")
    assert killed.returncode == -signal.SIGKILL and killed.stdout.split() == ["1"]
    assert run("sft.step@9").stdout.split() == ["1", "2", "3"]
    assert "sft.step" in FAILPOINTS


def test_killed_runs_recover_and_lose_nothing(tmp_path, capsys):
    outcomes = run_suite(SMALL, tmp_path)
    line = summary(outcomes)
    print(line)
    assert line == f"fault suite: {len(SMALL)} faults injected, {len(SMALL)} runs recovered, 0 items lost", \
        "\n".join(item for outcome in outcomes for item in outcome.lost)
