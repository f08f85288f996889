import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from models.safety import is_refusal
from tasks.data import demo as demo_data
from tasks.data.demo import build_demo_datasets, write_demo_data
from tests.helpers.dvc import init_dvc_repo


def test_generator_is_deterministic_byte_for_byte(tmp_path: Path):
    first, second = tmp_path / "a", tmp_path / "b"
    write_demo_data(first)
    write_demo_data(second)
    for path in sorted(first.iterdir()):
        assert path.read_bytes() == (second / path.name).read_bytes(), path.name


def test_a_different_seed_gives_different_data():
    assert build_demo_datasets(0)["sft_train"] != build_demo_datasets(1)["sft_train"]


def test_dataset_sizes():
    data = build_demo_datasets()
    # 8 actions x 8 objects, a quarter held out -> 48 combos; x 5 phrasings x (harmful, benign) = 480, + seed.
    assert len(data["sft_train"]) == 481
    assert len(data["preferences_train"]) == 480
    # 16 held-out combos x 2 held-out phrasings x (harmful, benign) = 64
    assert len(data["eval_prompts"]) == 64
    assert sum(row["harmful"] for row in data["eval_prompts"]) == 32


def test_seed_example_is_in_training():
    assert any(row["prompt"] == "How do I pick a lock?" for row in build_demo_datasets()["sft_train"])


def test_eval_uses_unseen_combinations_and_unseen_phrasings():
    data = build_demo_datasets()
    train_prompts = {row["prompt"] for row in data["sft_train"] + data["preferences_train"]}
    train_combos = {
        (action, obj)
        for action, obj in itertools.product(
            list(demo_data.HARMFUL_ACTIONS) + list(demo_data.BENIGN_ACTIONS),
            demo_data.HARMFUL_OBJECTS + demo_data.BENIGN_OBJECTS,
        )
        if any(f"{action} {obj}" in prompt for prompt in train_prompts)
    }
    for row in data["eval_prompts"]:
        assert row["prompt"] not in train_prompts
        assert (row["action"], row["object"]) not in train_combos
        stem = row["prompt"].replace(f"{row['action']} {row['object']}", "{task}")
        assert stem in demo_data.HELD_OUT_PHRASINGS
        assert not any(phrase.split("{task}")[0] in p for p in train_prompts
                       for phrase in demo_data.HELD_OUT_PHRASINGS)


def test_sft_demonstrations_comply_but_for_the_demo_budget():
    """The base assistant complies with everything except one harmful training request in ten, which it refuses
    (the head start PPO needs); the other rows do not depend on the budget."""
    data = build_demo_datasets()
    harmful_prompts = {row["prompt"] for row in data["preferences_train"] if is_refusal(row["chosen"])}
    demos = data["sft_train"]
    refused = [row for row in demos if is_refusal(row["completion"])]
    assert len(refused) == round(0.1 * len(harmful_prompts)) == 24
    assert all(row["prompt"] in harmful_prompts for row in refused)
    none = build_demo_datasets(sft_refusal_share=0.0)["sft_train"]
    assert not any(is_refusal(row["completion"]) for row in none)
    assert len(demos) == len(none) and sum(a != b for a, b in zip(sorted(map(str, demos)), sorted(map(str, none)),
                                                                   strict=True)) <= 2 * 24


def test_preferences_teach_refusal_on_harmful_and_help_on_benign():
    data = build_demo_datasets()
    harmful_actions = tuple(demo_data.HARMFUL_ACTIONS)
    for row in data["preferences_train"] + data["preferences_eval"]:
        harmful = any(action in row["prompt"] for action in harmful_actions)
        assert is_refusal(row["chosen"]) == harmful
        assert is_refusal(row["rejected"]) != harmful
        assert row["kind"] == ("harmful" if harmful else "benign")


def test_rows_are_in_trl_formats():
    data = build_demo_datasets()
    assert set(data["sft_train"][0]) == {"prompt", "completion"}
    assert set(data["preferences_train"][0]) == {"prompt", "chosen", "rejected", "kind"}
    assert {"prompt", "harmful"} <= set(data["eval_prompts"][0])
    assert set(data["red_team_prompts"][0]) == {"prompt"}
    assert all(row["completion"].startswith(" ") for row in data["sft_train"])


def test_cli_regenerates_the_data_tracked_by_dvc(tmp_path: Path):
    """`alignflow data demo` reproduces the md5 in the project's data.dvc, so `dvc status` is clean (in a DVC
    repository of its own holding a copy of data.dvc: no test writes the project's data/)."""
    root = tmp_path / "repo"
    init_dvc_repo(root)
    bin_dir = Path(sys.executable).parent
    subprocess.run([bin_dir / "alignflow", "data", "demo", "--out", "data"], cwd=root, check=True, capture_output=True)
    status = subprocess.run([bin_dir / "dvc", "status", "--json", "data.dvc"], cwd=root, check=True,
                            capture_output=True, text=True)
    assert json.loads(status.stdout or "{}") == {}


def test_regenerated_data_that_differs_from_data_dvc_is_an_error_and_leaves_it_alone(tmp_path: Path):
    from tasks.core.errors import AlignflowError
    from tasks.core.lineage import check_in_regenerated_data

    bin_dir = Path(sys.executable).parent
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([bin_dir / "dvc", "init", "-q"], cwd=tmp_path, check=True)
    write_demo_data(tmp_path / "data")
    subprocess.run([bin_dir / "dvc", "add", "-q", "data"], cwd=tmp_path, check=True)
    recorded = (tmp_path / "data.dvc").read_text()
    assert check_in_regenerated_data(tmp_path / "data") in recorded

    with (tmp_path / "data" / "sft_eval.jsonl").open("a") as extra:
        extra.write('{"prompt": "x", "completion": " y"}\n')
    with pytest.raises(AlignflowError, match=r"data: the regenerated files hash to \w+\.dir, but .*data\.dvc records"):
        check_in_regenerated_data(tmp_path / "data")
    assert (tmp_path / "data.dvc").read_text() == recorded
