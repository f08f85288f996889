"""A feedback round's ends, for the tests that label in between: an export from a trained tiny policy (CLI), and
the import (CLI) checked as a DVC data version holding exactly the labelled choices."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from tasks.feedback.records import read_pairs


def export_from_tiny_policy(root: Path, n: int = 24) -> tuple[Path, list[str], Path, str]:
    """A DVC repository with the demo data, a tiny SFT policy in MLflow, and `alignflow feedback export` of two
    samples of it on `n` training prompts: (root, the CLI's config arguments, the export folder, the model URI)."""
    from tasks.base_model import run_base_model
    from tasks.run.tracking import configure_tracking
    from tasks.sft import run_sft
    from tasks.validate import run_validate
    from tests.helpers.configs import reduced_config
    from tests.helpers.dvc import dvc_repo_with_tracked_data
    from tests.helpers.rl import LINEAGE

    data_dir = dvc_repo_with_tracked_data(root / "repo")
    overrides = [f"data.dir={data_dir}", f"work_dir={root / 'work'}",
                 f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}", "sft.max_steps=30"]
    cfg = reduced_config(root, data_dir, *overrides[3:])
    configure_tracking(cfg)
    data = run_validate(cfg, LINEAGE)
    sft = run_sft(cfg, LINEAGE, base=run_base_model(cfg, LINEAGE, data=data), data=data)
    args = ["--config", "configs/pipelines/demo.yaml", *(f"--set={o}" for o in overrides)]
    result = cli("feedback", "export", "--model", sft.model_uri, "--n", str(n), "--max-new-tokens", "16",
                 "--out", str(root / "export"), *args)
    assert result.exit_code == 0, result.output
    return root, args, root / "export", sft.model_uri


def cli(*argv: str):
    from flows.cli import app

    return CliRunner().invoke(app, list(argv))


def import_labels(root: Path, args: list[str], labels: Path, export: Path, out: str, *extra: str):
    """`alignflow feedback import` of `labels` into root/repo/<out>: (its output, the new data folder)."""
    result = cli("feedback", "import", str(labels), "--pairs", str(export / "pairs.jsonl"),
                 "--out", str(root / "repo" / out), *extra, *args)
    assert result.exit_code == 0, result.output
    return result.output, root / "repo" / out


def check_version(folder: Path, export: Path, expected_chosen: dict[str, str], demo_pairs: int) -> dict:
    """The folder is a DVC data version whose preferences_train is the demo pairs, then the labelled ones, each
    chosen answer the one the annotator picked (found back through its source); returns its feedback manifest."""
    pairs = read_pairs(export / "pairs.jsonl")
    rows = [json.loads(line) for line in (folder / "preferences_train.jsonl").read_text().splitlines()]
    new = rows[demo_pairs:]
    assert len(rows) == demo_pairs + len(expected_chosen) and {r["pair_id"] for r in new} == set(expected_chosen)
    for row in new:
        pair = pairs[row["pair_id"]]
        picked = expected_chosen[row["pair_id"]]
        assert row["chosen"] == (pair.answer_a if picked == "A" else pair.answer_b)
        assert row["chosen_source"] == (pair.source_a if picked == "A" else pair.source_b)
        assert row["rejected"] == (pair.answer_b if picked == "A" else pair.answer_a)
    recorded = yaml.safe_load(folder.with_name(folder.name + ".dvc").read_text())["outs"][0]["md5"]
    from tasks.core.lineage import dvc_data_md5

    assert dvc_data_md5(folder) == recorded  # DVC vouches for the files: this md5 is the lineage's data version
    manifest = json.loads((folder / "feedback_manifest.json").read_text())
    assert manifest["kind"] == "alignflow-feedback-dataset" and manifest["tally"]["kept"] == len(expected_chosen)
    return manifest


def demo_pairs(root: Path) -> int:
    """How many preference pairs the demo data of root/repo holds (an import appends after them)."""
    return len((root / "repo" / "data" / "preferences_train.jsonl").read_text().splitlines())
