"""Stage: the base model every later stage starts from.

With `model.pretrained` set to a hub id or local folder, the base is that model, loaded as is. Set to a GGUF
file (a path, or `pkg://<package>/<file>.gguf` inside an installed package), the stage converts it once to a
safetensors Hugging Face folder, keyed by the file's sha256, and logs it with that sha256 as lineage. Without
it, the stage trains a byte-level BPE tokenizer on the training text of the validated datasets (it runs after
the validate stage then, and checks their token lengths with the new tokenizer) and builds the tiny Llama
from `model.tiny`. Either logged model lands in MLflow in Hugging Face format, so later stages load it exactly as
they would load a hub model.
"""

from __future__ import annotations

import shutil
from functools import lru_cache
from pathlib import Path

import mlflow

from models.gguf import convert_gguf, gguf_path, is_gguf_source
from models.prompting import prompt_formatter
from models.saving import save_hf_model
from models.tiny import build_tiny_llama, train_tokenizer
from tasks.core.config import PipelineConfig
from tasks.core.errors import ConfigError
from tasks.core.hashing import sha256_file
from tasks.core.lineage import Lineage
from tasks.core.tags import TAG_PREFIX
from tasks.data.conversations import text_of
from tasks.data.expectations import DATASET_KINDS, validate_files
from tasks.data.readers import read_rows
from tasks.data.validated import validated_file
from tasks.registry.logged_models import log_hf_model
from tasks.run.contract import StageResult, stage_key, stage_run, work_dir

STAGE = "base_model"
SECTIONS = ("model",)
_TOKENIZER_SOURCES = {"sft_train": ("prompt", "completion", "messages"),
                      "preferences_train": ("prompt", "chosen", "rejected")}


def needs_validated_data(cfg: PipelineConfig) -> bool:
    """Whether the base model is made from the data (the tiny model's tokenizer): then it runs after validation."""
    return cfg.model.pretrained is None


def base_model_key(cfg: PipelineConfig, data: StageResult | None = None) -> str:
    return stage_key(STAGE, cfg, _sections(cfg), _input_hashes(cfg, data), code=__name__)


def run_base_model(cfg: PipelineConfig, lineage: Lineage, *, data: StageResult | None = None) -> StageResult:
    """The base model; the tiny one needs `data`, the validate stage's result, to train its tokenizer on."""
    key = base_model_key(cfg, data)
    with stage_run(STAGE, cfg, lineage, cache_key=key, sections=_sections(cfg), code=__name__) as run:
        if cfg.model.pretrained is not None and is_gguf_source(cfg.model.pretrained):
            source = _gguf_file(cfg)
            mlflow.set_tags({f"{TAG_PREFIX}base.pretrained": cfg.model.pretrained,
                             f"{TAG_PREFIX}base.gguf_sha256": _input_hashes(cfg, data)["gguf_sha256"]})
            converted = convert_gguf(source, work_dir(cfg, STAGE, key) / "hf_model")
            model_uri = log_hf_model(converted, cfg, STAGE)
            shutil.rmtree(converted)  # MLflow holds the model now; a second copy would only fill the disk
        elif cfg.model.pretrained is not None:
            mlflow.set_tag(f"{TAG_PREFIX}base.pretrained", cfg.model.pretrained)
            model_uri = cfg.model.pretrained
        else:
            hf_dir = _build_tiny(cfg, data, work_dir(cfg, STAGE, key))
            model_uri = log_hf_model(hf_dir, cfg, STAGE)
    return StageResult(
        stage=STAGE,
        run_id=run.info.run_id,
        cache_key=key,
        model_uri=model_uri,
        output_hashes={"model": _model_hash(cfg, data, key)},
        input_hashes=_input_hashes(cfg, data),
    )


def _model_hash(cfg: PipelineConfig, data: StageResult | None, key: str) -> str:
    """What identifies the model the later stages start from. The stage key of the tiny model also covers the
    eval files and the validation settings (its token-length check reads them), which do not change the model:
    a new eval file must not retrain everything downstream."""
    if not needs_validated_data(cfg):
        return key
    hashes = {name: data.output_hashes[name] for name in _TOKENIZER_SOURCES}
    return stage_key(STAGE, cfg, SECTIONS, hashes, code=__name__)


