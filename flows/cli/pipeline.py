"""Running the pipeline: once (`run`, `validate`), as a comparison of the methods (`compare`) or on a schedule
(`schedule`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from flows.cli.common import (
    ConfigOption,
    OutOption,
    SetOption,
    fail,
    local_prefect_server_starting,
    registry_config,
    write_json,
)
from tasks.core import paths
from tasks.core.stage_names import OPTIMIZERS

SkipOption = Annotated[bool, typer.Option(
    "--skip-if-unchanged", help="Stop with 'nothing changed' when the champion was trained on this data version "
    "with this config.")]


def run(config: ConfigOption = paths.DEMO_CONFIG, overrides: SetOption = None, out: OutOption = None,
        skip_if_unchanged: SkipOption = False) -> None:
    """Run the whole alignment pipeline as a Prefect flow."""
    with local_prefect_server_starting():
        from flows.pipeline import alignment_pipeline
        from tasks.orchestration.comparison import COMPARISON, logged_rows
        from tasks.report.results import summary_table
        from tasks.run.tracking import ui_link
    results = alignment_pipeline(str(config), overrides or [], skip_if_unchanged)
    if not results:
        typer.echo("nothing changed: the champion was trained on this data version with this config")
    for name, result in results.items():
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in result.metrics.items() if not k.startswith("validate/"))
        typer.echo(f"{name:14s} run {result.run_id}  {result.model_uri or ''}  {metrics}")
    if COMPARISON in results:  # the results table the run logged on its parent run
        typer.echo(f"\n{summary_table(logged_rows(results[COMPARISON].run_id))}")
    if run_ids := [result.run_id for result in results.values() if result.run_id]:
        typer.echo(f"\nIn the MLflow UI (`make ui` for a local store): {ui_link(run_ids[0])}")
    write_json(out, {name: result.model_dump() for name, result in results.items()})


FromResultsOption = Annotated[Path | None, typer.Option(
    "--from-results", help="Train nothing: rebuild the comparison and report of a finished run from the stage "
    "results its `alignflow run --out` wrote.")]


def compare(config: ConfigOption = paths.DEMO_CONFIG, overrides: SetOption = None, out: OutOption = None,
            from_results: FromResultsOption = None) -> None:
    """Compare the alignment methods on the same base model, data and held-out eval, as one MLflow parent run:
    SFT, then DPO, PPO, RLOO and Safe RLHF (safe_ppo) from it, and with `cai.config` Constitutional AI (SL-CAI
    and RLAIF, on data the base model made from a constitution). Unchanged stages come from the cache. Prints the
    comparison table and writes the HTML report."""
    from tasks.core.errors import AlignflowError
    from tasks.orchestration.cai_methods import comparison_configs
    from tasks.orchestration.comparison_report import (
        logged_comparison,
        report_finished_run,
        results_from_file,
    )
    from tasks.report.results import comparison_markdown

    overrides = [*(overrides or []), f"optimizers=[{','.join(OPTIMIZERS)}]"]  # every method
    if from_results is not None:  # train nothing: the finished run's results, reported again
        results = results_from_file(from_results)
        rows, report = report_finished_run(registry_config(config, overrides), results)
    else:
        try:
            comparison_configs(config, overrides)  # a bad CAI config fails before MLflow or Prefect start
        except AlignflowError as err:
            fail(str(err))
        cfg = registry_config(config, overrides)
        with local_prefect_server_starting():
            from flows.comparison import method_comparison
        results = method_comparison(str(config), overrides)
        write_json(out, {name: result.model_dump() for name, result in results.items()})
        rows, report = logged_comparison(cfg, results)  # what the run logged
    typer.echo(f"\n{comparison_markdown(rows)}\nreport: {report}")


FractionsOption = Annotated[str, typer.Option(
    "--fractions", help="Comma-separated fractions of the training data, each in (0, 1], e.g. 0.25,0.5,1.")]


def curve(config: ConfigOption = paths.DEMO_CONFIG, overrides: SetOption = None,
          fractions: FractionsOption = "0.25,0.5,1") -> None:
    """A learning curve: SFT and each of `optimizers` trained on each fraction of the training data (drawn per
    request kind and sub-category), all judged on the same whole held-out eval, in one MLflow parent run; no
    policy is registered. Prints the table and writes it with its plot to the reports folder."""
    from tasks.core.config import load_config
    from tasks.core.errors import AlignflowError
    from tasks.report.results import curve_markdown

    try:
        shares = [float(part) for part in fractions.split(",") if part.strip()]
    except ValueError:
        shares = []
    if not shares:
        fail(f"--fractions {fractions!r}: expected comma-separated numbers in (0, 1], e.g. 0.25,0.5,1")
    try:
        for share in shares:
            load_config(config, [*(overrides or []), f"data.train_fraction={share}"])
    except AlignflowError as err:
        fail(f"--fractions {fractions!r}: {err}")
    with local_prefect_server_starting():
        from flows.learning_curve import learning_curve
    points = learning_curve(str(config), overrides or [], shares)
    typer.echo(f"\n{curve_markdown(points)}")


def validate(config: ConfigOption = paths.DEMO_CONFIG, overrides: SetOption = None, out: OutOption = None) -> None:
    """Validate the datasets with Great Expectations, without training."""
    with local_prefect_server_starting():
        from flows.pipeline import data_validation
    result = data_validation(str(config), overrides or [])
    typer.echo(json.dumps(result.metrics, indent=2))
    write_json(out, result.model_dump())


def schedule(
    cron: Annotated[str, typer.Option(help='Cron schedule of the retraining runs, e.g. "0 3 * * *".')],
    config: ConfigOption = paths.DEMO_CONFIG,
    overrides: SetOption = None,
    name: Annotated[str, typer.Option(help="Deployment name (alignment_pipeline/<name>).")] = "scheduled-retraining",
    timezone: Annotated[str | None, typer.Option(help="IANA time zone of the schedule (default UTC).")] = None,
    always_retrain: Annotated[bool, typer.Option(help="Retrain even when nothing changed.")] = False,
) -> None:
    """Run the pipeline on a cron schedule, as a Prefect deployment served from this process, until stopped.

    Scheduled runs end early with 'nothing changed' when the champion was trained on the same DVC data version
    with the same config. The deployment runs in this process; for workers, see infra/prefect.yaml.
    """
    from prefect.schedules import Cron
    from prefect.settings import get_current_settings

    from tasks.core.config import load_config
    from tasks.core.errors import AlignflowError

    if not get_current_settings().api.url:  # the ephemeral server that `alignflow run` uses has no scheduler
        fail("alignflow schedule needs a Prefect server, whose scheduler starts the runs: start one with "
              "`prefect server start` and set PREFECT_API_URL (see docs/production.md)")
    try:
        load_config(config, overrides or [])  # a bad config fails now, not at 3 a.m.
        cron_schedule = Cron(cron, timezone=timezone)
    except (AlignflowError, ValueError) as err:
        fail(str(err))
    from flows.pipeline import alignment_pipeline

    alignment_pipeline.serve(
        name=name,
        schedules=[cron_schedule],
        parameters={"config_path": str(config.resolve()), "overrides": overrides or [],
                    "skip_if_unchanged": not always_retrain},
        tags=["alignflow", "scheduled"],
        description=f"Scheduled retraining with {config} ({cron}).",
    )
