"""Wall time of one pipeline config run in-process vs. with its training stages dispatched to a worker.

Starts the loopback services of the integration tests (PostgreSQL, `mlflow server` with basic auth,
`prefect server` with an auth string, one process worker), then runs the same config on the same data twice
against them, each in its own folder and with Prefect's cache refreshed, so both compute every stage:

    .venv/bin/python benchmarks/dispatch_benchmark.py [--stages sft reward dpo]

Prints the service start times and both wall times.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from services import BIN, PIPELINE_USER, REPO, copy_of_working_tree, loopback_services

from tasks.data.demo import write_demo_data


def _home(root: Path, name: str) -> Path:
    home = root / name
    write_demo_data(home / "data")
    for args in (("init", "--no-scm", "-q"), ("add", "-q", "data")):
        subprocess.run([str(BIN / "dvc"), *args], cwd=home, check=True, capture_output=True)
    (home / "bench.yaml").write_text(yaml.safe_dump({
        "extends": str(REPO / "configs" / "pipelines" / "demo.yaml"),
        "name": "bench",
        "optimizers": ["dpo"],
        "data": {"dir": str(home / "data")},
        "dispatch": {"poll_interval_s": 1},
    }))
    return home


def _timed_run(services, home: Path, *args: str) -> float:
    env = services.client_env(PREFECT_TASKS_REFRESH_CACHE="true")
    started = time.perf_counter()
    done = subprocess.run([str(BIN / "alignflow"), "run", "--config", "bench.yaml", *args], cwd=home, env=env,
                          capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(done.stdout[-5000:] + done.stderr[-5000:])
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="+", default=["sft", "reward", "dpo"], help="Stages to dispatch.")
    stages = parser.parse_args().stages
    with tempfile.TemporaryDirectory(prefix="alignflow-bench-") as scratch:
        root = Path(scratch)
        with loopback_services(root) as (services, startup):
            for pool in ("cpu", "gpu"):
                services.create_work_pool(pool)
            deployed = services.prefect_cli("deploy", "--all", "--prefect-file", "infra/prefect.yaml")
            if deployed.returncode != 0:
                raise SystemExit(deployed.stdout + deployed.stderr)
            startup["worker"] = services.start_worker("gpu", copy_of_working_tree(root / "worker-home"))
            print("service start times: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in startup.items()))
            print(f"MLflow user {PIPELINE_USER}; dispatching {', '.join(stages)}")
            in_process = _timed_run(services, _home(root, "in-process"))
            dispatch = [arg for stage in stages for arg in ("--set", f"dispatch.pools.{stage}=gpu")]
            dispatched = _timed_run(services, _home(root, "dispatched"), *dispatch)
    print(f"pipeline wall time: in-process {in_process:.1f} s, dispatched {dispatched:.1f} s "
          f"(+{dispatched - in_process:.1f} s, {(dispatched - in_process) / len(stages):.1f} s per dispatched stage)")


if __name__ == "__main__":
    main()
