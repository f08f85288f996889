"""Load models and tokenizers from a local folder or a hub id: one code path for the tiny model and real ones.

Every local folder is checked before `from_pretrained` sees it (`models.manifest`): pickles and unasked model
code are refused, and a folder that carries a manifest must match it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from models.adapters import merge_adapters
from models.manifest import check_model_folder
from models.timing import LOAD, timed

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(source: str | Path, *, revision: str | None = None, trust_remote_code: bool = False):
    check_model_folder(source, trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(str(source), revision=revision, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@timed(LOAD)
def load_causal_lm(
    source: str | Path,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    dtype: str = "float32",
) -> PreTrainedModel:
    """`AutoModelForCausalLM.from_pretrained`, refusing pickled weights: only safetensors are loaded."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    check_model_folder(source, trust_remote_code=trust_remote_code)
    return AutoModelForCausalLM.from_pretrained(
        str(source),
        revision=revision,
        trust_remote_code=trust_remote_code,
        dtype=DTYPES[dtype],
        use_safetensors=True,
    )


@timed(LOAD)
def load_model_and_tokenizer(
    source: str | Path, *, revision: str | None = None, trust_remote_code: bool = False, dtype: str = "float32",
    adapters: Sequence[str | Path] = (),
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model at `source` with `adapters` merged in order (see `models.adapters`), and its tokenizer: the last
    adapter's when there are adapters (`revision` applies to `source` only)."""
    model = merge_adapters(load_causal_lm(source, revision=revision, trust_remote_code=trust_remote_code,
                                          dtype=dtype), adapters, trust_remote_code=trust_remote_code)
    if adapters:
        return model, load_tokenizer(adapters[-1], trust_remote_code=trust_remote_code)
    return model, load_tokenizer(source, revision=revision, trust_remote_code=trust_remote_code)
