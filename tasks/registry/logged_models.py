"""Models in MLflow: how a stage logs its Hugging Face folder, and how a stage input URI becomes a loadable folder."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import mlflow
import yaml
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from models.loading import load_model_and_tokenizer
from tasks.core import paths
from tasks.core.config import PipelineConfig

# The pyfunc wrapper each kind of model is served with (logged "from code").
_PYFUNC_CODE = {"policy": Path(__file__).with_name("policy_pyfunc.py"),
                "reward": Path(__file__).with_name("reward_pyfunc.py")}
_MODELS_PACKAGE = paths.PROJECT_ROOT / "models"
HF_ARTIFACT = "hf_model"  # name of the Hugging Face folder inside a logged alignflow model
_SERVING_REQUIREMENTS = ["torch", "transformers", "safetensors", "pandas"]
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


def log_hf_model(hf_dir: Path, cfg: PipelineConfig, kind: Literal["policy", "reward"] = "policy") -> str:
    """Log a Hugging Face folder as an MLflow pyfunc model (servable with `mlflow models serve`); returns its URI.

    The model's prompt format travels with it, so a served model formats requests exactly as training did.
    """
    if kind not in _PYFUNC_CODE:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {sorted(_PYFUNC_CODE)}")
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(_PYFUNC_CODE[kind]),
        artifacts={HF_ARTIFACT: str(hf_dir)},
        code_paths=[str(_MODELS_PACKAGE)],
        model_config={
            "prompt_format": cfg.model.prompt_format,
            "prompt_template": cfg.model.prompt_template,
            "max_new_tokens": cfg.eval.max_new_tokens,
        },
        pip_requirements=_SERVING_REQUIREMENTS,
        signature=_SIGNATURES[kind],
    )
    return info.model_uri


def resolve_model_source(uri: str, download_dir: Path) -> str:
    """Turn a stage input URI into something `from_pretrained` accepts.

    `runs:/…` and `models:/…` (MLflow) are downloaded and their Hugging Face folder is returned; an existing
    local folder is used as is; anything else is taken to be a hub id.
    """
    if uri.startswith(("runs:/", "models:/")):
        download_dir.mkdir(parents=True, exist_ok=True)
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(download_dir)))
        return str(_hf_folder(local, uri))
    return uri


def load_stage_model(cfg: PipelineConfig, uri: str, download_dir: Path, dtype: str | None = None):
    """(model, tokenizer) behind a stage input URI, loaded with the config's model settings.

    `model.revision` applies only to the configured pretrained hub model; `dtype` defaults to `model.dtype`.
    """
    return load_model_and_tokenizer(
        resolve_model_source(uri, download_dir),
        revision=cfg.model.revision if uri == cfg.model.pretrained else None,
        trust_remote_code=cfg.model.trust_remote_code,
        dtype=dtype or cfg.model.dtype,
    )


def _hf_folder(model_dir: Path, uri: str) -> Path:
    mlmodel = model_dir / "MLmodel"
    if not mlmodel.is_file():
        raise FileNotFoundError(f"{uri}: no MLmodel file in the downloaded artifacts ({model_dir})")
    flavor = yaml.safe_load(mlmodel.read_text()).get("flavors", {}).get("python_function", {})
    artifact = flavor.get("artifacts", {}).get(HF_ARTIFACT)
    if artifact is None:
        raise ValueError(f"{uri}: not an alignflow model (no {HF_ARTIFACT!r} artifact in its MLmodel)")
    return model_dir / artifact["path"]
