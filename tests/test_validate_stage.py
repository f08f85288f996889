"""The validate stage logs its report and quarantined rows to MLflow and hands on the cleaned files."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from tasks.base_model import run_base_model
from tasks.core.errors import DataValidationError
from tasks.core.lineage import Lineage
from tasks.data.demo import write_demo_data
from tasks.data.readers import read_rows
from tasks.run.tracking import configure_tracking
from tasks.validate import run_validate
from tests.helpers.configs import reduced_config

LINEAGE = Lineage(git_sha="test", config_hash="test", data_md5="untracked")


def _data_with_an_empty_completion(tmp_path: Path) -> Path:
    data_dir = tmp_path / "data"
    write_demo_data(data_dir)
    path = data_dir / "sft_train.jsonl"
    rows = path.read_text().splitlines()
    row = json.loads(rows[9])
    row["completion"] = "   "
    rows[9] = json.dumps(row)
    path.write_text("\n".join(rows) + "\n")
    return data_dir


def test_quarantine_moves_bad_rows_aside_and_logs_them(tmp_path, tracked):
    cfg = reduced_config(tmp_path, _data_with_an_empty_completion(tmp_path), "validation.on_failure=quarantine")
    configure_tracking(cfg)
    base = run_base_model(cfg, LINEAGE)
    result = run_validate(cfg, LINEAGE, base=base)

    assert result.metrics["validate/sft_train/quarantined"] == 1.0
    clean = read_rows(Path(result.outputs["sft_train"]))
    assert len(clean) == 480 and (clean["completion"].str.strip() != "").all()
    logged = mlflow.artifacts.download_artifacts(f"runs:/{result.run_id}/validation", dst_path=tmp_path / "dl")
    lines = (Path(logged) / "quarantine" / "sft_train.jsonl").read_text().splitlines()
    quarantined = [json.loads(line) for line in lines]
    assert [row["row"] for row in quarantined] == [10]
    assert quarantined[0]["_failed_expectations"]


def test_fail_mode_names_the_file_row_and_expectation_and_logs_the_report(tmp_path, tracked):
    cfg = reduced_config(tmp_path, _data_with_an_empty_completion(tmp_path))
    configure_tracking(cfg)
    base = run_base_model(cfg, LINEAGE)
    with pytest.raises(DataValidationError, match=r"sft_train\.jsonl[\s\S]*expect_column_values_to_match_regex"
                                                  r"[\s\S]*row 10"):
        run_validate(cfg, LINEAGE, base=base)
    failed = mlflow.search_runs(filter_string="tags.`alignflow.stage` = 'validate'", output_format="list")[0]
    assert failed.info.status == "FAILED"
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(failed.info.run_id, "validation")}
    assert "validation/report.html" in names
