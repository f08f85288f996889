"""Models in MLflow: how a stage logs its Hugging Face folder, and how it loads the model behind an input URI."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import mlflow
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from models.loading import load_model_and_tokenizer
from models.manifest import check_model_folder, write_manifest
from models.reward import load_reward_model
from tasks.core import paths
from tasks.core.config import PipelineConfig
from tasks.registry.hf_folders import HF_ARTIFACT, model_chain, resolve_model_source

# The pyfunc wrapper each kind of model is served with (logged "from code").
_PYFUNC_CODE = {"policy": Path(__file__).with_name("policy_pyfunc.py"),
                "reward": Path(__file__).with_name("reward_pyfunc.py")}
_MODELS_PACKAGE = paths.PROJECT_ROOT / "models"
_HF_FOLDERS_CODE = Path(__file__).with_name("hf_folders.py")  # served adapters resolve their base with it
__all__ = ["HF_ARTIFACT", "load_chain", "load_stage_model", "load_stage_reward_model", "log_hf_model",
           "logged_model_id", "logged_model_name", "model_chain", "resolve_model_source"]
_SERVING_REQUIREMENTS = ["torch", "transformers", "peft", "safetensors", "pandas"]
_SIGNATURES = {
    # A policy takes raw user prompts and answers with greedy completions; max_new_tokens may be set per request.
    "policy": ModelSignature(
        inputs=Schema([ColSpec("string", "prompt")]),
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec("max_new_tokens", "long", 48)]),
    ),
    # A reward model scores (prompt, response) pairs.
    "reward": ModelSignature(
        inputs=Schema([ColSpec("string", "prompt"), ColSpec("string", "response")]),
        outputs=Schema([ColSpec("double")]),
    ),
}


# MLflow refuses these in a logged model's name; a config may well be named "concurrent-0.2".
_NOT_IN_MODEL_NAMES = re.compile(r"[/:.%\"']")


def logged_model_name(config_name: str, stage: str) -> str:
    """"smollm2-ppo": the config's name and the stage, with what MLflow refuses in a model name made a '-'."""
    return _NOT_IN_MODEL_NAMES.sub("-", f"{config_name}-{stage}")


def log_hf_model(hf_dir: Path, cfg: PipelineConfig, stage: str, kind: Literal["policy", "reward"] = "policy") -> str:
    """Log a Hugging Face folder as an MLflow pyfunc model (servable with `mlflow models serve`); returns its URI.
    It is named by the config and the stage that trained it ("smollm2-ppo"), so the Models tab tells them apart.

    The model's prompt format travels with it, so a served model formats requests exactly as training did. An
    adapter folder (LoRA) is logged as it is: it names its base model, which serving loads and merges.

    The folder is logged with its sha256 manifest (`models.manifest`), which every later load checks: the one
    the save path wrote, checked here so that a folder changed since is not logged, or a new one.
    """
    if kind not in _PYFUNC_CODE:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {sorted(_PYFUNC_CODE)}")
    if not check_model_folder(hf_dir, trust_remote_code=cfg.model.trust_remote_code):
        write_manifest(hf_dir)  # a folder not written by `models.saving`
    info = mlflow.pyfunc.log_model(
        name=logged_model_name(cfg.name, stage),
        python_model=str(_PYFUNC_CODE[kind]),
        artifacts={HF_ARTIFACT: str(hf_dir)},
        code_paths=[str(_MODELS_PACKAGE), str(_HF_FOLDERS_CODE)],
        model_config={
            "prompt_format": cfg.model.prompt_format,
            "prompt_template": cfg.model.prompt_template,
            "max_new_tokens": cfg.eval.max_new_tokens,
        },
        pip_requirements=_SERVING_REQUIREMENTS,
        signature=_SIGNATURES[kind],
    )
    return info.model_uri


def logged_model_id(uri: str | None) -> str | None:
    """The MLflow logged model behind a stage's model URI (`models:/<model id>`, or a registered
    `models:/<name>/<version>`), so metrics measured on it can be linked to it; None for anything else."""
    if not uri or not uri.startswith("models:/"):
        return None
    path = uri.removeprefix("models:/")
    if "/" not in path:
        return path
    name, version = path.rsplit("/", 1)
    return mlflow.MlflowClient().get_model_version(name, version).model_id


def load_stage_model(cfg: PipelineConfig, uri: str, download_dir: Path, dtype: str | None = None):
    """(model, tokenizer) behind a stage input URI, loaded with the config's model settings, any LoRA adapters
    merged (`models.adapters`).

    `model.revision` applies only to the configured pretrained hub model; `dtype` defaults to `model.dtype`.
    """
    return load_chain(cfg, model_chain(uri, download_dir), dtype)


def load_chain(cfg: PipelineConfig, chain: list[str], dtype: str | None = None):
    """(model, tokenizer) of a resolved chain: full weights, then adapters merged in order."""
    return load_model_and_tokenizer(chain[0], revision=_revision(cfg, chain[0]),
                                    trust_remote_code=cfg.model.trust_remote_code, dtype=dtype or cfg.model.dtype,
                                    adapters=chain[1:])


def load_stage_reward_model(cfg: PipelineConfig, uri: str, download_dir: Path, dtype: str | None = None,
                            init_seed: int | None = None):
    """(reward model, tokenizer) behind a stage input URI: a reward model, or a policy given a new score head."""
    chain = model_chain(uri, download_dir)
    return load_reward_model(chain[0], revision=_revision(cfg, chain[0]), trust_remote_code=cfg.model.trust_remote_code,
                             dtype=dtype or cfg.model.dtype, init_seed=init_seed, adapters=chain[1:])


def _revision(cfg: PipelineConfig, source: str) -> str | None:
    return cfg.model.revision if source == cfg.model.pretrained else None
