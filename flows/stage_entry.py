"""Run one training stage on its own, outside the pipeline flow: under `accelerate launch` on several GPUs,
or on a worker. Its inputs are the stage results a pipeline run wrote with `alignflow run --out`.

    accelerate launch --config_file infra/accelerate/ddp.yaml -m flows.stage_entry ppo \\
        --config configs/gpu-qwen.yaml --inputs reports/pipeline.json --out reports/ppo.json
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Annotated

import typer

from flows.cli import ConfigOption, SetOption, _prepare_environment

STAGES = ("sft", "reward", "dpo", "ppo")
app = typer.Typer(add_completion=False)


@app.command()
def main(
    stage: Annotated[str, typer.Argument(help=f"One of {', '.join(STAGES)}.")],
    inputs: Annotated[Path, typer.Option(help="JSON of stage results from `alignflow run --out`.")],
    config: ConfigOption,
    overrides: SetOption = None,
    out: Annotated[Path | None, typer.Option(help="Write this stage's result here.")] = None,
) -> None:
    _prepare_environment()
    from flows.config import load_config
    from flows.lineage import dvc_data_md5, git_sha
    from tasks import dpo, ppo, reward, sft
    from tasks.stage import Lineage, StageResult
    from tasks.tracking import configure_tracking

    runners = {"sft": sft.run_sft, "reward": reward.run_reward, "dpo": dpo.run_dpo, "ppo": ppo.run_ppo}
    if stage not in runners:
        raise typer.BadParameter(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    cfg = load_config(config, overrides or [])
    configure_tracking(cfg)
    results = json.loads(inputs.read_text())
    # A stage's keyword inputs are named like the pipeline's results (base, data, sft, reward).
    needed = [name for name, p in inspect.signature(runners[stage]).parameters.items()
              if p.kind is inspect.Parameter.KEYWORD_ONLY]
    missing = [name for name in needed if name not in results]
    if missing:
        raise typer.BadParameter(f"{inputs} lacks the results {missing} that stage {stage!r} needs")
    lineage = Lineage(git_sha=git_sha(), config_hash=cfg.section_hash(), data_md5=dvc_data_md5(cfg.data.dir))
    result = runners[stage](cfg, lineage, **{name: StageResult.model_validate(results[name]) for name in needed})
    typer.echo(result.model_dump_json(indent=2))
    if out is not None:
        out.write_text(result.model_dump_json(indent=2) + "\n")


if __name__ == "__main__":
    app()
