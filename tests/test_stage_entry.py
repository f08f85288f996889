"""A single stage runs on its own from a pipeline's stage results (the entry point `accelerate launch` uses)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from flows.stage_entry import app
from tasks.base_model import run_base_model
from tasks.core import paths
from tasks.core.lineage import Lineage
from tasks.run.contract import StageResult
from tasks.run.tracking import configure_tracking
from tasks.sft import run_sft
from tasks.validate import run_validate
from tests.helpers.configs import reduced_config

LINEAGE = Lineage(git_sha="test", config_hash="test", data_md5="untracked")


def test_dpo_stage_runs_from_pipeline_results(tmp_path, demo_data_dir, tracked):
    overrides = [f"data.dir={demo_data_dir}", f"work_dir={tmp_path / 'work'}",
                 f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", "sft.max_steps=5", "dpo.max_steps=1"]
    cfg = reduced_config(tmp_path, demo_data_dir, "sft.max_steps=5", "dpo.max_steps=1")
    configure_tracking(cfg)
    data = run_validate(cfg, LINEAGE)
    base = run_base_model(cfg, LINEAGE, data=data)
    sft = run_sft(cfg, LINEAGE, base=base, data=data)
    inputs = tmp_path / "pipeline.json"
    inputs.write_text(json.dumps({"base": base.model_dump(), "data": data.model_dump(), "sft": sft.model_dump()}))
    args = ["--config", str(paths.DEMO_CONFIG), "--inputs", str(inputs), "--out", str(tmp_path / "dpo.json")]
    for override in overrides:
        args += ["--set", override]

    ran = CliRunner().invoke(app, ["dpo", *args])
    assert ran.exit_code == 0, ran.output
    result = StageResult.model_validate_json((tmp_path / "dpo.json").read_text())
    assert result.stage == "dpo" and result.metrics["dpo/global_step"] == 1.0

    missing = CliRunner().invoke(app, ["ppo", *args])
    assert missing.exit_code != 0
    assert "lacks the results ['reward']" in missing.output
