"""Artifacts are verified: a model folder carries a sha256 manifest that loading checks, pickles are refused
before anything reads them, and code shipped with a model runs only when the config turns it on."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import shutil
import sys
from pathlib import Path

import mlflow
import pytest
import torch
import transformers.dynamic_module_utils
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file

from models.loading import load_model_and_tokenizer
from models.manifest import MANIFEST, ModelIntegrityError, write_manifest
from models.reward import load_reward_model
from models.saving import save_hf_model, save_trained_model
from models.tiny import build_tiny_llama, train_tokenizer
from models.value_head import SeparateCritic
from tasks.core import paths
from tasks.core.config import load_config
from tasks.registry.hf_folders import model_chain
from tasks.registry.logged_models import load_chain, load_stage_model, log_hf_model
from tasks.run.tracking import configure_tracking

SHAPE = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
         "max_position_embeddings": 64}
LOADERS = {
    "policy": lambda folder: load_model_and_tokenizer(folder),
    "reward": lambda folder: load_reward_model(folder, init_seed=0),
    "critic": lambda folder: SeparateCritic.from_reward_model(folder, init_seed=0),
}


@pytest.fixture
def tiny(tmp_path):
    tokenizer = train_tokenizer(["User: hello\nAssistant: hi there, friend"] * 20, 300, 64)
    model = build_tiny_llama(tokenizer, init_seed=0, **SHAPE)
    return model, tokenizer, save_hf_model(model, tokenizer, tmp_path / "base")


def _adapter(tiny, folder: Path) -> Path:
    """A LoRA adapter folder as PPO saves it: adapters, tokenizer, base name and a value head beside them."""
    model, tokenizer, _ = tiny
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    return save_trained_model(peft, tokenizer, folder, "models:/base",
                              also=lambda f: save_file({"w": torch.zeros(2)}, str(f / "value_head.safetensors")))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest(folder: Path) -> dict[str, str]:
    return json.loads((folder / MANIFEST).read_text())["files"]


def _tamper(weights: Path) -> None:
    """Change one weight in a still-valid safetensors file: transformers would load it without a murmur."""
    tensors = load_file(str(weights))
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, str(weights), metadata={"format": "pt"})


def test_saving_writes_a_manifest_of_every_file(tiny, tmp_path):
    _, _, base = tiny
    for folder in (base, _adapter(tiny, tmp_path / "adapter")):
        files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {MANIFEST}
        manifest = _manifest(folder)
        assert set(manifest) == files
        assert {name: _sha256(folder / name) for name in files} == manifest
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(_manifest(base))
    assert {"adapter_model.safetensors", "value_head.safetensors"} <= set(_manifest(tmp_path / "adapter"))


def test_a_logged_model_carries_its_manifest_and_a_changed_copy_is_refused(tiny, tmp_path, monkeypatch):
    model, tokenizer, saved = tiny
    monkeypatch.setattr(paths, "DEFAULT_ARTIFACT_ROOT", tmp_path / "mlartifacts")
    cfg = load_config(paths.DEMO_CONFIG, [f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    configure_tracking(cfg)
    by_hand = tmp_path / "by_hand"  # not written by models.saving: logging gives it its manifest
    model.save_pretrained(by_hand, safe_serialization=True)
    tokenizer.save_pretrained(by_hand)
    with mlflow.start_run():
        saved_uri, by_hand_uri = log_hf_model(saved, cfg, "sft"), log_hf_model(by_hand, cfg, "sft")
        shutil.copyfile(saved / "model.safetensors", saved / "extra.safetensors")
        with pytest.raises(ModelIntegrityError,
                           match=re.escape(f"{saved}/extra.safetensors: file not in the manifest")):
            log_hf_model(saved, cfg, "sft")  # changed since it was saved: not logged
    for uri, source in ((saved_uri, saved), (by_hand_uri, by_hand)):
        logged = Path(model_chain(uri, tmp_path / "download")[0])
        assert _manifest(logged) == {name: _sha256(source / name) for name in _manifest(source)}
        assert "model.safetensors" in _manifest(logged)
        load_stage_model(cfg, uri, tmp_path / "download")
    _tamper(logged / "model.safetensors")  # by_hand's copy in the artifact store
    expected = f"{logged}/model.safetensors: sha256 differs from the manifest written when the model was saved " \
               f"(expected {_manifest(logged)['model.safetensors']}, found {_sha256(logged / 'model.safetensors')})"
    with pytest.raises(ModelIntegrityError, match=re.escape(expected)):
        load_stage_model(cfg, by_hand_uri, tmp_path / "download")


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_a_changed_weight_file_is_refused_naming_it(tiny, loader):
    _, _, folder = tiny
    LOADERS[loader](folder)  # loads while it matches its manifest
    _tamper(folder / "model.safetensors")
    with pytest.raises(ModelIntegrityError, match=re.escape(f"{folder}/model.safetensors: sha256 differs")):
        LOADERS[loader](folder)


def test_a_changed_adapter_is_refused_naming_it(tiny, tmp_path):
    _, _, base = tiny
    adapter = _adapter(tiny, tmp_path / "adapter")
    load_model_and_tokenizer(base, adapters=[adapter])
    _tamper(adapter / "adapter_model.safetensors")
    with pytest.raises(ModelIntegrityError, match=re.escape(f"{adapter}/adapter_model.safetensors: sha256 differs")):
        load_model_and_tokenizer(base, adapters=[adapter])


def test_a_missing_file_is_refused_naming_it(tiny, tmp_path):
    _, _, base = tiny
    adapter = _adapter(tiny, tmp_path / "adapter")
    (adapter / "value_head.safetensors").unlink()  # nothing else would notice: merging reads only the adapters
    with pytest.raises(ModelIntegrityError,
                       match=re.escape(f"{adapter}/value_head.safetensors: listed in the manifest but")):
        load_model_and_tokenizer(base, adapters=[adapter])


@pytest.mark.parametrize("extra", ["model-00002-of-00002.safetensors", "chat_template.jinja"])
def test_an_extra_file_is_refused_naming_it(tiny, extra):
    _, _, folder = tiny
    shutil.copyfile(folder / "model.safetensors", folder / extra)
    with pytest.raises(ModelIntegrityError, match=re.escape(f"{folder}/{extra}: file not in the manifest")):
        load_model_and_tokenizer(folder)


def _write_marker(path: str) -> None:
    Path(path).write_text("the pickle ran")


class _Exploit:
    """Unpickling this calls `_write_marker`: what a malicious `pytorch_model.bin` would do with os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return _write_marker, (self.marker,)


