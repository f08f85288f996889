"""Datasets: the demo world."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
