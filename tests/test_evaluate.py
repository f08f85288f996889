"""The evaluate stage on models that do not share a tokenizer (a champion trained on other data)."""

from __future__ import annotations

import math

import pytest

from models.saving import save_hf_model
from models.tiny import build_tiny_llama, train_tokenizer
from tasks.core.hashing import md5_file
from tasks.core.lineage import Lineage
from tasks.evaluate import run_evaluate
from tasks.run.contract import StageResult
from tasks.run.tracking import configure_tracking
from tests.helpers.configs import reduced_config

LINEAGE = Lineage(git_sha="test", config_hash="test", data_md5="untracked")
SHAPE = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
         "max_position_embeddings": 256}


def _model(tmp_path, name: str, texts: list[str], vocab_size: int, init_seed: int = 0) -> StageResult:
    tokenizer = train_tokenizer(texts, vocab_size, 256)
    folder = save_hf_model(build_tiny_llama(tokenizer, init_seed=init_seed, **SHAPE), tokenizer, tmp_path / name)
    return StageResult(stage=name, run_id="", cache_key=name, model_uri=str(folder), output_hashes={"model": name})


def test_a_reference_with_another_vocabulary_gets_no_kl_and_says_why(tmp_path, demo_data_dir, tracked):
    """KL is taken on the policy's own token ids under both models: with another vocabulary there is none, and
    the evaluation says so rather than re-tokenizing the text."""
    import mlflow

    cfg = reduced_config(tmp_path, demo_data_dir, "eval.max_new_tokens=6")
    configure_tracking(cfg)
    demo_text = [line for path in demo_data_dir.iterdir() for line in path.read_text().splitlines()]
    policy = _model(tmp_path, "policy", demo_text, 800)
    # A smaller vocabulary: the policy's token ids would index past the reference's embeddings.
    reference = _model(tmp_path, "reference", ["a different corpus"] * 30, 280)
    files = {name: str(demo_data_dir / f"{name}.jsonl") for name in ("sft_eval", "eval_prompts")}
    data = StageResult(stage="validate", run_id="", cache_key="data", outputs=files,
                       output_hashes={name: md5_file(demo_data_dir / f"{name}.jsonl") for name in files})

    result = run_evaluate(cfg, LINEAGE, policy=policy, data=data, label="champion", reference=reference)
    assert not {"eval/kl_to_reference", "eval/kl_to_reference_per_token"} & set(result.metrics)
    assert math.isfinite(result.metrics["eval/harmful_refusal_rate"])  # the rest of the evaluation stands
    tags = mlflow.get_run(result.run_id).data.tags
    assert tags["eval.kl_to_reference"] == "not measured: the reference has another vocabulary"


def test_the_kl_samples_the_configured_number_of_prompts_and_says_how_precise_it_is(tmp_path, demo_data_dir,
                                                                                     tracked):
    cfg = reduced_config(tmp_path, demo_data_dir, "eval.max_new_tokens=6", "eval.kl_prompts=7")
    configure_tracking(cfg)
    demo_text = [line for path in demo_data_dir.iterdir() for line in path.read_text().splitlines()]
    policy = _model(tmp_path, "policy", demo_text, 800)
    reference = _model(tmp_path, "reference", demo_text, 800, init_seed=1)  # same vocabulary, other weights
    files = {name: str(demo_data_dir / f"{name}.jsonl") for name in ("sft_eval", "eval_prompts")}
    data = StageResult(stage="validate", run_id="", cache_key="data", outputs=files,
                       output_hashes={name: md5_file(demo_data_dir / f"{name}.jsonl") for name in files})

    result = run_evaluate(cfg, LINEAGE, policy=policy, data=data, label="dpo", reference=reference)
    metrics = result.metrics
    assert metrics["eval/kl_answers"] == 7 < metrics["eval/harmful_prompts"] + metrics["eval/benign_prompts"]
    assert metrics["eval/kl_to_reference"] > 0 and 0 < metrics["eval/kl_to_reference_stderr"] < math.inf
    # Where the stage's time went: it loaded and generated, trained nothing, and the parts add up to its wall.
    import mlflow

    logged = mlflow.get_run(result.run_id).data.metrics
    assert logged["profile/generate_seconds"] > 0 and logged["profile/load_seconds"] > 0
    assert logged["profile/train_seconds"] == 0
    parts = sum(logged[f"profile/{name}_seconds"] for name in ("generate", "train", "load", "other"))
    assert parts == pytest.approx(logged["profile/wall_seconds"])


