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
