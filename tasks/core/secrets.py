"""Keep secrets out of MLflow params, tags and logs.

Credentials reach a run two ways: inside a value (a tracking URI like `postgresql://user:password@host/db`)
or through the environment (`HF_TOKEN`, `MLFLOW_TRACKING_PASSWORD`, `PREFECT_API_AUTH_STRING`, …) whose values
a library may echo in a message. `redact` masks both; `install_log_redaction` applies it to every log record
of this process, whichever logger or handler (Prefect's API handler included) it goes to.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from urllib.parse import unquote

MASK = "***"
# Environment variables whose values are secrets, by name.
_SECRET_NAME = re.compile(r"(TOKEN|PASSWORD|PASSWD|SECRET|API_KEY|ACCESS_KEY|AUTH_STRING|CREDENTIAL|PRIVATE_KEY)",
                          re.IGNORECASE)
# The password in a URL's user info: scheme://user:password@host.
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.\-]*://[^:/@\s]*:)(?P<secret>[^@/\s]+)(?=@)", re.IGNORECASE)
# Token shapes worth catching even when they come from nowhere we know: Hugging Face, OpenAI-style, AWS keys.
_TOKEN_SHAPES = re.compile(r"\b(hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_\-]{20,}|AKIA[0-9A-Z]{16})\b")
_MIN_SECRET_LENGTH = 6  # shorter values would mask ordinary words


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of the environment variables named like secrets, longest first (so none is masked in part)."""
    environ = os.environ if environ is None else environ
    # Names first, then .get: another thread (MLflow's telemetry) may remove a variable while we read them.
    values = {environ.get(name) or "" for name in list(environ) if _SECRET_NAME.search(name)}
    values = {value for value in values if len(value) >= _MIN_SECRET_LENGTH}
    return sorted(values, key=len, reverse=True)


def redact(text: str, environ: Mapping[str, str] | None = None) -> str:
    """`text` with URL passwords, known token shapes and secret environment values replaced by ***."""
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
    text = _TOKEN_SHAPES.sub(MASK, text)
    for value in secret_values(environ):
        text = text.replace(value, MASK)
    return text


def redact_mapping(values: Mapping[str, object]) -> dict[str, object]:
    """A copy with every string redacted, recursing into nested mappings and lists (params, tags, configs)."""
    return {key: _redact_value(value) for key, value in values.items()}


def _redact_value(value: object) -> object:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return redact_mapping(value)
    if isinstance(value, list):
        return [_redact_value(item) for item in value]
    return value


_USER_INFO = re.compile(r"^(?P<scheme>[a-z][a-z0-9+.\-]*://)(?P<user>[^:/@\s]*)(?::(?P<password>[^@/\s]*))?@",
                        re.IGNORECASE)


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """(`uri` without its user info, user, password): credentials belong in the client's settings, not in a URI
    that libraries print (MLflow writes its tracking URI into every "View run at" line)."""
    match = _USER_INFO.match(uri)
    if match is None:
        return uri, None, None
    return match.group("scheme") + uri[match.end():], unquote(match.group("user")) or None, (
        unquote(match.group("password")) if match.group("password") is not None else None)


def strip_credentials(uri: str) -> str:
    """`uri` without its user info: what identifies a server, for cache keys (credentials don't change outputs)."""
    return split_credentials(uri)[0]


def install_log_redaction() -> None:
    """Redact every log record this process creates, once, before any handler formats or ships it."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "alignflow_redacts", False):
        return

    def redacting_factory(*args, **kwargs) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is the logging module's to report, not ours
            return record
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            trace = logging.Formatter().formatException(record.exc_info)
            if redact(trace) != trace:  # the traceback names a secret: ship only its redacted text
                record.exc_text, record.exc_info = redact(trace), None
        return record

    redacting_factory.alignflow_redacts = True
    logging.setLogRecordFactory(redacting_factory)