def test_perplexity_ratio_to_the_baseline_and_degeneration_are_measured(tmp_path, demo_data_dir, tracked):
    import mlflow
    import pandas as pd
    import pytest

    from models.metrics import repeated_ngram_rate
    from tasks.evaluate import GENERATIONS

    cfg = reduced_config(tmp_path, demo_data_dir, "eval.max_new_tokens=12")
    configure_tracking(cfg)
    demo_text = [line for path in demo_data_dir.iterdir() for line in path.read_text().splitlines()]
    policy = _model(tmp_path, "policy", demo_text, 800)
    files = {name: str(demo_data_dir / f"{name}.jsonl") for name in ("sft_eval", "eval_prompts")}
    data = StageResult(stage="validate", run_id="", cache_key="data", outputs=files,
                       output_hashes={name: md5_file(demo_data_dir / f"{name}.jsonl") for name in files})
    baseline = StageResult(stage="evaluate-sft", run_id="", cache_key="sft", metrics={"eval/benign_perplexity": 4.0})

    result = run_evaluate(cfg, LINEAGE, policy=policy, data=data, label="dpo", baseline=baseline)
    ratio = result.metrics["eval/benign_perplexity_ratio_vs_sft"]
    assert ratio == pytest.approx(result.metrics["eval/benign_perplexity"] / 4.0)
    # The demo's held-out demos are half harmful: benign perplexity is measured on the other half alone.
    assert result.metrics["eval/benign_perplexity"] != result.metrics["eval/perplexity"]
    generations = pd.read_json(mlflow.artifacts.download_artifacts(f"runs:/{result.run_id}/{GENERATIONS}",
                                                                   dst_path=str(tmp_path)), lines=True)
    per_response = [repeated_ngram_rate(str(response).split()) for response in generations["response"]]
    assert generations["repeated_trigrams"].tolist() == pytest.approx(per_response)
    assert result.metrics["eval/degeneration"] == pytest.approx(sum(per_response) / len(per_response))


def test_refusal_rates_are_split_by_kind_and_counted():
    import pandas as pd

    from tasks.evaluate import safety_metrics

    generations = pd.DataFrame({
        "harmful": [True, True, True, True, False, False, False, False, False],
        "kind": ["harmful"] * 4 + ["benign"] * 2 + ["sound_harmful"] * 3,
        "refused": [True, True, True, False, False, False, True, False, False],
        "response_tokens": [10, 10, 10, 10, 20, 20, 30, 30, 30],
    })
    metrics = safety_metrics(generations)
    # harmful 3 of 4 refused; benign 0 of 2; sound-harmful 1 of 3; mean length 170 / 9.
    assert metrics == pytest.approx({
        "eval/harmful_refusal_rate": 0.75, "eval/harmful_prompts": 4.0,
        "eval/benign_refusal_rate": 0.0, "eval/benign_prompts": 2.0,
        "eval/sound_harmful_refusal_rate": 1 / 3, "eval/sound_harmful_prompts": 3.0,
        "eval/response_tokens": 170 / 9,
    })


def test_per_prompt_values_average_to_the_reported_rates():
    import pandas as pd
    import pytest

    from tasks.evaluate import safety_metrics
    from tasks.registry.evaluations import per_prompt_values

    generations = pd.DataFrame({
        "prompt": ["h1", "h2", "h3", "b1", "b2", "s1", "s2", "x"],
        "harmful": [True, True, True, False, False, False, False, None],
        "kind": ["harmful", "harmful", "harmful", "benign", "benign", "sound_harmful", "sound_harmful", None],
        "refused": [True, False, True, False, True, True, True, False],
        "reward": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
        "response_tokens": [3, 4, 5, 6, 7, 8, 9, 10],
        "repeated_trigrams": [0.0] * 8,
    })
    values = per_prompt_values(generations)
    metrics = safety_metrics(generations)
    for kind in ("harmful", "benign", "sound_harmful"):
        name = f"eval/{kind}_refusal_rate"
        assert values[name].binary
        assert sum(values[name].values) / len(values[name].values) == pytest.approx(metrics[name])
    assert values["eval/harmful_refusal_rate"].prompts == ("h1", "h2", "h3")  # the unlabelled row is in no rate
    assert values["eval/reward_mean"].values == (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)
    assert values["eval/benign_reward_mean"].prompts == ("b1", "b2", "s1", "s2", "x")
    assert not values["eval/response_tokens"].binary
