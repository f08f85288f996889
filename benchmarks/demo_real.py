"""`make demo-real`, measured: wall time per command, peak memory of the whole process tree (the CLI, its Prefect
server, every child), and the bytes the run added to `mlartifacts/` and `.alignflow/`.

    .venv/bin/python benchmarks/demo_real.py [--json reports/demo_real.json]

Run it from the project root after `make install`. Start from `make clean` (and `rm -rf data-smollm2*`) to
measure a first run; an unchanged rerun is served from the caches and says so.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

COMMANDS = (".venv/bin/alignflow data world --config configs/pipelines/smollm2.yaml",
            (".venv/bin/alignflow run --config configs/pipelines/smollm2.yaml --set 'optimizers=[dpo]' "
             "--out reports/smollm2-pipeline.json"))
MEASURED_DIRS = (Path("mlartifacts"), Path(".alignflow"))
GIB = 1024 ** 3


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) if folder.exists() else 0


def tree_rss(process: psutil.Process) -> int:
    """Resident memory of a process and all its descendants, in bytes."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.Error:  # a child that just exited
            pass
    return total


def run_measured(command: str, log_path: Path) -> dict:
    peak = 0
    started = time.perf_counter()
    with log_path.open("w") as log:
        child = subprocess.Popen(shlex.split(command), stdout=log, stderr=subprocess.STDOUT)
        watched = psutil.Process(child.pid)
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                try:
                    peak = max(peak, tree_rss(watched))
                except psutil.Error:
                    return
                done.wait(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = child.wait()
        done.set()
        sampler.join()
    return {"command": command, "exit_code": code, "seconds": time.perf_counter() - started,
            "peak_rss_gib": peak / GIB, "log": str(log_path)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="Also write the measurements here.")
    parser.add_argument("--logs", type=Path, default=Path("reports/demo_real_logs"), help="Folder for command logs.")
    args = parser.parse_args()
    args.logs.mkdir(parents=True, exist_ok=True)
    before = {str(folder): folder_bytes(folder) for folder in MEASURED_DIRS}
    runs = []
    for i, command in enumerate(COMMANDS):
        runs.append(run_measured(command, args.logs / f"{i}.log"))
        print(f"{runs[-1]['seconds']:8.1f} s  peak {runs[-1]['peak_rss_gib']:.2f} GiB  exit {runs[-1]['exit_code']}  "
              f"{command}", flush=True)
        if runs[-1]["exit_code"] != 0:
            print(f"failed; see {runs[-1]['log']}", file=sys.stderr)
            break
    written = {folder: folder_bytes(Path(folder)) - size for folder, size in before.items()}
    result = {
        "runs": runs,
        "total_seconds": sum(run["seconds"] for run in runs),
        "peak_rss_gib": max(run["peak_rss_gib"] for run in runs),
        "written_gib": {folder: size / GIB for folder, size in written.items()},
        "written_total_gib": sum(written.values()) / GIB,
    }
    print(f"\n| measure | value |\n|---|---|\n| wall time | {result['total_seconds'] / 60:.1f} min |\n"
          f"| peak memory (process tree) | {result['peak_rss_gib']:.2f} GiB |")
    for folder, size in result["written_gib"].items():
        print(f"| written to {folder}/ | {size:.2f} GiB |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(run["exit_code"] == 0 for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
