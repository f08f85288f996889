"""The model registry by hand: promote, roll back, and what each version is."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from flows.cli.common import ConfigOption, SetOption, fail, registry_config
from tasks.core import paths


def promote(
    version: Annotated[int, typer.Option("--version", "-v", min=1, help="Version of the policy model to promote.")],
    config: ConfigOption = paths.DEMO_CONFIG,
    overrides: SetOption = None,
    reason: Annotated[str, typer.Option(help="Why, recorded on the version.")] = "manual",
) -> None:
    """Make version N of the policy model the champion by hand, bypassing the gates."""
    from tasks.core.errors import AlignflowError
    from tasks.orchestration.promotion import promotion_lock
    from tasks.registry.promotion import promote_version
    from tasks.registry.status import alias_versions

    cfg = registry_config(config, overrides)
    registry, name = cfg.registry, cfg.registry.policy_name
    try:
        with promotion_lock(cfg):  # not in the middle of a pipeline's gate decision
            before = alias_versions(name)
            promote_version(name, str(version), registry, reason=reason)
            after = alias_versions(name)
    except AlignflowError as err:
        fail(str(err))
    aliases = (registry.champion_alias, registry.previous_champion_alias)
    if before.get(registry.champion_alias) == str(version):
        typer.echo(f"{name} v{version} is already the {registry.champion_alias}; nothing changed.")
        return
    typer.echo(f"{name}: promoted v{version} to {registry.champion_alias} (manual, reason: {reason}).")
    for alias in aliases:
        typer.echo(f"  {alias}: {_v(before.get(alias))} -> {_v(after.get(alias))}")


def rollback(config: ConfigOption = paths.DEMO_CONFIG, overrides: SetOption = None) -> None:
    """Give the champion alias back to the previous champion."""
    from tasks.core.errors import AlignflowError
    from tasks.core.tags import ROLLED_BACK_TAG
    from tasks.orchestration.promotion import promotion_lock
    from tasks.registry.promotion import rollback as rollback_registry
    from tasks.registry.status import alias_versions

    cfg = registry_config(config, overrides)
    registry, name = cfg.registry, cfg.registry.policy_name
    try:
        with promotion_lock(cfg):
            before = alias_versions(name)
            champion = rollback_registry(name, registry)
            after = alias_versions(name)
    except AlignflowError as err:
        fail(str(err))
    demoted = before.get(registry.champion_alias)
    typer.echo(f"{name}: rolled back; champion is now v{champion}.")
    if demoted is not None and demoted != champion:
        typer.echo(f"  v{demoted} demoted and tagged {ROLLED_BACK_TAG}=true")
    typer.echo(f"  {registry.previous_champion_alias}: {_v(after.get(registry.previous_champion_alias))}")


def status(
    config: ConfigOption = paths.DEMO_CONFIG,
    overrides: SetOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
) -> None:
    """The policy model's versions: champion, previous champion, candidates, their gates, lineage and metrics."""
    import mlflow

    from tasks.core.tags import CONFIG_HASH_TAG, DATA_MD5_TAG, GIT_SHA_TAG, PARENT_TAG_PREFIX
    from tasks.registry.status import registry_status

    cfg = registry_config(config, overrides)
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
    typer.echo(_alias_line(aliases, registry.champion_alias, registry.previous_champion_alias,
                           registry.candidate_alias))
    header = ("version", "aliases", "gates", "promotion", "source", "git_sha", "config", "data_md5")
    table = [header]
    for row in rows:
        lineage = row["lineage"]
        promotion = row["promotion"] + (" (rolled back)" if row["rolled_back"] else "")
        run_id = (row["source_run_id"] or row["run_id"])[:8]
        source = f"{row['source_stage']}/{run_id}" if row["source_stage"] else run_id
        table.append((
            f"v{row['version']}", ",".join(row["aliases"]) or "-", row["gate_decision"] or "-", promotion or "-",
            source or "-", lineage.get(GIT_SHA_TAG, "-")[:8], lineage.get(CONFIG_HASH_TAG, "-")[:8],
            lineage.get(DATA_MD5_TAG, "-")[:8],
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
        parents = {k.removeprefix(PARENT_TAG_PREFIX): v for k, v in row["lineage"].items()
                   if k.startswith(PARENT_TAG_PREFIX)}
        if parents:
            typer.echo("    parents: " + "  ".join(f"{k}={v}" for k, v in parents.items()))
        if row["promotion_reason"]:
            typer.echo(f"    promoted {row['promoted_at']}: {row['promotion_reason']}")


def _v(version: str | None) -> str:
    return f"v{version}" if version is not None else "-"


def _alias_line(aliases: dict[str, str], *names: str) -> str:
    return "   ".join(f"{name}: {'v' + aliases[name] if name in aliases else '-'}" for name in names)
