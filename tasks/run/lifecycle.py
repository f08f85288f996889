"""How an MLflow run ends: FINISHED, FAILED, or KILLED when its process was stopped, even by kill -9.

Every run alignflow opens records the process that owns it (host, pid and the process's start time, so a reused
pid is not mistaken for it). A run stopped by a signal (SIGINT, or SIGTERM, which Prefect turns into an
exception) ends KILLED with the reason as a tag. A process killed with -9 cannot end its runs; the next
`alignflow run`, or `alignflow runs reap`, finds RUNNING runs whose process is gone and ends them KILLED.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import mlflow
import psutil
from mlflow.entities import RunStatus

from tasks.core.tags import TAG_PREFIX

PROCESS_TAG = f"{TAG_PREFIX}process"  # "<host> <pid> <process start time>"
ENDED_BY_TAG = f"{TAG_PREFIX}ended_by"  # why a run ended KILLED
_STALE_ELSEWHERE_S = 300  # a record from another host older than this is taken to be dead
log = logging.getLogger(__name__)


def process_tag() -> dict[str, str]:
    return {PROCESS_TAG: f"{socket.gethostname()} {os.getpid()} {psutil.Process().create_time():.2f}"}


@contextmanager
def tracked_run(**start_run: object) -> Iterator[mlflow.ActiveRun]:
    """`mlflow.start_run(**start_run)` that records its process, and ends KILLED when the process is being
    stopped (KeyboardInterrupt, or another BaseException that is not an Exception, such as Prefect's
    TerminationSignal for SIGTERM) instead of FAILED, which is for errors."""
    tags = {**(start_run.pop("tags", None) or {}), **process_tag()}
    run = mlflow.start_run(tags=tags, **start_run)
    try:
        yield run
    except Exception:
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    except BaseException as stop:
        _end_killed(run.info.run_id, f"{type(stop).__name__} in process {os.getpid()}: the run was stopped")
        raise
    mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))


def _end_killed(run_id: str, reason: str) -> None:
    try:
        mlflow.set_tag(ENDED_BY_TAG, reason)
    finally:
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
    log.warning("MLflow run %s ended KILLED: %s", run_id, reason)


def reap_dead_runs(experiment_ids: list[str]) -> list[str]:
    """End as KILLED every RUNNING run of these experiments whose recorded process on this host is gone.

    Runs recorded on another host are left alone: this host cannot see whether their process lives.
    Returns the ids of the runs it ended.
    """
    client = mlflow.MlflowClient()
    host = socket.gethostname()
    running = client.search_runs(experiment_ids, filter_string="attributes.status = 'RUNNING'",
                                 max_results=5000)
    reaped = []
    for run in running:
        recorded = run.data.tags.get(PROCESS_TAG)
        if recorded is None or not process_gone(recorded):
            continue
        reason = (f"reaped: process {recorded.split()[1]} on {host} was gone (killed without a chance to end its run), "
                  f"found at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")
        client.set_tag(run.info.run_id, ENDED_BY_TAG, reason)
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
        log.warning("MLflow run %s (%s) ended KILLED: %s", run.info.run_id, run.info.run_name, reason)
        reaped.append(run.info.run_id)
    return reaped


def process_gone(recorded: str, age: float | None = None) -> bool:
    """Whether the process a `PROCESS_TAG` value names has ended. On this host the OS says; a record from another
    host counts as gone only when its `age` (seconds) is given and beyond `_STALE_ELSEWHERE_S`."""
    try:
        host, pid, started = recorded.split()
        pid, started = int(pid), float(started)
    except ValueError:
        return False  # not ours to judge
    if host != socket.gethostname():
        return age is not None and age > _STALE_ELSEWHERE_S
    return not _alive(pid, started)


def _alive(pid: int, started: float) -> bool:
    """Whether the process still runs: the same pid with another start time is not it (the start time moves by
    up to a second when the clock is stepped); a process we may not inspect is taken to be alive."""
    try:
        process = psutil.Process(pid)
        return abs(process.create_time() - started) < 1.0 and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
