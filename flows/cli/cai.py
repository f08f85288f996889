"""Constitutional AI: critique-revision datasets and AI preference labels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli.common import OutOption, SetOption, fail, write_json
from tasks.core import paths

app = typer.Typer(no_args_is_help=True, help="Constitutional AI: critique-revision data and AI feedback labels.")


@app.command("run")
def cai_run(
    config: Annotated[Path, typer.Option("--config", "-c", help="CAI YAML.")] = paths.CONFIGS_DIR / "cai.yaml",
    overrides: SetOption = None,
    out: OutOption = None,
) -> None:
    """Generate, critique, revise and AI-label; write the datasets as a new DVC version (flow constitutional_data)."""
    from tasks.cai.config import load_cai_config, load_constitution
    from tasks.cai.prompts import load_templates
    from tasks.core.errors import AlignflowError

    try:  # a bad config, constitution or template fails here, in a second, before torch and Prefect load
        cai = load_cai_config(config, overrides or [])
        load_constitution(cai.constitution)
        load_templates(cai.templates)
    except AlignflowError as err:
        fail(str(err))
    from flows.constitutional import constitutional_data

    try:
        results = constitutional_data(str(config), overrides or [])
    except AlignflowError as err:
        fail(str(err))
    for name, result in results.items():
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in result.metrics.items() if not k.startswith("validate/"))
        typer.echo(f"{name:16s} run {result.run_id}  {metrics}")
    version = results["version"]
    typer.echo(f"datasets in {version.outputs['dir']} (dvc md5 {version.output_hashes['dvc_md5']}, constitution "
               f"sha256 {version.output_hashes['constitution_sha256'][:12]})")
    write_json(out, {name: result.model_dump() for name, result in results.items()})
