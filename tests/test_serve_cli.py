"""`alignflow serve`: a bad schedule, config or missing Prefect server fails at once, with nothing served.

Serving itself, against a real `prefect server`, is in test_services.py."""

from __future__ import annotations

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings
from typer.testing import CliRunner

from flows.cli import app
from tasks.core import paths

pytestmark = pytest.mark.usefixtures("restored_environment")  # the CLI callback sets environment defaults


def _serve(*args: str):
    return CliRunner().invoke(app, ["serve", "--config", str(paths.DEMO_CONFIG), *args])


def test_serve_needs_a_prefect_server_with_a_scheduler():
    with temporary_settings(updates={PREFECT_API_URL: None}):
        served = _serve("--cron", "0 3 * * *")
    assert served.exit_code == 1
    assert "needs a Prefect server" in served.output and "PREFECT_API_URL" in served.output


@pytest.mark.parametrize(("args", "message"), [
    (["--cron", "every night"], 'Invalid cron string: "every night"'),
    (["--cron", "0 3 * * *", "--set", "sft.epochs=-1"], "key 'sft.epochs'"),
])
def test_serve_rejects_a_bad_schedule_or_config_before_serving(args, message):
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):  # never contacted
        served = _serve(*args)
    assert served.exit_code == 1 and message in served.output, served.output
