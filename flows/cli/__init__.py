"""The `alignflow` command line: one module per command group, assembled here."""

from __future__ import annotations

import typer

from flows.cli import cai, data, pipeline, registry
from flows.cli.common import prepare_environment

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Align language models: SFT, RLHF, DPO, CAI.")
app.callback()(prepare_environment)
app.command()(pipeline.run)
app.command()(pipeline.validate)
app.command()(pipeline.serve)
app.command()(registry.promote)
app.command()(registry.rollback)
app.command()(registry.status)
app.add_typer(data.app, name="data")
app.add_typer(cai.app, name="cai")
