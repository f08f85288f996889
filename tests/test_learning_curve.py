"""Learning curves: the flow that trains the same methods on each fraction of the training data and judges them on
the same whole held-out eval, registering no policy (the fractions themselves: tests/test_sampling.py)."""

from __future__ import annotations

import mlflow
from mlflow import MlflowClient

from tasks.core import paths
from tasks.data.readers import read_records


def test_the_curve_trains_each_fraction_and_judges_it_on_the_whole_eval(prefect_harness, tracked, tmp_path,
                                                                        demo_data_dir):
    from flows.learning_curve import learning_curve

    overrides = [f"data.dir={demo_data_dir}", f"work_dir={tmp_path / 'work'}", f"reports_dir={tmp_path / 'reports'}",
                 f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", "optimizers=[dpo]", "sft.epochs=1",
                 "reward.max_steps=4", "dpo.max_steps=2", "eval.max_new_tokens=8"]
    points = learning_curve(str(paths.DEMO_CONFIG), overrides, [0.5, 0.25, 0.5])

    assert [(fraction, row.method) for fraction, row in points] == [(0.25, "sft"), (0.25, "dpo"), (0.5, "sft"),
                                                                     (0.5, "dpo")]
    whole = sum(1 for _ in read_records(demo_data_dir / "sft_train.jsonl"))
    pairs = sum(1 for _ in read_records(demo_data_dir / "preferences_train.jsonl"))
    assert [row.demos for _, row in points] == [round(whole / 4)] * 2 + [round(whole / 2)] * 2
    assert [row.preference_pairs for _, row in points] == [0, round(pairs / 4), 0, round(pairs / 2)]
    # Every model is judged on the same whole held-out eval.
    assert {row.harmful_refusal.n for _, row in points} == {next(iter(points))[1].harmful_refusal.n}

    client = MlflowClient()
    experiment = client.get_experiment_by_name("alignflow")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(run for run in runs if run.info.run_name == "demo-learning-curve")
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "learning_curve")}
    assert artifacts == {"learning_curve/learning_curve.json", "learning_curve/demo-learning-curve.md",
                         "learning_curve/demo-learning-curve.png"}
    logged = mlflow.artifacts.load_dict(f"runs:/{parent.info.run_id}/learning_curve/learning_curve.json")
    assert [point["fraction"] for point in logged] == [0.25, 0.25, 0.5, 0.5]
    assert "dpo @ 25%" in (tmp_path / "reports" / "demo-learning-curve.md").read_text()
    # Each fraction thinned the validated demos, and its SFT model read its own file.
    validations = [run.data.metrics for run in runs if run.info.run_name == "validate"]
    assert sorted(m["validate/sft_train/rows"] for m in validations) == [round(whole / 4), round(whole / 2)]
    assert {m["validate/sft_train/rows_before_fraction"] for m in validations} == {whole}
    assert {m["validate/eval_prompts/rows"] for m in validations} == {len(read_records(demo_data_dir /
                                                                                      "eval_prompts.jsonl"))}
    read = {d.dataset.digest for run in runs if run.info.run_name == "sft" for d in run.inputs.dataset_inputs
            if d.dataset.name == "sft_train"}
    assert len(read) == 2
    # A study, not a candidate: no policy registered; and DPO trains against no reward model, so none was trained.
    assert client.search_registered_models() == []
    assert not any(run.info.run_name == "reward" for run in runs)


def test_the_whole_data_keeps_the_validation_key_a_pipeline_run_gives_it(demo_data_dir, tmp_path):
    from tasks.core.config import load_config
    from tasks.validate import validate_key

    overrides = [f"data.dir={demo_data_dir}", f"work_dir={tmp_path}"]
    plain = validate_key(load_config(paths.DEMO_CONFIG, overrides))
    assert validate_key(load_config(paths.DEMO_CONFIG, [*overrides, "data.train_fraction=1.0"])) == plain
    assert validate_key(load_config(paths.DEMO_CONFIG, [*overrides, "data.train_fraction=0.5"])) != plain
