"""Comparison pairs for people to label: two answers per prompt, in a shuffled order that is recorded.

The answers come from two models (the champion against a candidate) or from two samples of one model. Each
pair's order is drawn from the seed, so A is the first model's answer only about half of the time, and
`swapped` on the pair says which. One export folder holds our pairs JSONL, the Label Studio tasks and labelling
config, the Argilla records and a manifest; `log_export` puts the folder on an MLflow run.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from pathlib import Path

import mlflow
import torch
from mlflow import MlflowClient

from models.generation import generate
from models.prompting import Prompt, prompt_formatter
from tasks.core.config import PipelineConfig
from tasks.core.errors import AlignflowError
from tasks.core.hashing import md5_file
from tasks.core.tags import STAGE_TAG, TAG_PREFIX
from tasks.data.writers import write_text
from tasks.feedback.formats import write_argilla, write_labelstudio
from tasks.feedback.records import PAIRS_FILE, Pair, pair_id, write_pairs
from tasks.registry.logged_models import load_stage_model
from tasks.run.lifecycle import tracked_run

EXPORT_MANIFEST = "export_manifest.json"
EXPORT_STAGE = "feedback-export"


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.8
    max_new_tokens: int = 48
    batch_size: int = 32
    seed: int = 0


def resolve_model_uri(uri: str, like: str | None = None) -> str:
    """`@alias` means that alias of `like`'s registered model; a `models:/name@alias` URI becomes the version it
    points at now, so the pairs record which model wrote them even after the alias moves."""
    if uri.startswith("@"):
        if like is None or not like.startswith("models:/"):
            raise AlignflowError(f"{uri}: an alias alone needs --model as a registered model (models:/name@alias)")
        uri = f"models:/{like.removeprefix('models:/').split('@')[0].split('/')[0]}{uri}"
    if uri.startswith("models:/") and "@" in uri:
        name, alias = uri.removeprefix("models:/").split("@", 1)
        try:
            version = MlflowClient().get_model_version_by_alias(name, alias)
        except mlflow.exceptions.MlflowException:
            raise AlignflowError(f"{uri}: registered model {name!r} has no alias {alias!r}") from None
        return f"models:/{name}/{version.version}"
    return uri


def sample_answers(cfg: PipelineConfig, model_uri: str, prompts: list[Prompt], sampling: Sampling, *, samples: int,
                   download_dir: Path) -> list[list[str]]:
    """`samples` sampled answers of one model to each prompt."""
    model, tokenizer = load_stage_model(cfg, model_uri, download_dir)
    format_prompt = prompt_formatter(tokenizer, cfg.model.prompt_format, cfg.model.prompt_template)
    formatted = [format_prompt(p) for p in prompts]
    answers = []
    for index in range(samples):
        with torch.random.fork_rng():  # each draw has its own seed; the caller's RNG is left as it was
            torch.manual_seed(sampling.seed + index)
            answers.append(generate(model, tokenizer, formatted, max_new_tokens=sampling.max_new_tokens,
                                    batch_size=sampling.batch_size, do_sample=True,
                                    temperature=sampling.temperature))
    return [[draw[i] for draw in answers] for i in range(len(prompts))]


def build_pairs(prompts: list[Prompt], first: list[str], second: list[str], *, source_first: str, source_second: str,
                seed: int) -> list[Pair]:
    """One pair per prompt, its order drawn from `seed`. Identical answers make no comparison, and an empty one
    no preference pair (the preference suite rejects blank answers): those prompts are left out; the callers
    count them."""
    rng = random.Random(seed)
    pairs = []
    for index, (prompt, x, y) in enumerate(zip(prompts, first, second, strict=True)):
        swapped = rng.random() < 0.5
        if x == y or not x.strip() or not y.strip():
            continue
        a, b, source_a, source_b = (y, x, source_second, source_first) if swapped else (x, y, source_first,
                                                                                       source_second)
        pairs.append(Pair(pair_id=pair_id(index, prompt), prompt=prompt, answer_a=a, answer_b=b, source_a=source_a,
                          source_b=source_b, swapped=swapped))
    return pairs


def export_pairs(cfg: PipelineConfig, prompts: list[Prompt], *, model_uri: str, against_uri: str | None,
                 sampling: Sampling, download_dir: Path) -> list[Pair]:
    """Champion against candidate (`against_uri`), or two samples of `model_uri` when there is none."""
    if against_uri is None:
        drawn = sample_answers(cfg, model_uri, prompts, sampling, samples=2, download_dir=download_dir / "model")
        first, second = [d[0] for d in drawn], [d[1] for d in drawn]
        sources = (f"{model_uri}#sample-1", f"{model_uri}#sample-2")
    else:
        first = [d[0] for d in sample_answers(cfg, model_uri, prompts, sampling, samples=1,
                                              download_dir=download_dir / "model")]
        # Its own draw (seed + 1), as the second sample of one model would be: the two sides never share noise.
        second = [d[0] for d in sample_answers(cfg, against_uri, prompts, replace(sampling, seed=sampling.seed + 1),
                                               samples=1, download_dir=download_dir / "against")]
        sources = (model_uri, against_uri)
    return build_pairs(prompts, first, second, source_first=sources[0], source_second=sources[1], seed=sampling.seed)


def write_export(pairs: list[Pair], folder: Path, manifest: dict) -> dict[str, Path]:
    """Our pairs, the Label Studio and Argilla files, and the manifest (with the pairs' md5) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"pairs": write_pairs(pairs, folder / PAIRS_FILE)}
    files["labelstudio_tasks"], files["labelstudio_config"] = write_labelstudio(
        pairs, folder, title="Which answer would you rather the assistant gave?")
    files["argilla_records"] = write_argilla(pairs, folder)
    content = {"kind": "alignflow-feedback-export", **manifest, "pairs": len(pairs),
               "pairs_md5": md5_file(files["pairs"]), "swapped": sum(p.swapped for p in pairs)}
    files["manifest"] = write_text(folder / EXPORT_MANIFEST, json.dumps(content, indent=2, sort_keys=True) + "\n")
    return files


def log_export(folder: Path, manifest: dict, *, tags: dict | None = None, nested: bool = False) -> str:
    """An MLflow run holding the export folder (all three formats) and its counts (a child of the active run
    when `nested`); returns the run id."""
    with tracked_run(run_name=EXPORT_STAGE, nested=nested, tags={STAGE_TAG: EXPORT_STAGE, **(tags or {})}) as run:
        mlflow.log_params({f"feedback.{k}": v for k, v in manifest.items() if not isinstance(v, dict | list)})
        content = json.loads((folder / EXPORT_MANIFEST).read_text())
        mlflow.log_metrics({"feedback/pairs": content["pairs"], "feedback/swapped": content["swapped"]})
        mlflow.set_tag(f"{TAG_PREFIX}feedback_pairs_md5", content["pairs_md5"])
        mlflow.log_artifacts(str(folder), artifact_path="feedback_export")
    return run.info.run_id