@pytest.mark.parametrize("name", ["pytorch_model.bin", "adapter_model.bin", "weights.pt", "optimizer.pkl"])
def test_a_pickle_is_refused_before_anything_unpickles_it(tiny, tmp_path, name):
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Exploit(control)))
    assert control.is_file(), "the crafted pickle must really run code when unpickled"
    model, tokenizer, base = tiny
    marker = tmp_path / "ran"
    by_hand = tmp_path / "by_hand"  # a user's own folder, without a manifest: pickles are refused anyway
    model.save_pretrained(by_hand, safe_serialization=True)
    tokenizer.save_pretrained(by_hand)
    adapter = _adapter(tiny, tmp_path / "adapter")  # with a manifest: the pickle is refused before it is read
    for folder in (by_hand, adapter):
        (folder / name).write_bytes(pickle.dumps(_Exploit(marker)))
    refused = re.escape(f"{by_hand / name}: pickle-based files are refused")
    for load in LOADERS.values():
        with pytest.raises(ModelIntegrityError, match=refused):
            load(by_hand)
    with pytest.raises(ModelIntegrityError, match=re.escape(f"{adapter / name}: pickle-based files are refused")):
        load_model_and_tokenizer(base, adapters=[adapter])
    with pytest.raises(ModelIntegrityError, match=refused):
        log_hf_model(by_hand, load_config(paths.DEMO_CONFIG), "sft")  # refused before MLflow stores it
    assert not marker.exists()


@pytest.fixture
def modules_cache(tmp_path, monkeypatch):
    """transformers copies a model's code into its modules cache to import it: a fresh one, in tmp_path."""
    cache = tmp_path / "hf_modules"
    monkeypatch.setattr(transformers.dynamic_module_utils, "HF_MODULES_CACHE", str(cache))
    monkeypatch.syspath_prepend(str(cache))
    monkeypatch.delitem(sys.modules, "transformers_modules", raising=False)
    yield cache
    for name in [name for name in sys.modules if name.startswith("transformers_modules.")]:
        del sys.modules[name]


def test_model_code_runs_only_when_the_config_turns_trust_remote_code_on(tiny, tmp_path, modules_cache):
    _, _, folder = tiny
    marker = tmp_path / "custom code ran"
    (folder / "custom_llama.py").write_text(
        "from pathlib import Path\n\nfrom transformers import LlamaForCausalLM\n\n"
        f"Path({str(marker)!r}).write_text('imported')\n\n\nclass CustomLlama(LlamaForCausalLM):\n    pass\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "custom_llama.CustomLlama"}
    (folder / "config.json").write_text(json.dumps(config))
    write_manifest(folder)  # as if logged so: the manifest matches, only the code is in question

    off = load_config(paths.DEMO_CONFIG)
    assert off.model.trust_remote_code is False  # the default
    refused = re.escape(f"{folder}/config.json: asks to run code shipped with the model") + ".*trust_remote_code is off"
    for load in (lambda: load_chain(off, [str(folder)]), lambda: load_reward_model(folder),
                 lambda: SeparateCritic.from_reward_model(folder)):
        with pytest.raises(ModelIntegrityError, match=refused):
            load()
    assert not marker.exists()

    on = load_config(paths.DEMO_CONFIG, ["model.trust_remote_code=true"])
    model, _ = load_chain(on, [str(folder)])
    assert type(model).__name__ == "CustomLlama" and marker.is_file()
