"""What a command's process does to start and exit sooner, checked against what it must not change: exit
handlers all run, and a flow uses the one local Prefect server the command started early."""

from __future__ import annotations

import os
import subprocess
import sys

from tasks.core import paths

EXIT_HANDLERS = """
import atexit, gc, pathlib, sys

atexit.register(lambda: pathlib.Path(sys.argv[1]).write_text(f"last handler: frozen={gc.get_freeze_count() > 0}"))
from flows.cli.common import skip_collection_at_exit

skip_collection_at_exit()
skip_collection_at_exit()
atexit.register(lambda: print(f"first handler: frozen={gc.get_freeze_count() > 0}", flush=True))
"""

EARLY_SERVER = """
import psutil
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.server.api.server import SubprocessASGIServer

from flows.cli.common import local_prefect_server_starting

with local_prefect_server_starting():
    pass
early = SubprocessASGIServer()
print("early:", early.running and early.api_url)


@flow
def api_of_this_flow() -> str:
    with get_client(sync_client=True) as client:
        return str(client.api_url).rstrip("/")


print("flow:", api_of_this_flow())
servers = [p for p in psutil.Process().children(recursive=True) if "uvicorn" in " ".join(p.cmdline())]
print("servers:", len(servers))
"""


def _python(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300,
                          cwd=paths.PROJECT_ROOT, env={**environment, **env}, check=False)


def test_exit_handlers_all_run_and_the_heap_is_frozen_after_the_others(tmp_path):
    done = _python(EXIT_HANDLERS, str(tmp_path / "last.txt"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "first handler: frozen=False"  # registered later, so it ran earlier
    assert (tmp_path / "last.txt").read_text() == "last handler: frozen=True"


def test_the_flow_runs_on_the_local_server_the_command_started_early(tmp_path):
    done = _python(EARLY_SERVER, PREFECT_HOME=str(tmp_path / ".prefect"))
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    assert lines["early"].startswith("http://127.0.0.1:"), done.stdout
    assert lines["flow"] == lines["early"]
    assert lines["servers"] == "1"  # Prefect did not start a second one


def test_no_local_server_starts_when_an_api_url_is_set(tmp_path):
    script = ("import psutil\nfrom flows.cli.common import local_prefect_server_starting\n"
              "with local_prefect_server_starting():\n    pass\nprint(len(psutil.Process().children(recursive=True)))")
    done = _python(script, PREFECT_API_URL="http://127.0.0.1:9/api", PREFECT_HOME=str(tmp_path / ".prefect"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"


def test_a_process_that_runs_stages_imports_gx_only_to_validate():
    # Every stage runner is importable without GX (seconds per process); validating imports it (test_expectations).
    done = _python("import sys\nimport tasks.orchestration.stage_table\nprint('great_expectations' in sys.modules)")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "False"
