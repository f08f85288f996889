"""Human feedback: votes worked out by hand, bad exports named, and each format round-tripped on a real model:
export from a trained tiny policy (CLI), label as the tool would write it, import (CLI) into a DVC data version."""

from __future__ import annotations

import json

import pytest

from tasks.core.errors import DataValidationError
from tasks.feedback.formats import read_export
from tasks.feedback.records import Label, LabelLog, Pair, read_labels
from tasks.feedback.votes import preference_rows
from tests.helpers.feedback import check_version, cli, demo_pairs, export_from_tiny_policy, import_labels

PAIRS = {pid: Pair(pair_id=pid, prompt=f"prompt {pid}", answer_a=f"a{pid}", answer_b=f"b{pid}", source_a="m#1",
                   source_b="m#2", swapped=False) for pid in ("p1", "p2", "p3", "p4", "p5", "p6")}


def _label(pid: str, choice: str, who: str) -> Label:
    return Label(pair_id=pid, choice=choice, annotator=who)


def test_votes_by_hand():
    labels = [
        _label("p1", "A", "ann"), _label("p1", "A", "bob"), _label("p1", "B", "cat"),  # 2-1 for A
        _label("p2", "B", "ann"), _label("p2", "A", "bob"),                              # 1-1: disagreement
        _label("p3", "tie", "ann"), _label("p3", "skip", "bob"),                         # no vote: a tie
        _label("p4", "skip", "ann"),                                                     # no vote: a skip
        _label("p5", "A", "ann"), _label("p5", "B", "ann"),                              # revised: B counts
    ]                                                                                    # p6: nobody
    rows, tally = preference_rows(PAIRS, labels)
    assert [(r["pair_id"], r["chosen"], r["rejected"], r["votes_a_b"]) for r in rows] == [
        ("p1", "ap1", "bp1", "2-1"), ("p5", "bp5", "ap5", "0-1")]
    assert rows[1]["chosen_source"] == "m#2" and rows[1]["rejected_source"] == "m#1"
    assert (tally.kept, tally.ties, tally.skips, tally.disagreements, tally.unlabelled) == (2, 1, 1, 1, 1)
    # Agreement over the pairs two or more annotators voted on: p1 (2 of 3 with the majority) and p2 (1 of 2).
    assert tally.multi_annotated == 2
    assert tally.agreement == pytest.approx((2 + 1) / (3 + 2))
    assert tally.annotators == {"ann", "bob", "cat"} and tally.labels == 10


def test_label_log_appends_resumes_and_revises(tmp_path):
    log = LabelLog(tmp_path / "labels.jsonl")
    log.append(_label("p1", "A", "ann"))
    log.append(_label("p2", "tie", "ann"))
    reopened = LabelLog(tmp_path / "labels.jsonl")  # a restart reads what was written
    reopened.append(_label("p1", "B", "ann"))
    assert {pid: label.choice for pid, label in reopened.current("ann").items()} == {"p1": "B", "p2": "tie"}
    assert [label.choice for label in read_labels(tmp_path / "labels.jsonl")] == ["A", "tie", "B"]
    assert all(label.labelled_at for label in read_labels(tmp_path / "labels.jsonl"))


def test_bad_exports_name_the_file_item_and_expectation(tmp_path):
    export = tmp_path / "ls.json"
    task = {"id": 7, "data": {"pair_id": "p1"}, "annotations": [{"id": 3, "result": []}]}
    export.write_text(json.dumps([task]))
    with pytest.raises(DataValidationError, match=r"ls\.json: task 1 \(id 7\), annotation 3: missing result"):
        read_export(export, PAIRS)
    task["annotations"] = [{"result": [{"type": "pairwise", "value": {"selected": "middle"}}]}]
    export.write_text(json.dumps([task]))
    with pytest.raises(DataValidationError, match=r"task 1 \(id 7\): unknown choice 'middle'; expected left or right"):
        read_export(export, PAIRS)
    task["data"]["pair_id"] = "p99"
    export.write_text(json.dumps([task]))
    with pytest.raises(DataValidationError, match=r"task 1 \(id 7\): pair id 'p99' is not in the export file"):
        read_export(export, PAIRS)
    argilla = tmp_path / "argilla.jsonl"
    argilla.write_text(json.dumps({"id": "p1", "ranking.responses": [["response3", "response1"]],
                                   "ranking.responses.users": ["u1"]}) + "\n")
    with pytest.raises(DataValidationError, match=r"argilla\.jsonl: line 1: unknown choice 'response3'"):
        read_export(argilla, PAIRS)
    ours = tmp_path / "labels.jsonl"
    ours.write_text(json.dumps({"pair_id": "p1", "choice": "maybe", "annotator": "ann"}) + "\n")
    with pytest.raises(DataValidationError, match=r"labels\.jsonl: line 1 is not a label \(choice"):
        read_export(ours, PAIRS)


