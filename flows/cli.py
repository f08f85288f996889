"""The `alignflow` command line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from flows import paths

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Align language models: SFT, RLHF, DPO, CAI.")
data_app = typer.Typer(no_args_is_help=True, help="Datasets.")
app.add_typer(data_app, name="data")

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="Pipeline YAML.")]
SetOption = Annotated[list[str] | None, typer.Option("--set", help="Override a config key: --set sft.epochs=2.")]
OutOption = Annotated[Path | None, typer.Option(help="Also write the stage results as JSON here (for DVC).")]


def _prepare_environment() -> None:
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


@app.callback()
def main() -> None:
    _prepare_environment()


@app.command()
def run(config: ConfigOption = paths.DEMO_CONFIG, overrides: SetOption = None, out: OutOption = None) -> None:
    """Run the whole alignment pipeline as a Prefect flow."""
    from flows.pipeline import alignment_pipeline

    results = alignment_pipeline(str(config), overrides or [])
    for name, result in results.items():
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in result.metrics.items() if not k.startswith("validate/"))
        typer.echo(f"{name:14s} run {result.run_id}  {result.model_uri or ''}  {metrics}")
    _write_json(out, {name: result.model_dump() for name, result in results.items()})


@app.command()
def validate(config: ConfigOption = paths.DEMO_CONFIG, overrides: SetOption = None, out: OutOption = None) -> None:
    """Validate the datasets with Great Expectations, without training."""
    from flows.pipeline import data_validation

    result = data_validation(str(config), overrides or [])
    typer.echo(json.dumps(result.metrics, indent=2))
    _write_json(out, result.model_dump())


def _write_json(path: Path | None, payload: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


@data_app.command("demo")
def data_demo(
    out: Annotated[Path, typer.Option(help="Output folder.")] = paths.DATA_DIR,
    seed: Annotated[int, typer.Option(help="Generator seed (the tracked data uses 0).")] = 0,
) -> None:
    """Write the demo datasets (deterministic: reproduces the md5 in data.dvc)."""
    from tasks.demo_data import write_demo_data

    for name, path in write_demo_data(out, seed).items():
        typer.echo(f"{name:18s} {path}")
