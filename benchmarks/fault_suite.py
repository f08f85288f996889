"""The fault-injection suite: kill -9 a real `alignflow run` at chosen places, rerun it, and count what was lost.

Each fault runs in a workspace of its own (demo data, SQLite MLflow store, Prefect home): the pipeline runs with
`ALIGNFLOW_FAILPOINT` set (see `models/failpoints.py`) and dies by SIGKILL there, exactly as under kill -9;
the same command then runs again and must finish. Afterwards nothing may be lost:

- no MLflow run is left RUNNING;
- the registry holds no duplicate version and none that is half registered;
- a promotion that was killed changed no alias;
- the final metrics match those of an uninterrupted run of the same config (`reference`) within tolerance.

    .venv/bin/python benchmarks/fault_suite.py            # every fault (about 15 minutes on 2 cores)
    .venv/bin/python benchmarks/fault_suite.py --small    # what `make test` runs (tests/test_fault_suite.py)

It prints one line per fault and the summary: faults injected, runs recovered, items lost (must be 0).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parent.parent
ALIGNFLOW = Path(sys.executable).with_name("alignflow")
MARKER = "ALIGNFLOW_FAULT_SUITE"
# The demo pipeline, small: every stage still runs and checkpoints several times, and the gates are open, so the
# best candidate is promoted and there is a promotion to interrupt.
SUITE_CONFIG = {
    "name": "faults",
    "optimizers": ["dpo", "ppo"],
    "sft": {"epochs": 1, "save_steps": 10},
    "reward": {"epochs": 1, "save_steps": 10},
    "dpo": {"epochs": 1, "max_steps": 20, "save_steps": 10},
    "ppo": {"steps": 4, "rollout_batch_size": 16, "mini_batch_size": 8, "save_steps": 2, "sample_table_steps": 4},
    "eval": {"max_new_tokens": 12},
    "gates": {"thresholds": [], "beat_baseline": [], "champion": []},
}
CHALLENGER = ["--set", "dpo.seed=1", "--set", "ppo.seed=1"]  # new candidates: one of them replaces the champion
RATE_TOLERANCE = 0.05  # absolute, for rates
RELATIVE_TOLERANCE = 0.05  # for every other eval metric


@dataclass(frozen=True)
class Fault:
    failpoint: str  # <name>[@<n>]
    needs_champion: bool = False  # killed in a second run, whose promotion replaces a champion

    @property
    def slug(self) -> str:
        return self.failpoint.replace("@", "-").replace(".", "_")


FULL = (Fault("sft.step@15"), Fault("reward.step@15"), Fault("dpo.step@15"), Fault("ppo.step@3"),
        Fault("checkpoint.write@3"), Fault("register.version@2"), Fault("promote.alias", needs_champion=True))
SMALL = (Fault("sft.step@15"), Fault("promote.alias", needs_champion=True))


@dataclass
class Outcome:
    fault: Fault
    killed: bool = False
    recovered: bool = False
    lost: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Workspace:
    """A folder with the demo data, the suite config, and the MLflow store and Prefect home of its runs."""

    def __init__(self, root: Path):
        from tasks.data.demo import write_demo_data

        self.root = root
        root.mkdir(parents=True)
        write_demo_data(root / "data")
        config = {**SUITE_CONFIG, "extends": str(REPO / "configs" / "pipelines" / "demo.yaml"),
                  "data": {"dir": str(root / "data")}, "work_dir": str(root / "work"),
                  "tracking": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"}}
        (root / "config.yaml").write_text(yaml.safe_dump(config))
        self.runs_made = 0

    def run(self, *args: str, failpoint: str | None = None, timeout: float = 900) -> tuple[int, dict]:
        """`alignflow run` here; returns its exit status and its stage results (empty unless it finished)."""
        self.runs_made += 1
        out = self.root / f"results-{self.runs_made}.json"
        marker = uuid.uuid4().hex
        env = {**os.environ, MARKER: marker, "PREFECT_HOME": str(self.root / ".prefect")}
        for name in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "ALIGNFLOW_FAILPOINT"):
            env.pop(name, None)
        if failpoint:
            env["ALIGNFLOW_FAILPOINT"] = failpoint
        with (self.root / f"run-{self.runs_made}.log").open("w") as log:
            done = subprocess.run([str(ALIGNFLOW), "run", "--config", "config.yaml", "--out", str(out), *args],
                                  cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout,
                                  check=False)
        _kill_processes_marked(marker)  # kill -9 gives the command no chance to stop its Prefect server
        return done.returncode, json.loads(out.read_text()) if out.is_file() else {}

    def log_tail(self) -> str:
        return (self.root / f"run-{self.runs_made}.log").read_text()[-3000:]

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=f"sqlite:///{self.root / 'mlflow.db'}",
                            registry_uri=f"sqlite:///{self.root / 'mlflow.db'}")

    def champion_aliases(self) -> dict[str, str]:
        """The policy's champion and previous-champion as every reader sees them (an unfinished alias change
        undone first). The candidate alias is left out: registering a candidate moves it, before any promotion."""
        from tasks.registry.versions import model_aliases

        aliases = model_aliases(self.client(), "alignflow-policy")
        return {alias: aliases[alias] for alias in ("champion", "previous-champion") if alias in aliases}

    def losses(self) -> list[str]:
        """What this workspace's runs and registry show was lost: runs left RUNNING, duplicate or half-registered
        versions."""
        from tasks.core.tags import EVAL_RUN_TAG, SOURCE_RUN_TAG

        client, lost = self.client(), []
        experiment = client.get_experiment_by_name("alignflow")
        for run in client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'"):
            lost.append(f"run {run.info.run_id} ({run.info.run_name}) left RUNNING")
        for name in ("alignflow-policy", "alignflow-reward"):
            seen: dict[tuple, str] = {}
            for version in client.search_model_versions(f"name = '{name}'"):
                source = (version.tags.get(SOURCE_RUN_TAG), version.tags.get(EVAL_RUN_TAG))
                if source[0] is None or version.status != "READY":
                    lost.append(f"{name} v{version.version} half registered ({version.status}, source {source[0]})")
                elif source in seen:
                    lost.append(f"{name} v{version.version} duplicates v{seen[source]} (source run {source[0]})")
                seen.setdefault(source, version.version)
        return lost


def _kill_processes_marked(marker: str) -> None:
    for process in psutil.process_iter():
        try:
            if process.environ().get(MARKER) == marker:
                process.send_signal(signal.SIGKILL)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue


def eval_metrics(results: dict) -> dict[str, float]:
    """Every candidate's and the baseline's eval metrics, by `<label>/<metric>`."""
    return {f"{name.removeprefix('evaluate-')}/{metric}": value for name, result in results.items()
            if name.startswith("evaluate-") and name != "evaluate-champion"
            for metric, value in result["metrics"].items() if metric.startswith("eval/")}


def metric_mismatches(reference: dict[str, float], found: dict[str, float]) -> list[str]:
    problems = []
    for name, expected in reference.items():
        value = found.get(name)
        if value is None:
            problems.append(f"{name} missing")
            continue
        rate = name.endswith("_rate")
        allowed = RATE_TOLERANCE if rate else RELATIVE_TOLERANCE * max(abs(expected), 1e-9)
        if not (math.isclose(value, expected, abs_tol=allowed) or (math.isnan(value) and math.isnan(expected))):
            problems.append(f"{name} {value:.4g} vs {expected:.4g} uninterrupted")
    return problems


def run_fault(fault: Fault, root: Path, reference: Workspace, reference_results: dict) -> Outcome:
    """Kill a run at the fault's failpoint and rerun it: in a new workspace, or for a fault that needs a champion
    to replace, in the reference workspace (its champion is the uninterrupted run's) with a challenger config."""
    started, outcome = time.perf_counter(), Outcome(fault)
    workspace = reference if fault.needs_champion else Workspace(root / fault.slug)
    args = CHALLENGER if fault.needs_champion else []
    before = workspace.champion_aliases() if fault.needs_champion else None
    status, _ = workspace.run(*args, failpoint=fault.failpoint)
    outcome.killed = status == -signal.SIGKILL
    if not outcome.killed:
        outcome.lost.append(f"not killed at {fault.failpoint} (exit {status}): the failpoint was never reached")
    if before is not None and (after := workspace.champion_aliases()) != before:
        outcome.lost.append(f"the killed promotion changed aliases: {before} -> {after}")
    status, results = workspace.run(*args)
    outcome.recovered = status == 0
    if not outcome.recovered:
        outcome.lost.append(f"the rerun failed ({status}): {workspace.log_tail()}")
    else:
        outcome.lost += workspace.losses()
        if not fault.needs_champion:  # the same config as the reference: the same numbers and the same champion
            outcome.lost += metric_mismatches(eval_metrics(reference_results), eval_metrics(results))
            champion, expected = (r.get("promote", {}).get("outputs", {}).get("promoted")
                                  for r in (results, reference_results))
            if champion != expected:
                outcome.lost.append(f"promoted {champion!r}, uninterrupted {expected!r}")
    outcome.seconds = time.perf_counter() - started
    return outcome


def run_suite(faults: tuple[Fault, ...], root: Path) -> list[Outcome]:
    reference = Workspace(root / "reference")
    status, results = reference.run()
    if status != 0:
        raise RuntimeError(f"the uninterrupted reference run failed ({status}):\n{reference.log_tail()}")
    outcomes = []
    for fault in sorted(faults, key=lambda f: f.needs_champion):  # those changing the reference workspace last
        outcome = run_fault(fault, root, reference, results)
        print(f"{fault.failpoint:20s} killed={outcome.killed} recovered={outcome.recovered} lost={len(outcome.lost)} "
              f"({outcome.seconds:.0f} s)" + "".join(f"\n    - {item}" for item in outcome.lost), flush=True)
        outcomes.append(outcome)
    return outcomes


def summary(outcomes: list[Outcome]) -> str:
    return (f"fault suite: {sum(o.killed for o in outcomes)} faults injected, "
            f"{sum(o.recovered for o in outcomes)} runs recovered, {sum(len(o.lost) for o in outcomes)} items lost")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="Only the faults `make test` injects.")
    parser.add_argument("--faults", nargs="+", help="Failpoints to inject (<name>[@<n>]), instead of the lists.")
    parser.add_argument("--keep", type=Path, help="Keep the workspaces here (default: a temporary folder).")
    options = parser.parse_args()
    faults = (tuple(Fault(spec, needs_champion=spec.startswith("promote.")) for spec in options.faults)
              if options.faults else SMALL if options.small else FULL)
    with tempfile.TemporaryDirectory(prefix="alignflow-faults-") as scratch:
        root = options.keep or Path(scratch)
        outcomes = run_suite(faults, root)
    print(summary(outcomes))
    sys.exit(0 if all(o.killed and o.recovered and not o.lost for o in outcomes) else 1)


if __name__ == "__main__":
    main()