def _sections(cfg: PipelineConfig) -> tuple[str, ...]:
    """The tiny model's stage also checks token lengths, so the validation settings are among its inputs."""
    return (*SECTIONS, "validation") if needs_validated_data(cfg) else SECTIONS


def _input_hashes(cfg: PipelineConfig, data: StageResult | None) -> dict[str, str]:
    if cfg.model.pretrained is not None and is_gguf_source(cfg.model.pretrained):
        return {"gguf_sha256": _sha256(_gguf_file(cfg))}
    if cfg.model.pretrained is not None:
        return {"pretrained": f"{cfg.model.pretrained}@{cfg.model.revision or 'default'}"}
    if data is None:
        raise ValueError("the tiny base model is trained on validated data: run the validate stage first")
    return dict(data.output_hashes)  # every file: the token-length check reads them all


def _gguf_file(cfg: PipelineConfig) -> Path:
    try:
        return gguf_path(cfg.model.pretrained)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(str(err)) from None


@lru_cache(maxsize=4)
def _sha256_cached(path: Path, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def _sha256(path: Path) -> str:
    """The file's sha256, hashed once per file version: the key is computed several times per run."""
    stat = path.stat()
    return _sha256_cached(path.resolve(), stat.st_size, stat.st_mtime_ns)


def _build_tiny(cfg: PipelineConfig, data: StageResult, stage_dir: Path) -> Path:
    """Tokenizer on the validated training text, the token lengths of every validated file checked with it, then
    a randomly initialised Llama sized to it."""
    tiny = cfg.model.tiny
    format_prompt = prompt_formatter(None, cfg.model.prompt_format, cfg.model.prompt_template)
    files = {name: validated_file(data, name, stage_dir / "data") for name in DATASET_KINDS if name in data.outputs}
    tokenizer = train_tokenizer(_training_text(files, format_prompt), tiny.vocab_size, tiny.max_position_embeddings)
    _check_token_lengths(cfg, files, tokenizer, format_prompt, stage_dir / "token_lengths")
    model = build_tiny_llama(
        tokenizer,
        hidden_size=tiny.hidden_size,
        num_hidden_layers=tiny.num_hidden_layers,
        num_attention_heads=tiny.num_attention_heads,
        intermediate_size=tiny.intermediate_size,
        max_position_embeddings=tiny.max_position_embeddings,
        init_seed=tiny.init_seed,
    )
    mlflow.log_params({"base.num_parameters": model.num_parameters(), "base.vocab_size": len(tokenizer)})
    out = stage_dir / "hf_model"
    return save_hf_model(model, tokenizer, out)


def _training_text(files: dict[str, Path], format_prompt):
    """Every string the model will be trained on, with prompts formatted as the model will see them."""
    for name, columns in _TOKENIZER_SOURCES.items():
        rows = read_rows(files[name])
        for column in columns:
            for value in rows.get(column, []):
                if column == "prompt" and isinstance(value, str):
                    yield format_prompt(value)
                elif (text := text_of(value)) is not None:  # text, or the contents of turns
                    yield text


def _check_token_lengths(cfg: PipelineConfig, files: dict[str, Path], tokenizer, format_prompt,
                         report_dir: Path) -> None:
    """The validate stage's length expectations, with the tokenizer that did not exist when it ran. A failure is
    a data error with its report logged, like any other expectation."""
    try:
        validate_files(files, tokenizer=tokenizer, format_prompt=format_prompt,
                       max_length=cfg.validation.max_length, on_failure="fail",
                       max_quarantine_fraction=cfg.validation.max_quarantine_fraction, out_dir=report_dir,
                       suite="token_lengths")
    finally:
        if report_dir.is_dir():
            mlflow.log_artifacts(str(report_dir), artifact_path="validation")
