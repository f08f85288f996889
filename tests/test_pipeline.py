"""The whole flow under Prefect's test harness, on a temporary MLflow store and the DVC-tracked demo data."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from flows.pipeline import alignment_pipeline
from tasks.core import paths
from tasks.core.errors import DataValidationError
from tasks.data.demo import write_demo_data
from tasks.registry.versions import RegistryError
from tests.helpers.dvc import dvc_repo_with_tracked_data

STAGE_RUNS = {"base_model", "validate", "sft", "reward", "evaluate-sft", "dpo", "evaluate-dpo", "ppo", "evaluate-ppo",
              "rloo", "evaluate-rloo", "promote"}
LINEAGE_TAGS = ("alignflow.git_sha", "alignflow.config_hash", "alignflow.dvc_data_md5",
                "alignflow.prefect_flow_run_id")


def _check_what_the_mlflow_ui_shows(client: MlflowClient, parent, children, results) -> None:
    """What makes the UI readable without a guide: the experiment opens on its runs, evaluate runs name their
    method, logged models are named and carry their eval metrics, datasets are inputs, the parent run describes
    itself."""
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    for method in ("sft", "dpo", "ppo", "rloo"):
        run = children[f"evaluate-{method}"]
        assert run.data.params["method"] == method and run.data.tags["method"] == method
    model = mlflow.get_logged_model(results["dpo"].model_uri.removeprefix("models:/"))
    assert model.name == "demo-dpo"
    linked = {m.key: m.value for m in model.metrics}
    assert linked["eval/harmful_refusal_rate"] == children["evaluate-dpo"].data.metrics["eval/harmful_refusal_rate"]
    inputs = {(d.dataset.name, d.dataset.digest, {t.key: t.value for t in d.tags}["mlflow.data.context"])
              for d in children["sft"].inputs.dataset_inputs}
    assert ("sft_train", results["data"].output_hashes["sft_train"], "training") in inputs
    eval_inputs = {d.dataset.name for d in children["evaluate-dpo"].inputs.dataset_inputs}
    assert eval_inputs == {"sft_eval", "eval_prompts"}
    note = client.get_run(parent.info.run_id).data.tags["mlflow.note.content"]
    dpo_row = next(line for line in note.splitlines() if line.startswith("| dpo |"))
    refusal = children["evaluate-dpo"].data.metrics["eval/harmful_refusal_rate"]
    assert dpo_row.split(" | ")[1] == f"{refusal:.2f}" and dpo_row.endswith("| failed |")
    assert "Promoted: nothing" in note and "evaluation view" in note


def _overrides(tmp_path, data_dir):
    return [f"data.dir={data_dir}", f"work_dir={tmp_path / 'work'}", f"reports_dir={tmp_path / 'reports'}",
            f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", "sft.epochs=2", "reward.max_steps=10",
            "dpo.max_steps=4", "ppo.steps=2", "ppo.rollout_batch_size=8", "ppo.mini_batch_size=4",
            "ppo.max_new_tokens=8", "rloo.max_steps=2", "rloo.batch_size=8", "rloo.max_new_tokens=8",
            "eval.max_new_tokens=12"]


def _runs(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name("alignflow")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


@pytest.fixture(scope="module")
def tracked_data_dir(tmp_path_factory):
    """The demo data as data.dvc tracks it, in a DVC repository of its own, so lineage gets a real DVC md5."""
    return dvc_repo_with_tracked_data(tmp_path_factory.mktemp("dvc-repo"))


def test_pipeline_logs_runs_metrics_lineage_and_registers_a_candidate(
    prefect_harness, tracked, tracked_data_dir, tmp_path
):
    overrides = _overrides(tmp_path, tracked_data_dir)
    results = alignment_pipeline(str(paths.DEMO_CONFIG), overrides)
    client = MlflowClient()
    runs = _runs(client)

    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == STAGE_RUNS

    # Lineage on the parent and on every stage run.
    dvc_md5 = yaml.safe_load((paths.PROJECT_ROOT / "data.dvc").read_text())["outs"][0]["md5"]
    for run in [parent, *children.values()]:
        for tag in LINEAGE_TAGS:
            assert run.data.tags.get(tag), f"{run.info.run_name} lacks {tag}"
        assert run.data.tags["alignflow.dvc_data_md5"] == dvc_md5
        assert len(run.data.tags["alignflow.git_sha"]) == 40
    # The resolved config is the parent's params and artifact.
    assert parent.data.params["sft.epochs"] == "2.0"
    assert parent.data.params["model.tiny.hidden_size"] == "64"
    config_file = mlflow.artifacts.download_artifacts(f"runs:/{parent.info.run_id}/config.yaml", dst_path=tmp_path)
    config_artifact = yaml.safe_load(Path(config_file).read_text())
    assert config_artifact["sft"]["epochs"] == 2.0

    # A training curve, eval metrics and the validation report.
    losses = client.get_metric_history(children["sft"].info.run_id, "sft/loss")
    assert len(losses) >= 3 and losses[-1].value < losses[0].value
    eval_metrics = children["evaluate-sft"].data.metrics
    for name in ("eval/perplexity", "eval/harmful_refusal_rate", "eval/benign_refusal_rate"):
        assert name in eval_metrics
    assert eval_metrics["eval/perplexity"] > 1.0
    artifacts = {a.path for a in client.list_artifacts(children["validate"].info.run_id, "validation")}
    assert {"validation/report.json", "validation/report.html"} <= artifacts
    generations = mlflow.artifacts.load_dict(f"runs:/{children['evaluate-sft'].info.run_id}/generations.json")
    assert {"prompt", "response", "refused", "harmful"} <= set(generations["columns"])

    # Every candidate is measured against the SFT baseline, with a reward model and a reference.
    dpo_metrics = children["evaluate-dpo"].data.metrics
    for name in ("eval/reward_mean", "eval/kl_to_reference", "eval/response_tokens"):
        assert name in dpo_metrics and name in eval_metrics
    assert 0.0 <= dpo_metrics["eval/win_rate_vs_sft"] <= 1.0
    assert eval_metrics["eval/kl_to_reference"] == pytest.approx(0.0, abs=1e-4), "the SFT model is its own reference"
    assert 0.0 <= children["reward"].data.metrics["reward/accuracy"] <= 1.0
    # Side by side on the parent run.
    assert {"sft/harmful_refusal_rate", "dpo/harmful_refusal_rate"} <= set(parent.data.metrics)
    # The seed's comparison: a row per method, its stages' time, and each rate with its count and interval.
    comparison = mlflow.artifacts.load_dict(f"runs:/{parent.info.run_id}/comparison/comparison.json")
    assert [row["method"] for row in comparison] == ["sft", "dpo", "ppo", "rloo"]
    for row in comparison:
        refusal = row["harmful_refusal"]
        assert refusal["n"] == eval_metrics["eval/harmful_prompts"] and refusal["value"] == pytest.approx(
            children[f"evaluate-{row['method']}"].data.metrics["eval/harmful_refusal_rate"])
        assert refusal["ci95"][0] <= refusal["value"] <= refusal["ci95"][1] and row["wall_seconds"] > 0
    # ... and its report, in reports_dir and on the parent run (tests/test_mlflow_ui.py looks at it in a browser).
    report = (tmp_path / "reports" / "demo-comparison.html").read_text(encoding="utf-8")
    assert 'id="summary-plot"' in report and 'id="curves-plot"' in report and "sft → reward → ppo" in report
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "comparison")}
    assert {"comparison/demo-comparison.html", "comparison/demo-comparison.png", "comparison/comparison.json"} <= logged

    # SFT and DPO models are registered versions carrying lineage and eval metrics; `candidate` is the newest.
    versions = {v.tags["alignflow.source_stage"]: v for v in client.search_model_versions("name='alignflow-policy'")}
    assert set(versions) == {"sft", "dpo", "ppo", "rloo"}
    sft_version, dpo_version = versions["sft"], versions["dpo"]
    assert str(sft_version.version) == results["register-sft"].outputs["version"]
    assert sft_version.tags["alignflow.source_run_id"] == children["sft"].info.run_id
    assert sft_version.tags["alignflow.dvc_data_md5"] == dvc_md5
    assert float(sft_version.tags["alignflow.eval/harmful_refusal_rate"]) == pytest.approx(
        eval_metrics["eval/harmful_refusal_rate"], abs=1e-5)
    assert results["sft"].model_uri == sft_version.source
    assert len(client.search_model_versions("name='alignflow-reward'")) == 1

    # Four DPO steps, or two PPO or RLOO steps, cannot teach refusals: all fail their gates, unpromoted, saying why.
    assert dpo_version.tags["alignflow.gate_decision"] == "fail"
    assert versions["ppo"].tags["alignflow.gate_decision"] == "fail"
    assert versions["rloo"].tags["alignflow.gate_decision"] == "fail"
    assert "eval/harmful_refusal_rate" in results["promote"].outputs["summary"]
    assert results["promote"].outputs["promoted"] == ""
    assert "champion" not in client.get_registered_model("alignflow-policy").aliases
    # The last registered (rloo) held `candidate` until its gates failed; the descriptions say why in a line.
    assert "candidate" not in client.get_registered_model("alignflow-policy").aliases
    described = {stage: client.get_model_version("alignflow-policy", v.version).description
                 for stage, v in versions.items()}
    assert described["dpo"].startswith("DPO: failed harmful_refusal_rate ")
    assert described["sft"].startswith("SFT: not gated yet")  # the baseline, registered but not a candidate

    _check_what_the_mlflow_ui_shows(client, parent, children, results)

    # A second run with nothing changed reuses every stage and registers nothing new.
    again = alignment_pipeline(str(paths.DEMO_CONFIG), overrides)
    second_parent = [r for r in _runs(client) if "mlflow.parentRunId" not in r.data.tags][-1]
    assert second_parent.info.run_id != parent.info.run_id
    for stage in (*STAGE_RUNS, "register-sft", "register-dpo", "register-ppo", "register-rloo"):
        assert second_parent.data.tags[f"alignflow.cache.{stage}"] == f"reused:{results[_result_name(stage)].run_id}"
    assert again["sft"].run_id == results["sft"].run_id
    assert len(client.search_model_versions("name='alignflow-policy'")) == 4

    # A pipeline of another base model against the same store: the champion it would be judged beside is not
    # its kind, and it stops before anything runs, naming that champion.
    client.set_registered_model_alias("alignflow-policy", "champion", dpo_version.version)
    parents_before = len([r for r in _runs(client) if "mlflow.parentRunId" not in r.data.tags])
    with pytest.raises(RegistryError, match=rf"champion alignflow-policy v{dpo_version.version} was trained from "
                                            r"base model tiny \(\w+\); this pipeline trains tiny \(\w+\)"):
        alignment_pipeline(str(paths.DEMO_CONFIG), [*overrides, "model.tiny.hidden_size=32"])
    assert len([r for r in _runs(client) if "mlflow.parentRunId" not in r.data.tags]) == parents_before


def _result_name(stage: str) -> str:
    return {"base_model": "base", "validate": "data"}.get(stage, stage)


def test_invalid_data_stops_the_flow_before_training(prefect_harness, tracked, tmp_path):
    data_dir = tmp_path / "data"
    write_demo_data(data_dir)
    rows = (data_dir / "preferences_train.jsonl").read_text().splitlines()
    broken = json.loads(rows[3])
    broken["rejected"] = broken["chosen"]
    rows[3] = json.dumps(broken)
    (data_dir / "preferences_train.jsonl").write_text("\n".join(rows) + "\n")

    with pytest.raises(DataValidationError) as failure:
        alignment_pipeline(str(paths.DEMO_CONFIG), _overrides(tmp_path, data_dir))
    message = str(failure.value)
    assert "preferences_train.jsonl" in message and "row 4" in message
    assert "chosen_equals_rejected" in message

    runs = {r.info.run_name: r for r in _runs(MlflowClient())}
    assert "sft" not in runs, "no training after failed validation"
    assert runs["validate"].info.status == "FAILED"
    assert MlflowClient().search_registered_models() == []
