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


SkipOption = Annotated[bool, typer.Option(
    "--skip-if-unchanged", help="Stop with 'nothing changed' when the champion was trained on this data version "
    "with this config.")]


@app.command()
def run(config: ConfigOption = paths.DEMO_CONFIG, overrides: SetOption = None, out: OutOption = None,
        skip_if_unchanged: SkipOption = False) -> None:
    """Run the whole alignment pipeline as a Prefect flow."""
    from flows.pipeline import alignment_pipeline

    results = alignment_pipeline(str(config), overrides or [], skip_if_unchanged)
    if not results:
        typer.echo("nothing changed: the champion was trained on this data version with this config")
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


@app.command()
def serve(
    cron: Annotated[str, typer.Option(help='Cron schedule of the retraining runs, e.g. "0 3 * * *".')],
    config: ConfigOption = paths.DEMO_CONFIG,
    overrides: SetOption = None,
    name: Annotated[str, typer.Option(help="Deployment name (alignment_pipeline/<name>).")] = "scheduled-retraining",
    timezone: Annotated[str | None, typer.Option(help="IANA time zone of the schedule (default UTC).")] = None,
    always_retrain: Annotated[bool, typer.Option(help="Retrain even when nothing changed.")] = False,
) -> None:
    """Serve the pipeline as a Prefect deployment that reruns it on a cron schedule, until stopped.

    Scheduled runs end early with 'nothing changed' when the champion was trained on the same DVC data version
    with the same config. The deployment runs in this process; for workers, see infra/prefect.yaml.
    """
    from prefect.schedules import Cron
    from prefect.settings import get_current_settings

    from flows.config import load_config
    from flows.errors import AlignflowError

    if not get_current_settings().api.url:  # the ephemeral server that `alignflow run` uses has no scheduler
        _fail("alignflow serve needs a Prefect server, whose scheduler starts the runs: start one with "
              "`prefect server start` and set PREFECT_API_URL (see docs/production.md)")
    try:
        load_config(config, overrides or [])  # a bad config fails now, not at 3 a.m.
        schedule = Cron(cron, timezone=timezone)
    except (AlignflowError, ValueError) as err:
        _fail(str(err))
    from flows.pipeline import alignment_pipeline

    alignment_pipeline.serve(
        name=name,
        schedules=[schedule],
        parameters={"config_path": str(config.resolve()), "overrides": overrides or [],
                    "skip_if_unchanged": not always_retrain},
        tags=["alignflow", "scheduled"],
        description=f"Scheduled retraining with {config} ({cron}).",
    )


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
    if seed == 0:
        from flows.lineage import check_in_regenerated_data

        md5 = check_in_regenerated_data(out)
        if md5 is not None:
            typer.echo(f"matches {out}.dvc (md5 {md5}); stored in the DVC cache")


# --- Model registry: promotion, rollback, status -------------------------------------------------------------


def _registry_config(config: Path, overrides: list[str] | None):
    """Load the config and point MLflow at its store; a bad config exits with its message."""
    from flows.config import load_config
    from flows.errors import AlignflowError
    from tasks.tracking import configure_tracking

    try:
        cfg = load_config(config, overrides or [])
        configure_tracking(cfg)
    except AlignflowError as err:
        _fail(str(err))
    return cfg


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _alias_line(aliases: dict[str, str], *names: str) -> str:
    return "   ".join(f"{name}: {'v' + aliases[name] if name in aliases else '-'}" for name in names)


@app.command()
def promote(
    version: Annotated[int, typer.Option("--version", "-v", min=1, help="Version of the policy model to promote.")],
    config: ConfigOption = paths.DEMO_CONFIG,
    overrides: SetOption = None,
    reason: Annotated[str, typer.Option(help="Why, recorded on the version.")] = "manual",
) -> None:
    """Make version N of the policy model the champion by hand, bypassing the gates."""
    from flows.errors import AlignflowError
    from tasks.promote import alias_versions, promote_version

    cfg = _registry_config(config, overrides)
    registry, name = cfg.registry, cfg.registry.policy_name
    try:
        before = alias_versions(name)
        promote_version(name, str(version), registry, reason=reason)
        after = alias_versions(name)
    except AlignflowError as err:
        _fail(str(err))
    aliases = (registry.champion_alias, registry.previous_champion_alias)
    if before.get(registry.champion_alias) == str(version):
        typer.echo(f"{name} v{version} is already the {registry.champion_alias}; nothing changed.")
        return
    typer.echo(f"{name}: promoted v{version} to {registry.champion_alias} (manual, reason: {reason}).")
    for alias in aliases:
        typer.echo(f"  {alias}: {_v(before.get(alias))} -> {_v(after.get(alias))}")


