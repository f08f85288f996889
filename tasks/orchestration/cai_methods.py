"""The configs behind Constitutional AI's rows in `alignflow compare`: the CAI config the comparison names, checked
against it, and the comparison's own config with CAI's data as training data."""

from __future__ import annotations

from pathlib import Path

from tasks.cai.config import CAIConfig, load_cai_config
from tasks.cai.rlaif import PREFERENCES_FILE as RLAIF_PREFERENCES_FILE
from tasks.cai.steps import Inputs
from tasks.cai.supervised import PREFERENCES_FILE, SFT_FILE
from tasks.core.config import PipelineConfig, load_config
from tasks.core.errors import ConfigError


def comparison_configs(config_path: Path | str, overrides: list[str] | None) -> tuple[PipelineConfig, CAIConfig | None]:
    """The comparison's config and its CAI config (None without `compare.cai_config`). The CAI steps run on the
    comparison's config, so its base model is the one every other method starts from; a CAI config written for
    another base model is refused, as is a bad constitution, template or prompts file, before anything trains."""
    cfg = load_config(config_path, overrides)
    path = cfg.compare.cai_config
    if path is None:
        return cfg, None
    cai = load_cai_config(path, cfg.compare.cai_overrides)
    theirs = load_config(cai.pipeline_config, cai.pipeline_overrides)
    if theirs.model != cfg.model:
        raise ConfigError(f"{config_path}: compare.cai_config {path} is written for the base model of "
                          f"{cai.pipeline_config} (its model section differs); the CAI rows must start from the same "
                          "base model as the other methods")
    Inputs(cai, cfg)
    return cfg, cai


def cai_training_config(cfg: PipelineConfig, cai: CAIConfig) -> PipelineConfig:
    """`cfg` training on CAI's data: SFT on its sft.jsonl (the revisions, and any helpful answers), DPO on its
    AI-labeled pairs (without RLAIF: the revision-over-original pairs). Eval data and every setting stay."""
    out = cai.output_dir.resolve()
    preferences = RLAIF_PREFERENCES_FILE if cai.rlaif.enabled else PREFERENCES_FILE
    data = cfg.data.model_copy(update={"sft_train": str(out / SFT_FILE), "preferences_train": str(out / preferences)})
    return cfg.model_copy(update={"data": data})
