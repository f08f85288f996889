"""What every CAI step shares: the prompts it works on, the models it uses, its key and its MLflow run.

A step's key hashes only what can change its records (model identities, generation settings, the
constitution, the template files, the seed, and the code version of the step's own module and what it imports,
`tasks.core.code_version`), not batch sizes: the key names the folder of its progress file, so a long generation
job resumes after an edit to code it does not run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import mlflow
from pydantic import BaseModel, ConfigDict

from tasks.cai.backends import Backend, check_http_formats, open_backend
from tasks.cai.config import CAIConfig, Constitution, constitution_sha256, load_constitution
from tasks.cai.prompts import Template, load_templates, prompt_id
from tasks.core.code_version import code_version
from tasks.core.config import PipelineConfig
from tasks.core.errors import DataValidationError
from tasks.core.lineage import Lineage
from tasks.core.tags import CONSTITUTION_TAG
from tasks.data.readers import read_rows
from tasks.run.contract import StageResult, stage_run, work_dir


class ModelSources(BaseModel):
    """The models the steps use: a URI to load (local backends) and an identity for keys and lineage."""

    model_config = ConfigDict(frozen=True)

    policy_uri: str | None
    policy_id: str
    feedback_uri: str | None
    feedback_id: str


def model_sources(cai: CAIConfig, stage: StageResult | None) -> ModelSources:
    """Resolve `model_uri: null`: the policy is the model of the pipeline stage `policy_stage` (the flow ran it),
    the feedback model the policy."""
    policy_uri, policy_id = cai.policy.model_uri, cai.policy.identity()
    if cai.policy.kind == "local" and policy_uri is None:
        if stage is None:
            raise ValueError(f"policy.model_uri is null, so the flow must run the {cai.policy_stage} stage first")
        policy_uri, policy_id = stage.model_uri, f"stage:{cai.policy_stage}:{stage.cache_key}"
    feedback_uri, feedback_id = cai.feedback.model_uri, cai.feedback.identity()
    if cai.feedback.kind == "local" and feedback_uri is None:
        feedback_uri, feedback_id = policy_uri, policy_id
    return ModelSources(policy_uri=policy_uri, policy_id=policy_id, feedback_uri=feedback_uri,
                        feedback_id=feedback_id)


class Inputs:
    """The files a step reads, loaded once: prompts, constitution (and its hash) and templates."""

    def __init__(self, cai: CAIConfig, cfg: PipelineConfig):
        self.prompts_path = Path(cai.prompts_file or cfg.data.path("red_team_prompts"))
        self.prompts = read_prompts(self.prompts_path, cai.limit, kinds=cai.prompt_kinds)
        self.helpful_prompts = (read_prompts(Path(cai.helpful_prompts_file), kinds=cai.helpful_kinds)
                                if cai.helpful_prompts_file else [])
        self.constitution: Constitution = load_constitution(cai.constitution)
        self.constitution_sha256 = constitution_sha256(cai.constitution)
        self.templates: dict[str, Template] = load_templates(cai.templates)
        check_http_formats(cai.policy, cai.feedback, cai.critique.format, cfg.model.prompt_format)


def read_prompts(path: Path, limit: int | None = None, kinds: list[str] | None = None) -> list[tuple[str, str]]:
    """(id, prompt) for each distinct prompt, in file order; the id is a hash of the prompt's text. A conversational
    prompt or `messages` (TRL's format) gives its first user turn; `kinds` keeps rows whose `kind` is one of them."""
    rows = read_rows(path)
    column = "prompt" if "prompt" in rows else "messages" if "messages" in rows else None
    if column is None:
        raise DataValidationError(f"{path}: no `prompt` or `messages` column")
    if kinds is not None and "kind" not in rows:
        raise DataValidationError(f"{path}: no `kind` column to select the kinds {kinds} from")
    seen: dict[str, str] = {}
    for i, (row, value) in enumerate(zip(rows["row"], rows[column], strict=True)):
        if kinds is not None and rows["kind"][i] not in kinds:
            continue
        prompt = value if isinstance(value, str) else _first_user_turn(value)
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataValidationError(f"{path}: row {row}: `{column}` must be a non-empty string or hold a user turn")
        seen.setdefault(prompt_id(prompt), prompt)
    prompts = list(seen.items())
    return prompts[:limit] if limit else prompts


def _first_user_turn(messages) -> str | None:
    if not isinstance(messages, list):
        return None
    return next((turn.get("content") for turn in messages if isinstance(turn, dict) and turn.get("role") == "user"),
                None)


def step_key(step: str, *, code: str, **parts) -> str:
    """The step's key: what can change its records, and the version of `code`, the step's module."""
    payload = {"step": step, "code": code_version(code), **parts}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def step_dir(cfg: PipelineConfig, step: str, key: str) -> Path:
    return work_dir(cfg, f"cai-{step}", key)


def backend_for(role: Literal["policy", "feedback"], cai: CAIConfig, cfg: PipelineConfig,
                models: ModelSources) -> Backend:
    sources = {"policy": (cai.policy, models.policy_uri), "feedback": (cai.feedback, models.feedback_uri)}
    if role not in sources:
        raise ValueError(f"unknown role {role!r}; expected 'policy' or 'feedback'")
    config, uri = sources[role]
    download = cfg.work_dir / "cai-models" / hashlib.sha256(str(uri).encode()).hexdigest()[:16]
    return open_backend(config, model_uri=uri, pipeline=cfg, stop=cai.stop, download_dir=download)


@contextmanager
def step_run(step: str, cai: CAIConfig, cfg: PipelineConfig, lineage: Lineage, *, key: str, sections: tuple[str, ...],
             inputs: Inputs, code: str, parents: Mapping[str, str | None] | None = None) -> Iterator[mlflow.ActiveRun]:
    """The step's MLflow child run (`tasks.run.contract.stage_run`) plus its CAI settings and the constitution hash."""
    parents = {name: uri for name, uri in (parents or {}).items() if uri}
    with stage_run(f"cai-{step}", cfg, lineage, cache_key=key, sections=(), parents=parents, code=code) as run:
        params = cai.flat_params()
        mlflow.log_params({k: v for k, v in params.items() if k.split(".")[1] in sections})
        mlflow.set_tag(CONSTITUTION_TAG, inputs.constitution_sha256)
        yield run
