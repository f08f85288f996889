"""Run one stage on its own, outside the pipeline flow: under `accelerate launch` on several GPUs, or by hand.

Its inputs are either a stage request (what a dispatched stage's worker receives, see `flows.stage_flow`) or
the stage results a pipeline run wrote with `alignflow run --out`:

    accelerate launch --config_file infra/accelerate/fsdp.yaml -m flows.stage_entry ppo \\
        --config configs/pipelines/gpu-qwen.yaml --inputs reports/pipeline.json --out reports/ppo.json
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Annotated

import typer

from flows.cli.common import ConfigOption, SetOption, prepare_environment
from tasks.core.stage_names import TRAINING

app = typer.Typer(add_completion=False)


@app.command()
def main(
    stage: Annotated[str | None, typer.Argument(help=f"One of {', '.join(TRAINING)} (with --inputs).")] = None,
    inputs: Annotated[Path | None, typer.Option(help="JSON of stage results from `alignflow run --out`.")] = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
    request: Annotated[Path | None,
                       typer.Option(help="A stage request JSON (instead of stage/--inputs/--config).")] = None,
    out: Annotated[Path | None, typer.Option(help="Write this stage's result here (main process only).")] = None,
) -> None:
    prepare_environment()
    from tasks.core.secrets import install_log_redaction
    from tasks.orchestration.dispatch import StageRequest
    from tasks.run.ranks import is_main_process

    install_log_redaction()
    if request is not None:
        stage_request = StageRequest.model_validate_json(request.read_text())
    else:
        stage_request = _request_from_results(stage, inputs, config, overrides or [])
    result = stage_request.run()
    if not is_main_process():  # every process trains; the main one tracks and reports (tasks.run.ranks)
        return
    typer.echo(result.model_dump_json(indent=2))
    if out is not None:
        out.write_text(result.model_dump_json(indent=2) + "\n")


def _request_from_results(stage: str | None, inputs: Path | None, config: Path | None, overrides: list[str]):
    from tasks.core.config import load_config
    from tasks.core.lineage import Lineage, dvc_data_md5, git_sha
    from tasks.orchestration.dispatch import StageRequest
    from tasks.orchestration.stage_table import STAGES as RUNNERS
    from tasks.run.contract import StageResult
    from tasks.run.tracking import configure_tracking

    if stage not in TRAINING:
        raise typer.BadParameter(f"unknown stage {stage!r}; expected one of {', '.join(TRAINING)}")
    if inputs is None or config is None:
        raise typer.BadParameter("give --request, or a stage with --inputs and --config")
    cfg = load_config(config, overrides)
    configure_tracking(cfg)
    results = json.loads(inputs.read_text())
    # A stage's keyword inputs are named like the pipeline's results (base, data, sft, reward).
    needed = [name for name, p in inspect.signature(RUNNERS[stage].run).parameters.items()
              if p.kind is inspect.Parameter.KEYWORD_ONLY]
    missing = [name for name in needed if name not in results]
    if missing:
        raise typer.BadParameter(f"{inputs} lacks the results {missing} that stage {stage!r} needs")
    lineage = Lineage(git_sha=git_sha(), config_hash=cfg.section_hash(), data_md5=dvc_data_md5(cfg.data.dir))
    return StageRequest.build(stage, cfg, lineage, {name: StageResult.model_validate(results[name]) for name in needed})


if __name__ == "__main__":
    app()
