"""`alignflow iterate` under Prefect's test harness, on the tiny model: rounds labelled by the reward model, and a
round that waits for people and resumes once their labels are in its folder."""

from __future__ import annotations

import json

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from flows.feedback import LABELER_TAG, REWARD_MODEL_TAG, ROUND_DATA_TAG, ROUND_TAG, START_TAG, feedback_rounds
from tasks.core import paths
from tasks.feedback.records import Label, LabelLog, read_labels, read_pairs
from tests.helpers.dvc import dvc_repo_with_tracked_data


def _overrides(tmp_path, data_dir):
    return [f"data.dir={data_dir}", f"work_dir={tmp_path / 'work'}",
            f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", "optimizers=[dpo]", "sft.max_steps=30",
            "reward.max_steps=10", "dpo.max_steps=4", "eval.max_new_tokens=12"]


def _settings(root, **changes) -> list[str]:
    """The `iterate` section's settings of these tests, as overrides."""
    settings = {"feedback_dir": root / "feedback", "prompts_file": root / "data" / "preferences_train.jsonl",
                "pairs_per_round": 12, "first_round_pairs": 6, "max_new_tokens": 12, **changes}
    return [f"iterate.{key}={value}" for key, value in settings.items()]


def _round_parents(client: MlflowClient) -> dict[str, list]:
    experiment = client.get_experiment_by_name("alignflow")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    parents: dict[str, list] = {}
    for run in runs:
        if ROUND_TAG in run.data.tags and "mlflow.parentRunId" not in run.data.tags:
            parents.setdefault(run.data.tags[ROUND_TAG], []).append(run)
    return parents


def _prompts(root, k: int) -> list[str]:
    return json.loads((root / "feedback" / f"round-{k}" / "round.json").read_text())["prompts"]


def _preferences(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "preferences_train.jsonl").read_text().splitlines()]


