"""What every command shares: options, environment defaults, and how a command fails for people."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, NoReturn

import typer

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="Pipeline YAML.")]
SetOption = Annotated[list[str] | None, typer.Option("--set", help="Override a config key: --set sft.epochs=2.")]
OutOption = Annotated[Path | None, typer.Option(help="Also write the stage results as JSON here (for DVC).")]


def prepare_environment() -> None:
    """Defaults that keep a laptop run self-contained and offline-safe; explicit settings always win."""
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
