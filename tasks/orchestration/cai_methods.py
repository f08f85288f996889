"""The configs behind Constitutional AI as a method: the CAI config a pipeline config names (`cai.config`), checked
before anything trains, and the pipeline's own config with CAI's data as training data."""

from __future__ import annotations

from pathlib import Path

from tasks.cai.config import CAIConfig, load_cai_config
from tasks.cai.rlaif import PREFERENCES_FILE as RLAIF_PREFERENCES_FILE
from tasks.cai.steps import Inputs
from tasks.cai.supervised import PREFERENCES_FILE, SFT_FILE
from tasks.core.config import PipelineConfig, load_config


def comparison_configs(config_path: Path | str, overrides: list[str] | None) -> tuple[PipelineConfig, CAIConfig | None]:
    """The pipeline's config and its CAI config (None without `cai.config`). The CAI steps run on the pipeline's
    config, so its base model is the one every other method starts from; a bad CAI config, constitution, template
    or prompts file is refused here, before anything trains."""
    cfg = load_config(config_path, overrides)
    if cfg.cai.config is None:
        return cfg, None
    cai = load_cai_config(cfg.cai.config, cfg.cai.overrides)
    Inputs(cai, cfg)
    return cfg, cai


def cai_training_config(cfg: PipelineConfig, cai: CAIConfig) -> PipelineConfig:
    """`cfg` training on CAI's data: SFT on its sft.jsonl (the revisions, and any helpful answers), DPO on its
    AI-labeled pairs (without RLAIF: the revision-over-original pairs). Eval data and every setting stay."""
    out = cai.output_dir.resolve()
    preferences = RLAIF_PREFERENCES_FILE if cai.rlaif.enabled else PREFERENCES_FILE
    data = cfg.data.model_copy(update={"sft_train": str(out / SFT_FILE), "preferences_train": str(out / preferences)})
    return cfg.model_copy(update={"data": data})
