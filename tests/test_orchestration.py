"""Prefect retries transient failures but never bad input."""

from __future__ import annotations

import pytest
from prefect import flow, task

from tasks.core.errors import DataValidationError
from tasks.orchestration.stage_tasks import _retry_if_transient


def _flaky_flow(error: Exception, failures: int) -> tuple[list[int], object]:
    attempts: list[int] = []

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=_retry_if_transient)
    def stage():
        attempts.append(1)
        if len(attempts) <= failures:
            raise error
        return "done"

    @flow
    def pipeline():
        return stage()

    try:
        return attempts, pipeline()
    except Exception as raised:  # noqa: BLE001 - the test inspects what came out
        return attempts, raised


def test_transient_errors_are_retried(prefect_harness):
    attempts, result = _flaky_flow(ConnectionError("mlflow server restarting"), failures=2)
    assert result == "done"
    assert len(attempts) == 3


def test_bad_data_is_not_retried(prefect_harness):
    attempts, result = _flaky_flow(DataValidationError("data/x.jsonl: row 3 is empty"), failures=5)
    assert isinstance(result, DataValidationError)
    assert len(attempts) == 1


@pytest.mark.parametrize("failures", [3])
def test_retries_are_bounded(prefect_harness, failures):
    attempts, result = _flaky_flow(ConnectionError("down"), failures=failures)
    assert isinstance(result, ConnectionError)
    assert len(attempts) == 3
