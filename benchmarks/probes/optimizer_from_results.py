"""One optimizer variant, trained and evaluated from a finished run's SFT model and data, without retraining them.

    .venv/bin/python benchmarks/probes/optimizer_from_results.py --results reports/run.json \
        --config configs/pipelines/smollm2.yaml --set dpo.balance_refusals=true [--optimizer dpo] [--label dpo-balanced]

`--results` is the JSON `alignflow run --out` wrote. The variant starts from its `sft` result on its `data`
(with `--set data.train_fraction=F`, that fraction of it: a learning curve of the optimizer alone), is
judged like its other models (its reward model, the SFT model as reference and baseline, the base model's
evaluation), under one MLflow parent run `<name>-probe-<label>`, and registers nothing. Its stages run this
checkout's code: compare the row with the finished run's rows only where the code they share did not change
(the stage runs' `alignflow.code_version` tags say).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prefect import flow

from flows.pipeline import optimizer_inputs
from tasks.core import stage_names as stage
from tasks.core.config import load_config
from tasks.orchestration.comparison import measured_rows
from tasks.orchestration.parent_run import flow_lineage, parent_run
from tasks.orchestration.stage_table import STAGES
from tasks.report.results import Method, summary_table
from tasks.run.contract import StageResult
from tasks.run.tracking import configure_tracking

PROBED = ("dpo", "ppo", "rloo")  # the optimizers that start from SFT alone or with the reward model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--optimizer", choices=PROBED, default="dpo")
    parser.add_argument("--label", default=None, help="The row's name (default: <optimizer>-probe).")
    args = parser.parse_args()
    rows = probe(args.results, args.config, args.overrides, args.optimizer, args.label or f"{args.optimizer}-probe")
    print(summary_table(rows))


@flow(name="optimizer_probe")
def probe(results_file: Path, config: Path, overrides: list[str], optimizer: str, label: str) -> list:
    results = {name: StageResult.model_validate(value) for name, value in json.loads(results_file.read_text()).items()}
    cfg = load_config(config, overrides)
    configure_tracking(cfg)
    data, sft = results["data"], results["sft"]
    inputs = optimizer_inputs(results)[optimizer]
    if any(value is None for value in inputs.values()):
        raise SystemExit(f"{results_file} holds no {' or '.join(k for k, v in inputs.items() if v is None)} model "
                         f"for {optimizer}: rerun that pipeline with it among its optimizers, or with reward.always")
    with parent_run(f"{cfg.name}-probe-{label}", flow_lineage(cfg.section_hash(), cfg), cfg,
                    configs={"config.yaml": cfg}) as lineage:
        if cfg.data.train_fraction < 1:  # a learning-curve point for the optimizer alone: the SFT model as it was
            data = STAGES[stage.VALIDATE].run(cfg, lineage, **({"base": results["base"]} if cfg.model.pretrained
                                                               else {}))
        judged = {"data": data, "reward": results.get("reward"), "reference": sft, "base": results.get("evaluate-base")}
        results[label] = policy = STAGES[optimizer].run(cfg, lineage, sft=sft, data=data, **inputs)
        results[f"evaluate-{label}"] = STAGES[stage.EVALUATE].run(cfg, lineage, policy=policy, label=label,
                                                                  baseline=results["evaluate-sft"], **judged)
    methods = [Method(label="sft", role="baseline", stages=("sft",), human_data=("sft_train",)),
               Method(label=label, stages=("sft", *inputs, label), human_data=("sft_train", "preferences_train"))]
    return measured_rows(results, methods, data)


if __name__ == "__main__":
    main()