def test_reward_labelled_rounds_chain_in_mlflow(prefect_harness, tracked, tmp_path):
    data_dir = dvc_repo_with_tracked_data(tmp_path / "repo")
    root = tmp_path / "repo"
    settings = _settings(root, start_from="previous", rounds=2, labeler="reward")
    summaries = feedback_rounds(str(paths.DEMO_CONFIG), [*_overrides(tmp_path, data_dir), *settings])
    assert [s["status"] for s in summaries] == ["trained", "trained"]
    # Round 2 starts from the model round 1 trained (start_from: previous), round 1 from the SFT model.
    candidate = json.loads((root / "feedback" / "round-1" / "candidate.json").read_text())
    assert summaries[1]["start"] == candidate["model_uri"] != summaries[0]["start"]

    # Fresh prompts each round; the round's data holds every labelled pair so far, and nothing else.
    first, second = _prompts(root, 1), _prompts(root, 2)
    assert len(first) == 6 and len(second) == 12 and not set(first) & set(second)
    rounds = [root / "feedback" / f"round-{k}" for k in (1, 2)]
    kept = [json.loads((r / "data" / "feedback_manifest.json").read_text())["tally"]["kept"] for r in rounds]
    assert len(_preferences(rounds[0] / "data")) == kept[0] > 0
    assert len(_preferences(rounds[1] / "data")) == kept[0] + kept[1]
    assert {row["prompt"] for row in _preferences(rounds[1] / "data")} <= set(first) | set(second)

    # The reward model labelled, and says so; each label follows its scores.
    for folder in rounds:
        for label in read_labels(folder / "labels.jsonl"):
            assert label.annotator.startswith("reward-model:models:/")
            a, b = (float(part.split()[-1]) for part in label.note.split(","))
            assert label.choice == ("A" if a - b > 0.1 else "B" if b - a > 0.1 else "tie")

    # MLflow shows the chain: each round's parent run names its round, labeler, starting model and data version.
    client = MlflowClient()
    parents = _round_parents(client)
    assert sorted(parents) == ["1", "2"] and all(len(runs) == 1 for runs in parents.values())
    for k, folder in zip(("1", "2"), rounds, strict=True):
        tags = parents[k][0].data.tags
        md5 = yaml.safe_load((folder / "data.dvc").read_text())["outs"][0]["md5"]
        assert tags[ROUND_DATA_TAG] == md5 and tags[LABELER_TAG] == "reward"
        assert tags[START_TAG] == summaries[int(k) - 1]["start"]
        children = client.search_runs([parents[k][0].info.experiment_id],
                                      f"tags.mlflow.parentRunId = '{parents[k][0].info.run_id}'")
        names = {run.info.run_name for run in children}
        assert {"feedback-export", "feedback-import", "dpo", "evaluate-dpo", "promote"} <= names
        dpo = next(run for run in children if run.info.run_name == "dpo")
        assert dpo.data.tags["alignflow.dvc_data_md5"] == md5  # the round's training run carries its data version
        assert dpo.data.tags[ROUND_TAG] == k
        assert dpo.data.tags["alignflow.parent.sft"] == tags[START_TAG]  # trained from the round's start

    # A rerun reuses the finished rounds: same plan, same data version, no stage recomputed.
    again = feedback_rounds(str(paths.DEMO_CONFIG), [*_overrides(tmp_path, data_dir), *settings])
    assert [s["data_md5"] for s in again] == [s["data_md5"] for s in summaries]
    last = _round_parents(client)["2"][-1]
    assert last.data.tags["alignflow.cache.dpo"].startswith("reused:")
    versions = client.search_model_versions("name = 'alignflow-policy'")
    assert {v.tags.get(ROUND_TAG) for v in versions} >= {"1", "2"}  # the registry says which round made a version

    # The AI labeler on the same pairs: the CAI feedback model (here the round's own policy) in both orders.
    from tasks.core.config import load_config
    from tasks.feedback.rounds import label_with_ai, round_settings

    ai_settings = _settings(root, labeler="ai", cai_config=paths.CAI_DIR / "demo.yaml")
    cfg = load_config(paths.DEMO_CONFIG, [*_overrides(tmp_path, data_dir), *ai_settings,
                                          f"iterate.feedback_dir={tmp_path / 'ai'}"])
    ai = round_settings(cfg)
    labels = read_labels(label_with_ai(cfg, ai, 1, rounds[0] / "export" / "pairs.jsonl", summaries[0]["start"]))
    assert [label.pair_id for label in labels] == list(read_pairs(rounds[0] / "export" / "pairs.jsonl"))
    for label in labels:
        assert label.annotator == f"ai:local:{summaries[0]['start']}"
        p_a = float(label.note.split()[1])
        calibrated = "tie" if ";" in label.note else "A" if p_a > 0.5 else "B"
        assert label.choice == calibrated, label.note

    # The simulated annotator on the same pairs: each request's kind (a column of the prompt data) and the
    # refusal detector decide; it loads no model.
    from tasks.data.conversations import prompt_key
    from tasks.feedback.rounds import label_with_simulation
    from tasks.feedback.simulated import preference

    simulated = round_settings(load_config(paths.DEMO_CONFIG, [
        *_overrides(tmp_path, data_dir), *_settings(root, labeler="simulated", label_noise=0.0),
        f"iterate.feedback_dir={tmp_path / 'simulated'}"]))
    pairs = read_pairs(rounds[0] / "export" / "pairs.jsonl")
    labels = read_labels(label_with_simulation(simulated, 1, rounds[0] / "export" / "pairs.jsonl"))
    kinds = {prompt_key(row["prompt"]): row["kind"] for row in _preferences(root / "data")}
    assert [label.pair_id for label in labels] == list(pairs)
    for label in labels:
        pair = pairs[label.pair_id]
        assert label.annotator == "simulated:noise=0"
        assert label.choice == preference(kinds[prompt_key(pair.prompt)], pair.answer_a, pair.answer_b)


