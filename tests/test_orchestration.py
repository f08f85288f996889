"""Prefect retries transient faults of the infrastructure, and nothing else: not bad input, not a bug."""

from __future__ import annotations

import sqlite3

import httpx
import pytest
import requests
from mlflow.exceptions import MlflowException, RestException
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE
from prefect import flow, task

from tasks.core.errors import DataValidationError
from tasks.orchestration.transient import is_transient, retry_if_transient


def _flaky_flow(error: Exception, failures: int) -> tuple[list[int], object]:
    attempts: list[int] = []

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_if_transient)
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


def test_a_bug_or_bad_bytes_is_not_retried(prefect_harness):
    for error in (KeyError("sft"), UnicodeDecodeError("utf-8", b"\xe9", 0, 1, "invalid continuation byte")):
        attempts, result = _flaky_flow(error, failures=5)
        assert type(result) is type(error)
        assert len(attempts) == 1


def _http_error(status: int) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(f"HTTP {status}", response=response)


def _raised_while_handling(cause: BaseException, error: BaseException, *, hide_context: bool = False,
                           as_cause: bool = False) -> BaseException:
    """`error` as Python leaves it when raised while handling `cause`: `from cause`, `from None`, or plainly."""
    try:
        raise cause
    except BaseException as handled:  # noqa: BLE001 - building a chain
        try:
            if hide_context:
                raise error from None
            if as_cause:
                raise error from handled
            raise error
        except BaseException as raised:  # noqa: BLE001
            return raised


@pytest.mark.parametrize("error", [
    ConnectionRefusedError("mlflow server down"),
    TimeoutError("read timed out"),
    requests.ConnectionError("connection reset"),
    httpx.ConnectError("prefect api unreachable"),
    _http_error(503),
    _http_error(429),
    RestException({"error_code": "INTERNAL_ERROR", "message": "db restarting"}),
    MlflowException("busy", error_code=TEMPORARILY_UNAVAILABLE),
    sqlite3.OperationalError("database is locked"),
    # found through the cause chain
    _raised_while_handling(ConnectionResetError("peer reset"), RuntimeError("stage failed"), as_cause=True),
], ids=repr)
def test_transient_faults(error):
    assert is_transient(error)


@pytest.mark.parametrize("error", [
    ValueError("bad value"),
    KeyError("prompt"),
    UnicodeDecodeError("utf-8", b"\xe9", 0, 1, "invalid continuation byte"),
    DataValidationError("data/x.jsonl: line 3 is not valid JSON"),
    _http_error(404),
    _http_error(501),
    MlflowException("no such run"),  # defaults to INTERNAL_ERROR, but nothing answered 5xx
    RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such model"}),
    sqlite3.OperationalError("no such table: runs"),
    _raised_while_handling(ValueError("bug"), RuntimeError("stage failed"), as_cause=True),
    requests.exceptions.SSLError("certificate verify failed"),
    _raised_while_handling(ConnectionError("hub unreachable"),  # bad input raised while handling a network error
                           DataValidationError("data/x.jsonl: line 2 is not valid JSON")),
    _raised_while_handling(ConnectionError("hub unreachable"), ValueError("model.pretrained: no such model"),
                           hide_context=True),  # `raise ... from None`: the network error is not the cause
], ids=repr)
def test_not_transient(error):
    assert not is_transient(error)