# ------------------------------------------------------------------------------------------- round trips


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return export_from_tiny_policy(tmp_path_factory.mktemp("feedback"))


def _shorter_is_better(pair: dict) -> str:
    """The simulated annotator's taste: the shorter answer (A on a tie in length)."""
    return "A" if len(pair["answer_a"]) <= len(pair["answer_b"]) else "B"


def test_export_writes_three_formats_with_a_recorded_shuffle(exported):
    _, _, export, _ = exported
    pairs = [json.loads(line) for line in (export / "pairs.jsonl").read_text().splitlines()]
    manifest = json.loads((export / "export_manifest.json").read_text())
    assert manifest["pairs"] == len(pairs) == 24 - manifest["dropped_identical_or_empty"] >= 20
    assert 0 < sum(p["swapped"] for p in pairs) < len(pairs)  # the order was shuffled, and recorded
    for p in pairs:  # A is the first sample exactly when the pair was not swapped
        assert p["source_a"].endswith("#sample-2" if p["swapped"] else "#sample-1")
    tasks = json.loads((export / "labelstudio_tasks.json").read_text())
    assert [t["data"]["answer1"] for t in tasks] == [p["answer_a"] for p in pairs]
    assert '<Pairwise name="comparison" toName="answer1,answer2"' in (export / "labelstudio_config.xml").read_text()
    records = [json.loads(line) for line in (export / "argilla_records.jsonl").read_text().splitlines()]
    assert [(r["id"], r["instruction"], r["response2"]) for r in records] == [
        (p["pair_id"], p["prompt"], p["answer_b"]) for p in pairs]


def test_round_trip_our_labels(exported):
    root, args, export, _ = exported
    pairs = [json.loads(line) for line in (export / "pairs.jsonl").read_text().splitlines()]
    log = LabelLog(root / "ours.jsonl")
    expected = {}
    for i, pair in enumerate(pairs):
        choice = "tie" if i == 0 else "skip" if i == 1 else _shorter_is_better(pair)
        log.append(_label(pair["pair_id"], choice, "ann"))
        if choice in ("A", "B"):
            expected[pair["pair_id"]] = choice
    output, folder = import_labels(root, args, root / "ours.jsonl", export, "round-ours")
    assert "dropped 1 ties, 1 skips, 0 disagreements" in output
    check_version(folder, export, expected, demo_pairs(root))


def test_round_trip_label_studio_with_three_annotators(exported):
    root, args, export, _ = exported
    tasks = json.loads((export / "labelstudio_tasks.json").read_text())
    expected = {}
    for i, task in enumerate(tasks):
        data = task["data"]
        side = "left" if len(data["answer1"]) <= len(data["answer2"]) else "right"
        other = "right" if side == "left" else "left"
        # Tasks 0-3: a second annotator disagrees (1-1: dropped); 4-7: two of three agree; task 8 is cancelled.
        votes = [side, other] if i < 4 else [side, side, other] if i < 8 else [side]
        task["annotations"] = [{"id": 100 * i + n, "completed_by": {"id": n, "email": f"user{n}@example.com"},
                                "was_cancelled": i == 8,
                                "result": [] if i == 8 else [{"from_name": "comparison", "to_name": "comparison",
                                                              "type": "pairwise", "value": {"selected": vote}}]}
                               for n, vote in enumerate(votes)]
        if i >= 4 and i != 8:
            expected[data["pair_id"]] = "A" if side == "left" else "B"
    labels = root / "labelstudio-export.json"
    labels.write_text(json.dumps(tasks))
    output, folder = import_labels(root, args, labels, export, "round-labelstudio")
    assert "dropped 0 ties, 1 skips, 4 disagreements" in output
    manifest = check_version(folder, export, expected, demo_pairs(root))
    # Agreement: 4 split pairs (1 of 2 votes with the majority) and 4 pairs at 2 of 3.
    assert manifest["tally"]["agreement"] == pytest.approx((4 * 1 + 4 * 2) / (4 * 2 + 4 * 3))


def test_round_trip_argilla(exported):
    root, args, export, _ = exported
    records = [json.loads(line) for line in (export / "argilla_records.jsonl").read_text().splitlines()]
    expected = {}
    for i, record in enumerate(records):
        best = "response1" if len(record["response1"]) <= len(record["response2"]) else "response2"
        other = "response2" if best == "response1" else "response1"
        record["ranking.responses"] = [[best, other], [best, other]]
        record["ranking.responses.users"] = ["3f1c-user-a", "9b2e-user-b"]
        record["ranking.responses.status"] = ["submitted", "discarded" if i == 0 else "submitted"]
        expected[record["id"]] = "A" if best == "response1" else "B"
    labels = root / "argilla-export.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in records))
    output, folder = import_labels(root, args, labels, export, "round-argilla", "--replace")
    assert "2 annotators, agreement 1.00" in output
    check_version(folder, export, expected, demo_pairs=0)  # --replace: the labelled pairs alone


