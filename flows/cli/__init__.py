"""The `alignflow` command line: one module per command group, assembled here."""

from __future__ import annotations

import signal
import sys

import typer

from flows.cli import cai, data, feedback, judge, pipeline, registry, runs
from flows.cli.common import Stopped, debugging, prepare_environment, report_error

# Tracebacks are for --debug (see `main`); typer's own pretty printer would show them to everyone.
app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Align language models: SFT, RLHF, DPO, CAI.")
app.callback()(prepare_environment)
app.command()(pipeline.run)
app.command()(pipeline.compare)
app.command()(pipeline.curve)
app.command()(pipeline.validate)
app.command()(pipeline.schedule)
# `serve` was the scheduler's old name, kept for one release (it also named the labelling page and MLflow's server).
app.command("serve", hidden=True, deprecated=True, help="Old name of `alignflow schedule`.")(pipeline.schedule)
app.command()(feedback.iterate)
app.command()(registry.promote)
app.command()(registry.rollback)
app.command()(registry.status)
app.add_typer(data.app, name="data")
app.add_typer(cai.app, name="cai")
app.add_typer(feedback.app, name="feedback")
app.add_typer(runs.app, name="runs")
app.add_typer(judge.app, name="judge")


def main() -> None:
    """The console entry point: a failure prints its message for people and exits 1; the traceback only with
    --debug or ALIGNFLOW_DEBUG=1. The Prefect flow run and the MLflow runs have recorded the failure by now.

    SIGTERM and SIGINT raise `Stopped`, so the command unwinds like a failure: MLflow runs end KILLED, the flow
    run Crashed, and the interpreter exits normally, stopping its ephemeral Prefect server. (Prefect turns a
    SIGTERM inside a flow into its own exception, then sends the signal again to the handler it found: this one,
    not the default handler, which would end the process at once and leave the server running.)
    """
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stop)
    try:
        app()
    except (SystemExit, GeneratorExit):
        raise
    except BaseException as error:  # every failure ends here, as a message; a signal too (Prefect's SIGTERM)
        if debugging():
            raise
        sys.exit(report_error(error))


def _stop(signum: int, frame) -> None:
    # Once: a second signal while the run cleans up takes the default action (ends the process at once), rather
    # than interrupting the cleanup that ends its runs and stops its server.
    for handled in (signal.SIGTERM, signal.SIGINT):
        signal.signal(handled, signal.SIG_DFL)
    raise Stopped(signum)
