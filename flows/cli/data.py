"""Datasets: the tiny demo world, and the real-language safety world built with a real model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli.common import ConfigOption, OutOption, SetOption, fail, local_prefect_server_starting, write_json
from tasks.core import paths

app = typer.Typer(no_args_is_help=True, help="Datasets.")


@app.command("demo")
def data_demo(
    out: Annotated[Path, typer.Option(help="Output folder.")] = paths.DATA_DIR,
    seed: Annotated[int, typer.Option(help="Generator seed (the tracked data uses 0).")] = 0,
) -> None:
    """Write the demo datasets (deterministic: reproduces the md5 in data.dvc)."""
    from tasks.data.demo import write_demo_data

    for name, path in write_demo_data(out, seed).items():
        typer.echo(f"{name:18s} {path}")
    if seed == 0:
        from tasks.core.lineage import check_in_regenerated_data

        md5 = check_in_regenerated_data(out)
        if md5 is not None:
            typer.echo(f"matches {out}.dvc (md5 {md5}); stored in the DVC cache")


@app.command("world")
def data_world(config: ConfigOption = paths.PIPELINES_DIR / "smollm2.yaml", overrides: SetOption = None,
               out: OutOption = None) -> None:
    """Build the real-language safety world for the config's base model into `data.dir` (a new DVC version)."""
    from tasks.core.config import load_config
    from tasks.core.errors import AlignflowError
    from tasks.world.catalogue import load_catalogue

    try:  # a bad config or catalogue fails here, in a second, before torch and Prefect load
        cfg = load_config(config, overrides or [])
        load_catalogue(cfg.world.catalogue)
    except AlignflowError as err:
        fail(str(err))
    with local_prefect_server_starting():
        from flows.world import safety_world_data
    try:
        results = safety_world_data(str(config), overrides or [])
    except AlignflowError as err:
        fail(str(err))
    world = results["world"]
    for name, value in world.metrics.items():
        typer.echo(f"{name:36s} {value:g}")
    typer.echo(f"datasets in {world.outputs['dir']} (dvc md5 {world.output_hashes['dvc_md5']})")
    write_json(out, {name: result.model_dump() for name, result in results.items()})
