"""Prefect around the registry: the champion read fresh on every run, and one gate decision at a time."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect import task
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists

from tasks.core.config import PipelineConfig
from tasks.core.lineage import Lineage
from tasks.registry.champion import current_champion, unchanged_since_champion
from tasks.run.contract import StageResult


@task(name="current_champion", retries=2, retry_delay_seconds=5)
def champion_task(cfg: PipelineConfig) -> StageResult | None:
    """Never cached: the registry may have changed since the last run."""
    return current_champion(cfg)


@task(name="unchanged_since_champion", retries=2, retry_delay_seconds=5)
def unchanged_task(cfg: PipelineConfig, lineage: Lineage) -> str | None:
    """Never cached: the registry may have changed since the last run."""
    return unchanged_since_champion(cfg, lineage.data_md5, lineage.config_hash)


@contextmanager
def promotion_lock(cfg: PipelineConfig) -> Iterator[None]:
    """One gate decision at a time per registered policy, across every pipeline run on this Prefect server.

    A Prefect global concurrency limit of one slot: its lease expires if a holder dies, so a crashed run
    cannot wedge the registry.
    """
    name = f"alignflow-promote-{cfg.registry.policy_name}"
    with get_client(sync_client=True) as client:
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        except ObjectAlreadyExists:
            pass
    with concurrency(name, occupy=1, strict=True):
        yield
