"""LoRA stages keep adapters, not model copies: an adapter folder names its base, and loading merges the chain.

An adapter folder is what peft saves (`adapter_config.json`, `adapter_model.safetensors`), plus the tokenizer
and `alignflow_base.json`, which names the model the adapter was trained on: a model URI, a local folder or a
hub id, with its revision. That base may itself be an adapter folder, so a model is a chain: full weights
first, then adapters in the order they were trained. Loading a chain loads the weights and merges each adapter
into them (`merge_and_unload`), giving an ordinary model, exactly the one training ended with.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from peft import PeftConfig, PeftModel

from models.manifest import check_model_folder

ADAPTER_CONFIG = "adapter_config.json"
BASE_FILE = "alignflow_base.json"


def is_adapter_folder(source: str | Path) -> bool:
    return (Path(source) / ADAPTER_CONFIG).is_file()


def adapter_base(folder: str | Path) -> tuple[str, str | None]:
    """(base model source, its hub revision) of an adapter folder."""
    path = Path(folder) / BASE_FILE
    if not path.is_file():
        raise ValueError(f"{folder}: an adapter folder without {BASE_FILE}, so its base model is unknown")
    base = json.loads(path.read_text(encoding="utf-8"))
    return base["base_model"], base.get("revision")


def adapter_chain(source: str, fetch: Callable[[str], str]) -> list[str]:
    """[full-weights source, adapter folders...] behind `source`, following each adapter's base.

    `fetch` turns a base model reference into something local to load (a folder, or a hub id as is).
    """
    chain = [source]
    while is_adapter_folder(chain[0]):
        if len(chain) > 16:
            raise ValueError(f"{source}: more than 16 adapters deep; does an adapter name itself as its base?")
        base, _ = adapter_base(chain[0])
        chain.insert(0, fetch(base))
    return chain


def merge_adapters(model, adapters: Sequence[str | Path], *, trust_remote_code: bool = False):
    """`model` with each adapter folder merged into its weights, in order, each checked first (`models.manifest`).

    Each adapter is attached as a plain `PeftModel`, whatever task it was trained for: a reward model starts
    from the SFT model, so a causal-LM adapter must merge into a sequence classifier too (the task-specific
    wrapper would ask the classifier for generation methods it lacks). Merging needs only the weights.
    """
    for adapter in adapters:
        check_model_folder(adapter, trust_remote_code=trust_remote_code)
        config = PeftConfig.from_pretrained(str(adapter))
        config.task_type = None
        model = PeftModel.from_pretrained(model, str(adapter), config=config).merge_and_unload()
    return model


def is_peft_model(model) -> bool:
    return isinstance(model, PeftModel)


def save_adapter(model: PeftModel, tokenizer, folder: Path, base_model: str, revision: str | None = None,
                 state_dict: dict | None = None) -> None:
    """The trained adapters (safetensors), the tokenizer, and which base they were trained on, into `folder`;
    the adapters are read from `state_dict` (the whole model's, gathered from its shards) when given."""
    model.save_pretrained(folder, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(folder)
    (Path(folder) / BASE_FILE).write_text(json.dumps({"base_model": base_model, "revision": revision}, indent=2)
                                          + "\n", encoding="utf-8")
