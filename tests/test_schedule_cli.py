"""`alignflow schedule`: a bad schedule, config or missing Prefect server fails at once, with nothing scheduled.

Scheduling itself, against a real `prefect server`, is in test_services.py."""

from __future__ import annotations

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings
from typer.testing import CliRunner

from flows.cli import app
from tasks.core import paths

pytestmark = pytest.mark.usefixtures("restored_environment")  # the CLI callback sets environment defaults


def _schedule(*args: str, command: str = "schedule"):
    return CliRunner().invoke(app, [command, "--config", str(paths.DEMO_CONFIG), *args])


@pytest.mark.parametrize("command", ["schedule", "serve"])  # `serve`: the old name, kept for one release
def test_schedule_needs_a_prefect_server_with_a_scheduler(command):
    with temporary_settings(updates={PREFECT_API_URL: None}):
        scheduled = _schedule("--cron", "0 3 * * *", command=command)
    assert scheduled.exit_code == 1
    assert "alignflow schedule needs a Prefect server" in scheduled.output
    assert "PREFECT_API_URL" in scheduled.output


@pytest.mark.parametrize(("args", "message"), [
    (["--cron", "every night"], 'Invalid cron string: "every night"'),
    (["--cron", "0 3 * * *", "--set", "sft.epochs=-1"], "key 'sft.epochs'"),
])
def test_schedule_rejects_a_bad_schedule_or_config_before_scheduling(args, message):
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):  # never contacted
        scheduled = _schedule(*args)
    assert scheduled.exit_code == 1 and message in scheduled.output, scheduled.output


def test_each_command_name_means_one_thing():
    # `serve` named the scheduler, the labelling page and (in MLflow) the model server; now the first two have
    # their own names, and the old ones are hidden aliases that say what replaced them.
    runner = CliRunner()
    listed = runner.invoke(app, ["--help"]).output
    assert "schedule" in listed and " serve " not in listed
    feedback = runner.invoke(app, ["feedback", "--help"]).output
    assert "page" in feedback and " serve " not in feedback
    assert "Old name of `alignflow schedule`" in runner.invoke(app, ["serve", "--help"]).output
    assert "Old name of `alignflow feedback page`" in runner.invoke(app, ["feedback", "serve", "--help"]).output