def test_a_ppo_round_retrains_the_reward_model_on_every_comparison_so_far(prefect_harness, tracked, tmp_path):
    data_dir = dvc_repo_with_tracked_data(tmp_path / "repo")
    root = tmp_path / "repo"
    ppo = ["optimizers=[ppo]", "ppo.steps=2", "ppo.rollout_batch_size=8", "ppo.mini_batch_size=8",
           "ppo.max_new_tokens=8", "ppo.save_steps=2", "ppo.sample_table_steps=2", "ppo.monitors.probe_size=8"]
    summaries = feedback_rounds(str(paths.DEMO_CONFIG), [*_overrides(tmp_path, data_dir), *ppo,
                                                         *_settings(root, labeler="reward", rounds=1)])
    assert [s["status"] for s in summaries] == ["trained"]
    folder = root / "feedback" / "round-1"
    manifest = json.loads((folder / "reward-data" / "reward_data_manifest.json").read_text())
    trained_on = [json.dumps(row, sort_keys=True) for row in _preferences(folder / "reward-data")]
    fresh = [json.dumps(row, sort_keys=True) for row in _preferences(folder / "data")]
    original = [json.dumps(row, sort_keys=True) for row in _preferences(data_dir)]
    held_out = [json.dumps(row, sort_keys=True) for row in manifest["held_out"]]
    # The original comparisons and the round's, less the held-out share, which it never sees.
    assert held_out and set(held_out) <= set(fresh) and not set(held_out) & set(trained_on)
    assert trained_on == original + [row for row in fresh if row not in held_out]
    assert manifest["original_pairs"] == len(original) and len(held_out) == round(0.2 * len(fresh))
    # The round names its reward model, PPO optimised against it, and both reward models were scored.
    client = MlflowClient()
    parent = _round_parents(client)["1"][0]
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    ppo_run = next(run for run in children if run.info.run_name == "ppo")
    assert ppo_run.data.tags["alignflow.parent.reward"] == parent.data.tags[REWARD_MODEL_TAG]
    assert parent.data.tags[REWARD_MODEL_TAG] != summaries[0]["start"]
    metrics = parent.data.metrics
    assert metrics["feedback/reward_heldout_pairs"] == len(held_out)
    for when in ("before", "after"):
        assert 0.0 <= metrics[f"feedback/reward_heldout_accuracy_{when}"] <= 1.0


def test_human_round_waits_for_labels_then_resumes(prefect_harness, tracked, tmp_path):
    data_dir = dvc_repo_with_tracked_data(tmp_path / "repo")
    root = tmp_path / "repo"
    overrides = _overrides(tmp_path, data_dir)
    waiting = feedback_rounds(str(paths.DEMO_CONFIG), [*overrides, *_settings(root, rounds=2)])
    assert [s["status"] for s in waiting] == ["waiting"]  # round 2 does not start while round 1 waits
    round_1 = root / "feedback" / "round-1"
    assert "alignflow feedback page --pairs" in waiting[0]["message"] and not (round_1 / "data").exists()
    assert not (root / "feedback" / "round-2").exists()

    # People label on our page (here: straight into its labels file): A for every pair but one tie.
    pairs = read_pairs(round_1 / "export" / "pairs.jsonl")
    log = LabelLog(round_1 / "labels.jsonl")
    for i, pid in enumerate(pairs):
        log.append(Label(pair_id=pid, choice="tie" if i == 0 else "A", annotator="ann"))
    resumed = feedback_rounds(str(paths.DEMO_CONFIG), [*overrides, *_settings(root, rounds=1)])
    assert resumed[0]["status"] == "trained"
    rows = _preferences(round_1 / "data")
    assert [row["chosen"] for row in rows] == [pairs[pid].answer_a for pid in list(pairs)[1:]]
    manifest = json.loads((round_1 / "data" / "feedback_manifest.json").read_text())
    assert manifest["tally"]["ties"] == 1 and manifest["labeler"] == "human"
    # The waiting attempt and the resumed one are two runs of round 1; the resumed one trained.
    attempts = _round_parents(MlflowClient())["1"]
    assert len(attempts) == 2 and "alignflow.feedback_waiting" in attempts[0].data.tags
    assert attempts[1].data.tags["alignflow.cache.dpo"] == "computed"


def test_ai_labeler_needs_a_cai_config(prefect_harness, tracked, tmp_path):
    from tasks.core.errors import ConfigError

    with pytest.raises(ConfigError, match="key 'iterate': .*labeler ai needs cai_config"):
        feedback_rounds(str(paths.DEMO_CONFIG), [*_overrides(tmp_path, tmp_path / "data"),
                                                 *_settings(tmp_path, labeler="ai")])
    assert mlflow.active_run() is None
