"""Credentials never reach MLflow params, tags or logs: redaction of values, environment secrets and log records."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import mlflow
import pytest

from tasks.core.lineage import Lineage
from tasks.core.secrets import install_log_redaction, redact, redact_mapping, strip_credentials
from tasks.run.contract import stage_run
from tasks.run.tracking import configure_tracking
from tests.helpers.configs import reduced_config

PLANTED = "s3cr3t-planted-value"


def test_redact_masks_url_passwords_token_shapes_and_secret_environment_values():
    env = {"HF_TOKEN": "tok-abcdef", "MLFLOW_TRACKING_PASSWORD": PLANTED, "HOME": "/root", "PASSWORD_HINT": "abc"}
    assert redact("postgresql://mlflow:hunter2@db:5432/mlflow", env) == "postgresql://mlflow:***@db:5432/mlflow"
    assert redact("https://user:p%40ss@host/path?x=1", env) == "https://user:***@host/path?x=1"
    assert redact("http://127.0.0.1:5000/api", env) == "http://127.0.0.1:5000/api"  # a port is not a password
    assert redact(f"token hf_{'a' * 30} and sk-{'b' * 24}", env) == "token *** and ***"
    assert redact(f"login {PLANTED} then tok-abcdef", env) == "login *** then ***"
    # Only secret-named variables count, and values too short to be secrets are left alone.
    assert redact("/root abc", env) == "/root abc"


class _VanishingEnvironment(Mapping):
    """Like os.environ read while another thread changes it: a listed name is gone by the time it is looked up."""

    def __init__(self, **values):
        self._values = values

    def __iter__(self):
        yield from [*self._values, "_TELEMETRY_SESSION_TOKEN"]

    def __len__(self):
        return len(self._values) + 1

    def __getitem__(self, name):
        return self._values[name]


def test_a_variable_removed_while_reading_the_environment_is_skipped():
    env = _VanishingEnvironment(HF_TOKEN="tok-abcdef")
    assert redact("tok-abcdef", env) == "***"


def test_redact_mapping_recurses_and_strip_credentials_keeps_the_server():
    nested = {"tracking": {"tracking_uri": "http://u:pw-123456@h:1"}, "list": ["sqlite:///x.db", "a://b:c@d"], "n": 3}
    assert redact_mapping(nested) == {"tracking": {"tracking_uri": "http://u:***@h:1"},
                                      "list": ["sqlite:///x.db", "a://b:***@d"], "n": 3}
    assert strip_credentials("http://u:pw@h:1/api") == "http://h:1/api"
    assert strip_credentials("sqlite:///mlflow.db") == "sqlite:///mlflow.db"


def test_log_records_are_redacted_for_every_handler(monkeypatch, caplog):
    monkeypatch.setenv("ALIGNFLOW_TEST_API_KEY", PLANTED)
    factory = logging.getLogRecordFactory()
    try:
        install_log_redaction()
        install_log_redaction()  # idempotent: one wrapper, not two
        logger = logging.getLogger("alignflow.test")
        with caplog.at_level(logging.INFO, logger="alignflow.test"):
            logger.info("connecting with key %s to %s", PLANTED, "http://bob:pw-99999@host/")
            try:
                raise RuntimeError(f"server refused {PLANTED}")
            except RuntimeError:
                logger.exception("failed")
        text = caplog.text
    finally:
        logging.setLogRecordFactory(factory)
    assert PLANTED not in text and "pw-99999" not in text
    assert "connecting with key *** to http://bob:***@host/" in text
    assert "RuntimeError: server refused ***" in text  # the traceback survives, redacted


def test_stage_runs_log_params_and_tags_with_credentials_masked(tmp_path, demo_data_dir, tracked, monkeypatch):
    cfg = reduced_config(tmp_path, demo_data_dir)
    monkeypatch.setenv("ALIGNFLOW_TEST_TOKEN", PLANTED)
    # A config value carrying a credential (as a database tracking URI would), and a tag carrying the env secret.
    cfg = cfg.model_copy(update={"name": f"postgresql://u:{PLANTED}@db/x"})
    lineage = Lineage(git_sha="test", config_hash="test", data_md5="untracked",
                      data_tags=(("alignflow.note", PLANTED),))
    configure_tracking(cfg)
    with stage_run("probe", cfg, lineage, cache_key="k" * 64, sections=("name",), code="tasks.run.contract") as run:
        pass
    recorded = mlflow.get_run(run.info.run_id).data
    assert recorded.params["name"] == "postgresql://u:***@db/x"
    assert recorded.tags["alignflow.note"] == "***"
    assert PLANTED not in f"{recorded.params} {recorded.tags}"


@pytest.mark.parametrize("section", ["dispatch", "tracking"])
def test_where_a_run_executes_or_logs_does_not_change_the_config_hash(tmp_path, demo_data_dir, section):
    base = reduced_config(tmp_path, demo_data_dir)
    change = "dispatch.pools.sft=gpu" if section == "dispatch" else "tracking.experiment=other"
    assert reduced_config(tmp_path, demo_data_dir, change).section_hash() == base.section_hash()
    assert reduced_config(tmp_path, demo_data_dir, "sft.epochs=3").section_hash() != base.section_hash()


def test_credentials_in_a_server_uri_become_mlflow_settings_not_part_of_the_uri(monkeypatch):
    from tasks.run.tracking import use_tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    previous = mlflow.get_tracking_uri()
    try:
        # MLflow prints its tracking URI ("View run at …"): the URI it keeps must hold no password.
        assert use_tracking_uri("http://bob:p%40ss@127.0.0.1:9/") == mlflow.get_tracking_uri() == "http://127.0.0.1:9/"
        assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("bob", "p@ss")
        assert use_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"  # a database URI keeps its own credentials
    finally:
        mlflow.set_tracking_uri(previous)
