"""Where a run's time went, stage by stage: seconds generating, training (forward and backward), loading
models and in everything else, read from the `profile/*` metrics every stage logs (`models.timing`).

    .venv/bin/python benchmarks/stage_profile.py --parent <parent run id> [--json reports/profile.json]

Run it against the store the run used (MLFLOW_TRACKING_URI, or the project's default). Stages served from the
cache did not run and are not listed. RLOO's generation happens inside TRL's trainer, so it counts as training.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tasks.core.config import load_config
from tasks.run.tracking import configure_tracking, descendant_runs

PHASES = ("generate", "train", "load", "other")


def profile(parent_run_id: str) -> list[dict]:
    rows = []
    for run in descendant_runs(parent_run_id):
        metrics = run.data.metrics
        if "profile/wall_seconds" not in metrics:
            continue
        wall = metrics["profile/wall_seconds"]
        rows.append({"stage": run.info.run_name, "started": run.info.start_time, "wall_s": round(wall, 1),
                     **{f"{name}_share": round(metrics[f"profile/{name}_seconds"] / wall, 3) if wall else 0.0
                        for name in PHASES}})
    return sorted(rows, key=lambda row: row["started"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parent", required=True, help="The flow's parent run id.")
    parser.add_argument("--config", type=Path, default=Path("configs/pipelines/smollm2.yaml"),
                        help="The pipeline config whose tracking store to read.")
    parser.add_argument("--json", type=Path, help="Also write the rows here.")
    args = parser.parse_args()
    configure_tracking(load_config(args.config, []))
    rows = profile(args.parent)
    total = sum(row["wall_s"] for row in rows)
    print(f"{'stage':28s} {'wall':>8s} " + " ".join(f"{name:>9s}" for name in PHASES))
    for row in rows:
        print(f"{row['stage']:28s} {row['wall_s'] / 60:7.1f}m " +
              " ".join(f"{row[f'{name}_share']:9.0%}" for name in PHASES))
    for name in PHASES:
        seconds = sum(row["wall_s"] * row[f"{name}_share"] for row in rows)
        print(f"all stages, {name}: {seconds / 60:.1f} min of {total / 60:.1f} ({seconds / total:.0%})" if total
              else "no profiled stage")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
