"""What every command shares: options, environment defaults, and how a command fails for people."""

from __future__ import annotations

import atexit
import contextlib
import gc
import json
import logging
import os
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, NoReturn

import typer

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="Pipeline YAML.")]
SetOption = Annotated[list[str] | None, typer.Option("--set", help="Override a config key: --set sft.epochs=2.")]
OutOption = Annotated[Path | None, typer.Option(help="Also write the stage results as JSON here (for DVC).")]
DebugOption = Annotated[bool, typer.Option("--debug", help="Show tracebacks (also ALIGNFLOW_DEBUG=1).")]
DEBUG_VARIABLE = "ALIGNFLOW_DEBUG"


def prepare_environment(debug: DebugOption = False) -> None:
    """Defaults that keep a laptop run self-contained and offline-safe; explicit settings always win."""
    if debug:
        os.environ[DEBUG_VARIABLE] = "1"
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if "PREFECT_API_URL" not in os.environ:
        os.environ.setdefault("PREFECT_HOME", str(Path(".prefect").resolve()))
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Progress bars of downloads and shard writes drown the stage logs; training metrics still print.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if not debugging():
        _console_without_tracebacks()
    skip_collection_at_exit()


@contextlib.contextmanager
def local_prefect_server_starting() -> Iterator[None]:
    """Start the local Prefect server while the block runs (the command's heavy imports), and wait for it after.

    Without PREFECT_API_URL a flow runs on a temporary server that Prefect starts when the flow begins: seconds
    of importing and migrating its database, after the command's own seconds of importing torch, transformers
    and GE. Started here, in a process of its own, the two overlap. The wait matters: Prefect takes a server that
    is starting for one that is up."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer  # the one Prefect's client would start

    def start() -> None:
        # A failure leaves the server stopped; Prefect starts it again for the flow, and the command reports that.
        with contextlib.suppress(Exception):
            SubprocessASGIServer().start()

    starting = threading.Thread(target=start, name="prefect-server-start", daemon=True)
    starting.start()
    yield
    starting.join()


def skip_collection_at_exit() -> None:
    """At exit CPython collects garbage over the whole heap, pass after pass, while it unloads modules: 3 to 5 s
    of CPU for a process that imported torch, transformers and GE, on every command. Freezing the heap at exit
    skips those passes and nothing else: atexit handlers (Prefect stopping its server, MLflow and logging
    flushing) and weakref finalizers still run, and objects are still freed as modules unload."""
    atexit.unregister(gc.freeze)  # once per process, however often a command is set up
    atexit.register(gc.freeze)


class Stopped(BaseException):
    """The command was stopped by a signal. Not an Exception: nothing that handles errors should swallow it."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signal = signum


def debugging() -> bool:
    return os.environ.get(DEBUG_VARIABLE, "").lower() in ("1", "true", "yes")


def report_error(error: BaseException) -> int:
    """Print the one message a failed command shows, and return its exit status. Ours are written for people;
    a signal says the runs ended KILLED; anything else says what it is."""
    from tasks.core.errors import AlignflowError

    if isinstance(error, AlignflowError):
        typer.echo(f"error: {error}", err=True)
        return 1
    signum = getattr(error, "signal", signal.SIGINT if isinstance(error, KeyboardInterrupt) else None)
    if signum is not None:  # Stopped, Prefect's TerminationSignal, or a KeyboardInterrupt
        typer.echo(f"stopped by {signal.Signals(signum).name}: the MLflow runs ended KILLED; the same command "
                   f"resumes from the last complete checkpoint", err=True)
        return 128 + signum
    from tasks.orchestration.transient import is_transient

    if is_transient(error):
        typer.echo(f"error: the service at {_address(error)} did not answer, also when retried "
                   f"({type(error).__name__}: {str(error).splitlines()[0][:500]})\n"
                   "Rerun the same command once it answers: finished stages are reused, and runs left RUNNING "
                   "are ended as KILLED.", err=True)
        return 1
    typer.echo(f"error: {type(error).__name__}: {error}\n"
               f"(an unexpected failure: rerun with --debug or {DEBUG_VARIABLE}=1 for the traceback)", err=True)
    return 1


def _address(error: BaseException) -> str:
    """host:port of the first URL in the error's messages (its own, then its causes'), else 'a remote service'."""
    from tasks.orchestration.transient import cause_chain

    for cause in cause_chain(error):
        if found := re.search(r"https?://(?:[^@/\s]*@)?([^/\s:]+(?::\d+)?)", str(cause)):
            return found.group(1)
    return "a remote service"


class _MessageOnly(logging.Formatter):
    """Formats a record as its own formatter would, less the traceback. The record is restored afterwards, so
    the handler that sends logs to the Prefect server still sends the traceback with them."""

    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def _console_without_tracebacks() -> None:
    """Prefect logs every failed task and flow with its traceback, hundreds of lines before the one that matters;
    on the terminal, keep the lines and drop the tracebacks (the CLI prints the error itself at the end)."""
    from prefect.logging.configuration import setup_logging
    from prefect.logging.handlers import PrefectConsoleHandler

    setup_logging()  # Prefect's handlers exist before any flow starts, so they can be wrapped now
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in logging.root.manager.loggerDict)]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, PrefectConsoleHandler) and not isinstance(handler.formatter, _MessageOnly):
                handler.setFormatter(_MessageOnly(handler.formatter))


def fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def write_json(path: Path | None, payload: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def registry_config(config: Path, overrides: list[str] | None):
    """Load the config and point MLflow at its store; a bad config exits with its message."""
    from tasks.core.config import load_config
    from tasks.core.errors import AlignflowError
    from tasks.run.tracking import configure_tracking

    try:
        cfg = load_config(config, overrides or [])
        configure_tracking(cfg)
    except AlignflowError as err:
        fail(str(err))
    return cfg