def test_a_bad_export_leaves_no_folder(exported):
    root, args, export, _ = exported
    bad = root / "bad.jsonl"
    bad.write_text(json.dumps({"pair_id": "9999-deadbeef", "choice": "A", "annotator": "ann"}) + "\n")
    result = cli("feedback", "import", str(bad), "--pairs", str(export / "pairs.jsonl"),
                 "--out", str(root / "repo" / "round-bad"), *args)
    assert result.exit_code == 1
    assert "bad.jsonl: line 1: pair id '9999-deadbeef' is not in the export file" in result.output
    assert not (root / "repo" / "round-bad").exists() and not (root / "repo" / "round-bad.dvc").exists()


def test_conversational_prompts_stay_conversational(tmp_path):
    from tasks.feedback.prompts import sample_prompts
    from tasks.feedback.records import prompt_text

    turns = [{"role": "user", "content": "How do I kill a stuck Python process?"}]
    pair = Pair(pair_id="c1", prompt=turns, answer_a="Run kill -9 <pid>.", answer_b="I can't help with that.",
                source_a="m#1", source_b="m#2", swapped=False)
    rows, _ = preference_rows({"c1": pair}, [_label("c1", "A", "ann")])
    # TRL's conversational format: the prompt's turns, and the answers as assistant turns.
    assert rows[0]["prompt"] == turns
    assert rows[0]["chosen"] == [{"role": "assistant", "content": "Run kill -9 <pid>."}]
    assert rows[0]["rejected"] == [{"role": "assistant", "content": "I can't help with that."}]
    assert prompt_text(turns) == "How do I kill a stuck Python process?"
    prompts = tmp_path / "prompts.jsonl"
    other = [{"role": "user", "content": "How do I hotwire a stranger's car?"}]
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in (turns, other, turns)))
    assert sorted(map(prompt_text, sample_prompts(prompts, 5, seed=0))) == sorted(map(prompt_text, (turns, other)))
    assert sample_prompts(prompts, 5, seed=0, exclude=[turns]) == [other]


def test_pairs_leave_out_identical_and_empty_answers():
    from tasks.feedback.export import build_pairs

    prompts = ["p1", "p2", "p3", "p4"]
    pairs = build_pairs(prompts, ["same", " ", "x1", "y1"], ["same", "b", "x2", "y2"], source_first="m#1",
                        source_second="m#2", seed=3)
    assert [pair.prompt for pair in pairs] == ["p3", "p4"]
    for pair in pairs:  # whichever order was drawn, the first model's answer keeps its source
        first = pair.answer_b if pair.swapped else pair.answer_a
        assert first.endswith("1") and (pair.source_b if pair.swapped else pair.source_a) == "m#1"


def test_export_champion_against_candidate_by_alias(exported):
    from mlflow import MlflowClient

    root, args, _, model_uri = exported
    client = MlflowClient()
    client.create_registered_model("alignflow-policy")
    for alias in ("champion", "candidate"):  # two registered versions (of one model: this test checks the wiring)
        version = client.create_model_version("alignflow-policy", model_uri).version
        client.set_registered_model_alias("alignflow-policy", alias, version)
    result = cli("feedback", "export", "--model", "models:/alignflow-policy@champion", "--against", "@candidate",
                 "--n", "6", "--max-new-tokens", "12", "--out", str(root / "vs"), *args)
    assert result.exit_code == 0, result.output
    pairs = [json.loads(line) for line in (root / "vs" / "pairs.jsonl").read_text().splitlines()]
    # Aliases are resolved to the versions they point at now, and each pair says which version wrote A.
    assert pairs and all({p["source_a"], p["source_b"]} == {"models:/alignflow-policy/1", "models:/alignflow-policy/2"}
                         for p in pairs)
    for p in pairs:
        assert p["source_a"] == ("models:/alignflow-policy/2" if p["swapped"] else "models:/alignflow-policy/1")
    manifest = json.loads((root / "vs" / "export_manifest.json").read_text())
    assert (manifest["model_uri"], manifest["against_uri"]) == ("models:/alignflow-policy/1",
                                                                "models:/alignflow-policy/2")
    missing = cli("feedback", "export", "--model", "models:/alignflow-policy@nobody", "--out", str(root / "x"),
                  *args)
    assert missing.exit_code == 1 and "registered model 'alignflow-policy' has no alias 'nobody'" in missing.output
    assert not (root / "x").exists()
