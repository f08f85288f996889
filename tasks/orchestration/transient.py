"""Which failures are worth another try: only faults of the infrastructure that may be gone a moment later.

Bad input, a bug, a crash or a cancelled run fails the same way every time, so retrying it only delays the error
(and a UnicodeDecodeError retried three times cost a user 15 s before this). The rule is an allow-list.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import httpx
import requests
from mlflow.exceptions import MlflowException, RestException

from tasks.core.errors import AlignflowError

# MLflow error codes a server uses for "try again later".
_TRANSIENT_MLFLOW_CODES = {"TEMPORARILY_UNAVAILABLE", "RESOURCE_EXHAUSTED", "REQUEST_LIMIT_EXCEEDED"}
_LOCK_MESSAGES = ("database is locked", "lock timeout", "could not obtain lock", "deadlock detected")


def is_transient(error: BaseException) -> bool:
    """Network errors, a server's 5xx (or 429) answer, a lock timeout: here, or in the cause chain up to an error of
    ours (bad input raised while handling a network error is still bad input)."""
    for cause in cause_chain(error):
        if isinstance(cause, AlignflowError):
            return False
        if _transient_itself(cause):
            return True
    return False


def retry_if_transient(task, task_run, state) -> bool:
    """Retry only faults of the infrastructure (`is_transient`); a crash or cancellation
    (the run was killed or interrupted) is never retried."""
    if not state.is_failed():
        return False
    try:
        state.result()
    except Exception as error:  # noqa: BLE001 - classified, not swallowed: the state keeps it
        return is_transient(error)
    return False


def cause_chain(error: BaseException | None) -> Iterator[BaseException]:
    """The error, then what it was raised from or while handling, as Python's traceback shows them (`raise … from
    None` hides the context)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)


def _transient_itself(error: BaseException) -> bool:
    if isinstance(error, requests.exceptions.SSLError):
        return False  # a certificate or protocol mismatch stays until someone fixes it
    if isinstance(error, (ConnectionError, TimeoutError, requests.ConnectionError, requests.Timeout,
                          httpx.TransportError)):
        return True
    if isinstance(error, (requests.HTTPError, httpx.HTTPStatusError)) and error.response is not None:
        return _retryable_status(error.response.status_code)
    if isinstance(error, RestException) and _retryable_status(error.get_http_status_code()):
        return True  # the tracking server answered 5xx (a plain MlflowException defaults to 500: not that)
    if isinstance(error, MlflowException):
        return error.error_code in _TRANSIENT_MLFLOW_CODES
    # sqlite3's and SQLAlchemy's OperationalError: a lock held by another writer is released soon.
    if isinstance(error, sqlite3.OperationalError) or type(error).__name__ == "OperationalError":
        return any(message in str(error).lower() for message in _LOCK_MESSAGES)
    return False


def _retryable_status(status: int | None) -> bool:
    return status is not None and (status == 429 or 500 <= status < 600) and status != 501
