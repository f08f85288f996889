"""The Constitutional AI config and the constitution: typed schemas, YAML loaders, `--set a.b=c` overrides.

Same rules as `tasks.core.config`: every config field has a default and a one-line help, and an unknown key or a
bad value raises `ConfigError` naming the key path. The constitution is content, not settings: its
principles and their fields are required, and a missing one is named the same way
(`constitution.yaml: key 'principles.0.revision_request': Field required`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from tasks.core import paths
from tasks.core.config_files import HashableConfig, Section, load_config_file, read_yaml_mapping, validate_model

PROMPTS_DIR = paths.CONFIGS_DIR / "prompts"
# The two prompt sets of the CAI paper: red-team prompts, whose answers should decline, and helpful prompts (the
# world's benign and sound-harmful requests), whose answers should help. A principle or example serves one or both.
PromptSet = Literal["red_team", "helpful"]
_APPLIES_TO = "The prompt sets it serves: red_team (answers that should decline), helpful (answers that should help)."


# ------------------------------------------------------------------------------------------ the constitution


class Principle(Section):
    name: str = Field(min_length=1, description="Short id, recorded with every critique and label.")
    critique_request: str = Field(min_length=1, description="Asks the model to point out what breaks the principle.")
    revision_request: str = Field(min_length=1, description="Asks the model to rewrite the response to follow it.")
    preference_question: str = Field(
        min_length=1, description="The multiple-choice question the feedback model answers when labeling pairs."
    )
    applies_to: list[PromptSet] = Field(["red_team"], min_length=1, description=_APPLIES_TO)


class FewShot(Section):
    """One worked critique-revision, shown before the real prompt."""

    prompt: str = Field(min_length=1, description="The user request.")
    response: str = Field(min_length=1, description="The original assistant response.")
    critique_request: str = Field(min_length=1, description="The critique request of the example.")
    critique: str = Field(min_length=1, description="The example critique.")
    revision_request: str = Field(min_length=1, description="The revision request of the example.")
    revision: str = Field(min_length=1, description="The example revision.")
    applies_to: list[PromptSet] = Field(["red_team"], min_length=1, description=_APPLIES_TO)


class Constitution(Section):
    name: str = Field("constitution", description="Name of the constitution, for humans.")
    principles: list[Principle] = Field(min_length=1, description="The principles; each round draws one.")
    few_shots: list[FewShot] = Field(default_factory=list, description="Worked examples for the prompts.")

    @field_validator("principles")
    @classmethod
    def _unique_names(cls, principles: list[Principle]) -> list[Principle]:
        names = [p.name for p in principles]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate principle name(s) {duplicates}")
        if not any("red_team" in p.applies_to for p in principles):
            raise ValueError("no principle applies to red_team prompts")
        return principles

    def principles_for(self, prompts: PromptSet) -> list[Principle]:
        return [p for p in self.principles if prompts in p.applies_to]

    def few_shots_for(self, prompts: PromptSet) -> list[FewShot]:
        return [shot for shot in self.few_shots if prompts in shot.applies_to]


# -------------------------------------------------------------------------------------------- the run config


class BackendSection(Section):
    """Where a model runs: in this process (transformers) or behind an OpenAI-compatible HTTP server."""

    kind: Literal["local", "http"] = Field("local", description="`local`: transformers in-process; "
                                           "`http`: /v1/completions.")
    model_uri: str | None = Field(
        None, description="local: folder, runs:/, models:/ or hub id. None: the policy's model (for the policy: "
        "the SFT model the flow trains with the pipeline's stages)."
    )
    url: str = Field("http://127.0.0.1:8000/v1", description="http: base URL of the API, up to and including /v1.")
    model_name: str | None = Field(None, description="http: the `model` field of each request; None leaves it out.")
    batch_size: int = Field(16, gt=0, description="Prompts per forward pass (local) or per request (http).")
    timeout_s: float = Field(60.0, gt=0, description="http: seconds to wait for one response.")
    max_retries: int = Field(3, ge=0, description="http: retries after a connection error, 429 or 5xx.")
    backoff_s: float = Field(1.0, ge=0, description="http: wait before the first retry; doubles with each retry.")
    top_logprobs: int = Field(5, ge=2, le=20, description="http: next-token log-probs requested to score a choice.")

    def identity(self) -> str:
        """What names the model for caching and lineage (settings that cannot change outputs are left out)."""
        return f"http:{self.url}#{self.model_name or ''}" if self.kind == "http" else f"local:{self.model_uri}"


class PromptTemplates(Section):
    critique: Path = Field(PROMPTS_DIR / "critique.jinja", description="Jinja template of the critique prompt.")
    revision: Path = Field(PROMPTS_DIR / "revision.jinja", description="Jinja template of the revision prompt.")
    choice: Path = Field(PROMPTS_DIR / "choice.jinja", description="Jinja template of the multiple-choice prompt.")


class RespondSection(Section):
    max_new_tokens: int = Field(48, gt=0, description="Tokens per initial response of the helpful model (greedy).")


class CritiqueSection(Section):
    rounds: int = Field(2, ge=1, description="Critique-revision rounds per prompt; each round draws a principle.")
    few_shots: int | None = Field(None, ge=0, description="Few-shot examples shown per prompt; None: all of them.")
    format: Literal["text", "chat"] = Field(
        "text", description="text: the template (few-shots inside) is the text the model continues; chat: each "
        "few-shot example is a user turn (the template rendered for it) and its answer an assistant turn, the real "
        "request the last user turn, all through the pipeline's prompt format (for chat models)."
    )
    keep: Literal["changed", "refusals"] = Field(
        "changed", description="Which final revisions become data. changed: any non-empty one that differs from "
        "the original; refusals: only those the refusal detector reads as declining (red-team prompts should be "
        "declined), and a preference pair only when the original did not already decline."
    )
    critique: bool = Field(True, description="Critique before revising; false revises from the revision request "
                           "alone (Bai et al. 2022 found critiques matter little for revisions; "
                           "a weak critic's may hurt).")
    helpful: bool = Field(
        False, description="Also critique and revise the answers to the helpful prompts, under the principles that "
        "apply to them (a needless refusal or hedge is what the critique looks for). A helpful answer that declines "
        "is replaced in sft.jsonl by its final revision where that helps; with rlaif.pairs=revisions, an answer and "
        "its revision of which exactly one declines become a helpful-versus-over-refusal pair for the AI labeler."
    )
    critique_max_new_tokens: int = Field(32, gt=0, description="Tokens per critique (greedy).")
    revision_max_new_tokens: int = Field(48, gt=0, description="Tokens per revision (greedy).")


class RlaifSection(Section):
    enabled: bool = Field(True, description="Label pairs of policy responses with the feedback model.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the two policy responses per prompt.")
    max_new_tokens: int = Field(48, gt=0, description="Tokens per sampled policy response.")
    options: tuple[str, str] = Field(("A", "B"), description="Answer labels scored by log-prob; "
                                     "the template ends before them.")
    pairs: Literal["samples", "revisions"] = Field(
        "samples", description="samples: two sampled policy responses per prompt; revisions: the original response "
        "and its final revision (the labeler, not the assumption that a revision is better, picks the chosen one)."
    )
    min_confidence: float = Field(
        0.5, ge=0.5, lt=1, description="Keep a pair only if its calibrated P(chosen), the two orders' log-odds "
        "averaged (which cancels a constant position bias), is at least this; 0.5 keeps every pair with a preference."
    )

    @field_validator("options")
    @classmethod
    def _distinct(cls, options: tuple[str, str]) -> tuple[str, str]:
        if options[0] == options[1] or not all(options):
            raise ValueError("needs two different, non-empty labels")
        return options


class CAIConfig(HashableConfig):
    _param_prefix: ClassVar[str] = "cai."

    name: str = Field("cai", description="Run name prefix in MLflow.")
    constitution: Path = Field(paths.CONFIGS_DIR / "constitution.yaml", description="The constitution YAML.")
    prompts_file: Path | None = Field(None, description="Red-team prompts (JSONL/Parquet, a `prompt` or `messages` "
                                      "column; a conversational prompt gives its first user turn); None: "
                                      "the pipeline's data.red_team_prompts.")
    prompt_kinds: list[str] | None = Field(
        None, description="Take only prompts_file rows whose `kind` column is one of these (e.g. [harmful] from a "
        "world's preferences_train.jsonl: the requests the other methods train on); None: every row."
    )
    limit: int | None = Field(None, gt=0, description="Use only the first N distinct prompts; None: all.")
    helpful_prompts_file: Path | None = Field(
        None, description="Benign prompts the policy answers as it is; its answers that do not refuse join sft.jsonl "
        "(the CAI paper's helpfulness samples, so SFT on revisions does not teach refusing everything). JSONL or "
        "Parquet with a `prompt` or `messages` column."
    )
    helpful_kinds: list[str] | None = Field(
        None, description="Take only rows whose `kind` column is one of these (e.g. [benign, sound_harmful] from a "
        "world's sft_train.jsonl); None: every row."
    )
    policy_stage: Literal["sft", "base"] = Field(
        "sft", description="With policy.model_uri null: the pipeline stage whose model is the policy (trained or "
        "reused from the cache): sft, or base (the pretrained model itself)."
    )
    seed: int = Field(0, description="Seed for principle draws and sampled responses.")
    output_dir: Path = Field(Path("data-cai"), description="Folder of the new datasets; versioned with `dvc add`.")
    dvc_add: bool = Field(True, description="Version output_dir with DVC (it must lie inside a DVC repository).")
    completion_prefix: str = Field(" ", description="Put before every stored response: plain-format completions "
                                   "start with a space.")
    stop: list[str] = Field(["\n\n", "\nUser:"], description="A generated text ends at the first of these strings.")
    policy: BackendSection = Field(default_factory=BackendSection, description="The helpful model being improved.")
    feedback: BackendSection = Field(default_factory=BackendSection, description="Critic, reviser and labeler.")
    templates: PromptTemplates = Field(default_factory=PromptTemplates, description="Prompt template files.")
    respond: RespondSection = Field(default_factory=RespondSection, description="Initial responses.")
    critique: CritiqueSection = Field(default_factory=CritiqueSection, description="Critique-revision rounds.")
    rlaif: RlaifSection = Field(default_factory=RlaifSection, description="AI preference labels.")

    @model_validator(mode="after")
    def _helpful_critique_has_prompts(self) -> CAIConfig:
        if self.critique.helpful and self.helpful_prompts_file is None:
            raise ValueError("critique.helpful needs helpful_prompts_file: the helpful prompts to critique")
        return self

    @model_validator(mode="after")
    def _feedback_has_a_model(self) -> CAIConfig:
        if self.feedback.kind == "local" and self.feedback.model_uri is None and self.policy.kind == "http":
            raise ValueError("feedback.model_uri is needed: the policy is served over http, so there is no local "
                             "policy model to reuse")
        return self



# ------------------------------------------------------------------------------------------------- loading

def load_cai_config(path: Path | str, overrides: list[str] | None = None) -> CAIConfig:
    """Read a CAI YAML (following `extends:`), apply `key.path=value` overrides and validate it."""
    return load_config_file(CAIConfig, path, overrides)


def load_constitution(path: Path | str) -> Constitution:
    return validate_model(Constitution, read_yaml_mapping(Path(path), "constitution"), str(path))


def constitution_sha256(path: Path | str) -> str:
    """The hash recorded in lineage: of the file's bytes, so `sha256sum` on the file gives the same value."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()



