"""The learning-curve flow: the same methods trained on growing fractions of the training data and judged on the
same whole held-out eval, in one MLflow parent run. It shows whether more data would reach a target, or whether
the model is the limit. It only composes the pipeline's stages, and registers no policy and promotes nothing (a
curve is a study, not a candidate); its reward models are registered as `<registry.reward_name>-curve`."""

from __future__ import annotations

from prefect import flow

from flows.pipeline import evaluated_baseline, trained_methods
from tasks.core.config import PipelineConfig, load_config
from tasks.core.lineage import Lineage
from tasks.core.secrets import install_log_redaction
from tasks.orchestration.comparison import measured_rows
from tasks.orchestration.dispatch import check_dispatchable
from tasks.orchestration.learning_curve import log_learning_curve
from tasks.orchestration.parent_run import flow_lineage, parent_run
from tasks.report.results import ResultRow
from tasks.run.lifecycle import reap_dead_runs
from tasks.run.tracking import configure_tracking


@flow(name="learning_curve")
def learning_curve(config_path: str, overrides: list[str] | None,
                   fractions: list[float]) -> list[tuple[float, ResultRow]]:
    """For each fraction, smallest first: the pipeline's stages with `data.train_fraction` set to it (validate,
    base model, SFT, the reward model where used, each optimizer of `optimizers`), each model evaluated on the
    whole held-out eval. The base model comes from the cache after the first fraction; with `eval.base` and a
    reward model its evaluation runs again at each fraction (its key names that fraction's reward model) and only
    the first row is kept. Returns the points (fraction, row) and logs the curve's table and plot on the parent
    run."""
    install_log_redaction()
    cfg = load_config(config_path, overrides)
    # The reward and cost models a curve trains go under names of their own, not beside the pipeline's.
    own_names = [f"registry.reward_name={cfg.registry.reward_name}-curve",
                 f"registry.cost_name={cfg.registry.cost_name}-curve"]
    # Every fraction's config is checked before anything trains: a bad fraction fails now, not after the others.
    configs = {fraction: load_config(config_path, [*(overrides or []), *own_names, f"data.train_fraction={fraction}"])
               for fraction in sorted(set(fractions))}
    reap_dead_runs([configure_tracking(cfg)])
    check_dispatchable(cfg)
    lineage = flow_lineage(cfg.section_hash(), cfg)
    points: list[tuple[float, ResultRow]] = []
    with parent_run(f"{cfg.name}-learning-curve", lineage, cfg, configs={"config.yaml": cfg}) as lineage:
        for fraction, part in configs.items():
            # The base model is the same at every fraction: its row once.
            points += [(fraction, row) for row in _rows_at(part, lineage) if row.role != "before" or not points]
        log_learning_curve(cfg, points)
    return points


def _rows_at(cfg: PipelineConfig, lineage: Lineage) -> list[ResultRow]:
    results, judged = evaluated_baseline(cfg, lineage)
    methods = trained_methods(cfg, lineage, results, judged, start=results["sft"], data=results["data"])
    return measured_rows(results, methods, results["data"])
