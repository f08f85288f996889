"""MLflow runs: end the ones a killed process left RUNNING."""

from __future__ import annotations

import typer

from flows.cli.common import ConfigOption, SetOption, registry_config
from tasks.core import paths

app = typer.Typer(no_args_is_help=True, help="MLflow runs.")


@app.command("reap")
def reap(config: ConfigOption = paths.DEMO_CONFIG, overrides: SetOption = None) -> None:
    """End as KILLED the runs of the config's experiment whose process on this host is gone (kill -9, power
    loss). `alignflow run` does this too before it starts."""
    import mlflow

    from tasks.run.lifecycle import reap_dead_runs

    cfg = registry_config(config, overrides)
    experiment = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    reaped = reap_dead_runs([experiment.experiment_id]) if experiment is not None else []
    for run_id in reaped:
        typer.echo(f"KILLED {run_id}")
    typer.echo(f"{len(reaped)} run(s) ended KILLED: their process was gone.")
