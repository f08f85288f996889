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
from tasks.orchestration.stage_tasks import _retry_if_transient
from tasks.orchestration.transient import is_transient


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


def test_a_bug_or_bad_bytes_is_not_retried(prefect_harness):
    for error in (KeyError("sft"), UnicodeDecodeError("utf-8", b"\xe9", 0, 1, "invalid continuation byte")):
        attempts, result = _flaky_flow(error, failures=5)
        assert type(result) is type(error)
        assert len(attempts) == 1


def _http_error(status: int) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(f"HTTP {status}", response=response)


def _wrapped(cause: BaseException) -> RuntimeError:
    try:
        raise cause
    except BaseException as err:  # noqa: BLE001 - building a chain
        try:
            raise RuntimeError("stage failed") from err
        except RuntimeError as outer:
            return outer


def _bad_input_while_offline() -> DataValidationError:
    try:
        raise ConnectionError("hub unreachable")
    except ConnectionError:
        try:
            raise DataValidationError("data/x.jsonl: line 2 is not valid JSON")
        except DataValidationError as err:
            return err


def _hidden_context() -> ValueError:
    try:
        raise ConnectionError("hub unreachable")
    except ConnectionError:
        try:
            raise ValueError("model.pretrained: no such model") from None
        except ValueError as err:
            return err


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
    _wrapped(ConnectionResetError("peer reset")),  # found through the cause chain
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
    _wrapped(ValueError("bug")),
    requests.exceptions.SSLError("certificate verify failed"),
    _bad_input_while_offline(),  # bad input raised while handling a network error
    _hidden_context(),  # `raise ... from None`: the network error behind it is not the cause
], ids=repr)
def test_not_transient(error):
    assert not is_transient(error)