@app.command()
def rollback(config: ConfigOption = paths.DEMO_CONFIG, overrides: SetOption = None) -> None:
    """Give the champion alias back to the previous champion."""
    from flows.errors import AlignflowError
    from tasks.promote import ROLLED_BACK_TAG, alias_versions
    from tasks.promote import rollback as rollback_registry

    cfg = _registry_config(config, overrides)
    registry, name = cfg.registry, cfg.registry.policy_name
    try:
        before = alias_versions(name)
        champion = rollback_registry(name, registry)
        after = alias_versions(name)
    except AlignflowError as err:
        _fail(str(err))
    demoted = before.get(registry.champion_alias)
    typer.echo(f"{name}: rolled back; champion is now v{champion}.")
    if demoted is not None and demoted != champion:
        typer.echo(f"  v{demoted} demoted and tagged {ROLLED_BACK_TAG}=true")
    typer.echo(f"  {registry.previous_champion_alias}: {_v(after.get(registry.previous_champion_alias))}")


@app.command()
def status(
    config: ConfigOption = paths.DEMO_CONFIG,
    overrides: SetOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
) -> None:
    """The policy model's versions: champion, previous champion, candidates, their gates, lineage and metrics."""
    import mlflow

    from tasks.promote import registry_status

    cfg = _registry_config(config, overrides)
    registry, name = cfg.registry, cfg.registry.policy_name
    rows = registry_status(name, registry)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"{name}: no versions registered at {mlflow.get_tracking_uri()}")
        return
    aliases = {alias: row["version"] for row in rows for alias in row["aliases"]}
    typer.echo(f"{name} @ {mlflow.get_tracking_uri()}")
    typer.echo(_alias_line(aliases, registry.champion_alias, registry.previous_champion_alias, registry.candidate_alias))
    header = ("version", "aliases", "gates", "promotion", "source", "git_sha", "config", "data_md5")
    table = [header]
    for row in rows:
        lineage = row["lineage"]
        promotion = row["promotion"] + (" (rolled back)" if row["rolled_back"] else "")
        run_id = (row["source_run_id"] or row["run_id"])[:8]
        source = f"{row['source_stage']}/{run_id}" if row["source_stage"] else run_id
        table.append((
            f"v{row['version']}", ",".join(row["aliases"]) or "-", row["gate_decision"] or "-", promotion or "-",
            source or "-", lineage.get("alignflow.git_sha", "-")[:8], lineage.get("alignflow.config_hash", "-")[:8],
            lineage.get("alignflow.dvc_data_md5", "-")[:8],
        ))
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for i, line in enumerate(table):
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
        if i == 0:
            continue
        row = rows[i - 1]
        if row["metrics"]:
            typer.echo("    metrics: " + "  ".join(f"{k}={v:.4g}" for k, v in row["metrics"].items()))
        failed = {k: v for k, v in row["gates"].items() if v.startswith("fail")}
        for gate, verdict in failed.items():
            typer.echo(f"    gate {gate}: {verdict}")
        parents = {k.removeprefix("alignflow.parent."): v for k, v in row["lineage"].items() if ".parent." in k}
        if parents:
            typer.echo("    parents: " + "  ".join(f"{k}={v}" for k, v in parents.items()))
        if row["promotion_reason"]:
            typer.echo(f"    promoted {row['promoted_at']}: {row['promotion_reason']}")


def _v(version: str | None) -> str:
    return f"v{version}" if version is not None else "-"


# --- Constitutional AI: critique-revision datasets and AI preference labels ----------------------------------

cai_app = typer.Typer(no_args_is_help=True, help="Constitutional AI: critique-revision data and AI feedback labels.")
app.add_typer(cai_app, name="cai")


@cai_app.command("run")
def cai_run(
    config: Annotated[Path, typer.Option("--config", "-c", help="CAI YAML.")] = paths.CONFIGS_DIR / "cai.yaml",
    overrides: SetOption = None,
    out: OutOption = None,
) -> None:
    """Generate, critique, revise and AI-label; write the datasets as a new DVC version (flow constitutional_data)."""
    from flows.cai_config import load_cai_config, load_constitution
    from flows.errors import AlignflowError
    from tasks.cai_prompts import load_templates

    try:  # a bad config, constitution or template fails here, in a second, before torch and Prefect load
        cai = load_cai_config(config, overrides or [])
        load_constitution(cai.constitution)
        load_templates(cai.templates)
    except AlignflowError as err:
        _fail(str(err))
    from flows.constitutional import constitutional_data

    try:
        results = constitutional_data(str(config), overrides or [])
    except AlignflowError as err:
        _fail(str(err))
    for name, result in results.items():
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in result.metrics.items() if not k.startswith("validate/"))
        typer.echo(f"{name:16s} run {result.run_id}  {metrics}")
    version = results["version"]
    typer.echo(f"datasets in {version.outputs['dir']} (dvc md5 {version.output_hashes['dvc_md5']}, constitution "
               f"sha256 {version.output_hashes['constitution_sha256'][:12]})")
    _write_json(out, {name: result.model_dump() for name, result in results.items()})
