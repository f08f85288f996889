"""Prefect around the registry: the champion read fresh on every run, and one gate decision at a time."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect import task
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import get_current_settings

from tasks.core.config import PipelineConfig
from tasks.core.lineage import Lineage
from tasks.core.locks import file_lock
from tasks.orchestration.transient import retry_if_transient
from tasks.registry.champion import current_champion, unchanged_since_champion
from tasks.run.contract import StageResult

_LEASE_SECONDS = 60  # how long a dead holder keeps the slot on a Prefect server


@task(name="current_champion", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_if_transient)
def champion_task(cfg: PipelineConfig) -> StageResult | None:
    """Never cached: the registry may have changed since the last run."""
    return current_champion(cfg)


@task(name="unchanged_since_champion", retries=2, retry_delay_seconds=5,
      retry_condition_fn=retry_if_transient)
def unchanged_task(cfg: PipelineConfig, lineage: Lineage) -> str | None:
    """Never cached: the registry may have changed since the last run."""
    return unchanged_since_champion(cfg, lineage.data_md5, lineage.config_hash)


@contextmanager
def promotion_lock(cfg: PipelineConfig) -> Iterator[None]:
    """One gate decision at a time per registered policy.

    On a Prefect server: a global concurrency limit of one slot, across every pipeline run on that server; the
    server revokes the lease of a holder that died once it expires (`_LEASE_SECONDS`, renewed while the holder
    lives). The ephemeral server of a local run dies with its run, and a lease held in its memory would then
    hold the slot forever; local runs lock a file in the work folder instead, which the OS releases with the
    process, even after kill -9.
    """
    name = f"alignflow-promote-{cfg.registry.policy_name}"
    if not get_current_settings().api.url:
        with file_lock(cfg.work_dir / f"{name}.lock", "another run is deciding its gates"):
            yield
        return
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            except ObjectAlreadyExists:  # another run created it meanwhile
                pass
    with concurrency(name, occupy=1, strict=True, lease_duration=_LEASE_SECONDS):
        yield
