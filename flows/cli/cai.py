"""Constitutional AI: critique-revision datasets and AI preference labels."""

from __future__ import annotations

import typer

from flows.cli.common import ConfigOption, OutOption, SetOption, fail, local_prefect_server_starting, write_json
from tasks.core import paths

app = typer.Typer(no_args_is_help=True, help="Constitutional AI: critique-revision data and AI feedback labels.")


@app.command("run")
def cai_run(
    config: ConfigOption = paths.DEMO_CONFIG,
    overrides: SetOption = None,
    out: OutOption = None,
) -> None:
    """Make the CAI data of a pipeline (its `cai.config`) alone: generate, critique, revise and AI-label, then write
    the datasets as a new DVC version (flow constitutional_data). `alignflow compare` also trains and compares on
    it. CAI settings: --set cai.overrides=[key=value,...]."""
    from tasks.core.errors import AlignflowError
    from tasks.orchestration.cai_methods import comparison_configs

    try:  # a bad config, constitution or template fails here, in a second, before Prefect starts
        if comparison_configs(config, overrides or [])[1] is None:
            fail(f"{config}: no cai.config: name the CAI config whose data to make")
    except AlignflowError as err:
        fail(str(err))
    with local_prefect_server_starting():
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
