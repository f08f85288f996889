"""The safety-world flow: the base model answers the world's requests; the datasets become a DVC version.

It only composes steps, top to bottom; the steps live in `tasks.world`.
"""

from __future__ import annotations

from prefect import flow

from tasks.base_model import needs_validated_data
from tasks.core import stage_names as stage
from tasks.core.config import load_config
from tasks.core.errors import ConfigError
from tasks.core.secrets import install_log_redaction
from tasks.orchestration.parent_run import flow_lineage, parent_run
from tasks.orchestration.stage_tasks import WORLD_TASK, run_stage
from tasks.run.contract import StageResult
from tasks.run.tracking import configure_tracking
from tasks.world.build import CATALOGUE_TAG
from tasks.world.catalogue import catalogue_sha256, load_catalogue


@flow(name="safety_world_data")
def safety_world_data(config_path: str, overrides: list[str] | None = None) -> dict[str, StageResult]:
    """The real-language safety world for the config's base model, written to `data.dir`; one MLflow parent run.

    Steps:
    1. base_model: the pretrained model (a GGUF file is converted once).
    2. world: the base model answers every request of `world.catalogue` (sampled for harmful ones, greedy for
       benign ones); SFT demos, on-policy preference pairs, held-out eval files; `dvc add`; MLflow artifacts.
    """
    install_log_redaction()
    cfg = load_config(config_path, overrides)
    if needs_validated_data(cfg):
        raise ConfigError("model.pretrained: the safety world is a pretrained base model's own answers; "
                          "the tiny model is built from data that this flow would make")
    configure_tracking(cfg)
    load_catalogue(cfg.world.catalogue)  # a bad catalogue fails here, before any model loads
    lineage = flow_lineage(cfg.section_hash(), cfg)
    with parent_run(f"{cfg.name}-world", lineage, cfg, configs={"config.yaml": cfg},
                    files={"catalogue": cfg.world.catalogue},
                    tags={CATALOGUE_TAG: catalogue_sha256(cfg.world.catalogue)}) as lineage:
        results = {"base": run_stage(stage.BASE_MODEL, cfg, lineage)}
        results["world"] = run_stage(WORLD_TASK, cfg, lineage, base=results["base"])
    return results
