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
    result = run_validate(cfg, LINEAGE)

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
    with pytest.raises(DataValidationError, match=r"sft_train\.jsonl[\s\S]*expect_column_values_to_match_regex"
                                                  r"[\s\S]*row 10"):
        run_validate(cfg, LINEAGE)
    failed = mlflow.search_runs(filter_string="tags.`alignflow.stage` = 'validate'", output_format="list")[0]
    assert failed.info.status == "FAILED"
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(failed.info.run_id, "validation")}
    assert "validation/report.html" in names


def test_the_tiny_base_model_is_made_from_validated_data_only(tmp_path, tracked):
    """Validation comes first: the tiny model's tokenizer needs validated data, then checks token lengths with it."""
    cfg = reduced_config(tmp_path, _data_with_an_empty_completion(tmp_path), "validation.on_failure=quarantine")
    configure_tracking(cfg)
    with pytest.raises(ValueError, match="run the validate stage first"):
        run_base_model(cfg, LINEAGE)
    data = run_validate(cfg, LINEAGE)
    assert "validate/sft_train/rows" in data.metrics  # validated without a tokenizer: no token columns yet
    run_base_model(cfg, LINEAGE, data=data)

    # The length expectation runs with the new tokenizer, on the validated files, and names file and rows.
    short = reduced_config(tmp_path, Path(cfg.data.dir), "validation.on_failure=quarantine", "validation.max_length=8")
    with pytest.raises(DataValidationError, match=r"sft_train[\s\S]*completion \+ EOS is at most 8 tokens"
                                                  r"[\s\S]*row \d+"):
        run_base_model(short, LINEAGE, data=run_validate(short, LINEAGE))
    failed = mlflow.search_runs(filter_string="tags.`alignflow.stage` = 'base_model' and attributes.status = 'FAILED'",
                                output_format="list")
    assert len(failed) == 1
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(failed[0].info.run_id, "validation")}
    assert "validation/report.html" in names
