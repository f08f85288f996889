"""The pipeline config: one typed schema, one YAML per pipeline, `--set a.b=c` overrides.

Every field has a default and a one-line help. An unknown key or a bad value raises `ConfigError`
naming the key path (for example `sft.learning_rate`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from tasks.core import paths, stage_names
from tasks.core.config_files import HashableConfig, Section, load_config_file, validate_model
from tasks.core.training_sections import (
    CostSection,
    DPOSection,
    PPOSection,
    RewardSection,
    RLOOSection,
    SafePPOSection,
    SFTSection,
)


class DataSection(Section):
    dir: Path = Field(paths.DATA_DIR, description="Folder holding the datasets (tracked by data.dvc); file names "
                      "below are relative to it.")
    sft_train: str = Field("sft_train.jsonl", description="SFT demonstrations: prompt/completion.")
    sft_eval: str = Field("sft_eval.jsonl", description="Held-out demonstrations for perplexity.")
    preferences_train: str = Field("preferences_train.jsonl", description="Preference pairs: prompt/chosen/rejected.")
    preferences_eval: str = Field("preferences_eval.jsonl", description="Held-out preference pairs.")
    eval_prompts: str = Field("eval_prompts.jsonl", description="Held-out prompts with a `harmful` label.")
    red_team_prompts: str = Field("red_team_prompts.jsonl", description="Red-team prompts for Constitutional AI.")
    train_fraction: float = Field(1.0, gt=0, le=1, description="The share of the training demonstrations and "
                                  "preference pairs the stages train on, drawn per request kind and sub-category "
                                  "after validation (`tasks.data.sampling`); the held-out files stay whole. For "
                                  "learning curves (`alignflow curve`).")

    def path(self, name: str) -> Path:
        return self.dir / getattr(self, name)


class TinyModelSection(Section):
    """Shape of the demo Llama model built from scratch when no pretrained model is named."""

    hidden_size: int = Field(64, gt=0, description="Width of the residual stream.")
    num_hidden_layers: int = Field(2, gt=0, description="Number of decoder layers.")
    num_attention_heads: int = Field(4, gt=0, description="Attention heads per layer.")
    intermediate_size: int = Field(256, gt=0, description="Width of the MLP.")
    max_position_embeddings: int = Field(256, gt=0, description="Longest sequence the model accepts.")
    vocab_size: int = Field(1024, ge=300, description="Target size of the byte-level BPE vocabulary.")
    init_seed: int = Field(0, description="Seed for the random initial weights.")


class ModelSection(Section):
    pretrained: str | None = Field(
        None, description="Hub id, local folder, or GGUF file (a path, or pkg://<package>/<file>.gguf inside an "
        "installed package) of the base model; None builds the tiny model.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of the pretrained model.")
    trust_remote_code: bool = Field(False, description="Allow custom model code from the hub. Off unless set.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype for training.")
    prompt_format: Literal["plain", "chat_template"] = Field(
        "plain", description="How a prompt is shown to the model: `plain` template or the tokenizer's chat template."
    )
    prompt_template: str = Field("User: {prompt}\nAssistant:", description="Template used when prompt_format=plain.")
    tiny: TinyModelSection = Field(default_factory=TinyModelSection, description="Tiny model shape (no pretrained).")


class ValidationSection(Section):
    max_length: int = Field(128, gt=0, description="Longest allowed prompt+response, in tokens.")
    on_failure: Literal["fail", "quarantine"] = Field(
        "fail", description="`fail` stops the flow; `quarantine` moves bad rows aside and continues. (The tiny model's "
        "token lengths are checked after validation, with the tokenizer trained on the data: too-long rows fail.)"
    )
    max_quarantine_fraction: float = Field(
        0.05, ge=0, le=1, description="With quarantine, the flow stops if a file loses more than this share of rows."
    )


class MetricGate(Section):
    """An absolute bar a candidate metric must clear."""

    metric: str = Field(description="Metric name as the evaluate stage logs it, e.g. eval/harmful_refusal_rate.")
    min: float | None = Field(None, description="The metric must be at least this.")
    max: float | None = Field(None, description="The metric must be at most this.")
    estimate: Literal["point", "lower_bound", "upper_bound"] = Field(
        "point", description="What must clear the bar: the point estimate, or the lower or upper end of its "
        "one-sided confidence bound at `gates.confidence` (Wilson for rates, Student t for means of per-prompt "
        "values).")

    @model_validator(mode="after")
    def _has_a_bound(self) -> MetricGate:
        if self.min is None and self.max is None:
            raise ValueError(f"gate on {self.metric!r} needs a min or a max")
        return self


class ChampionGate(Section):
    """A metric on which the candidate must not be worse than the baseline or the champion by more than `margin`,
    decided by a paired test on the same eval prompts: the one-sided confidence bound (at `gates.confidence`) of
    the mean per-prompt difference must clear -margin."""

    metric: str = Field(description="Metric name as the evaluate stage logs it; it needs per-prompt values.")
    higher_is_better: bool = Field(True, description="Direction of 'better' for this metric.")
    margin: float = Field(0.02, ge=0, description="How much worse than the reference is still acceptable.")


class GatesSection(Section):
    thresholds: list[MetricGate] = Field(default_factory=list, description="Absolute bars, all must pass.")
    beat_baseline: list[ChampionGate] = Field(
        default_factory=list, description="Metrics on which the candidate must beat the SFT baseline "
        "(margin 0 = tie ok)."
    )
    champion: list[ChampionGate] = Field(
        default_factory=list, description="Metrics on which the candidate may not fall behind the champion."
    )
    confidence: float = Field(0.95, ge=0.5, lt=1, description="Level of the one-sided confidence bounds that "
                              "thresholds with `estimate: lower_bound|upper_bound` and the relative gates' paired "
                              "tests read.")
    rank_metric: str = Field("eval/reward_mean", description="Among candidates that pass, the best on this wins.")
    rank_higher_is_better: bool = Field(True, description="Direction of 'best' for rank_metric.")


class EvalSection(Section):
    max_new_tokens: int = Field(48, gt=0, description="Tokens generated per held-out prompt (greedy).")
    batch_size: int = Field(32, gt=0, description="Prompts generated per batch.")
    score_batch_size: int = Field(32, gt=0, description="Sequences per forward pass when scoring (log-probs, "
                                  "rewards): its logits hold batch x length x vocabulary floats.")
    logged_samples: int = Field(16, ge=0, description="Generations logged as an MLflow table.")
    kl_samples: int = Field(1, ge=1, description="Sampled responses per prompt for the KL(policy || reference) "
                            "estimate.")
    kl_prompts: int | None = Field(None, gt=0, description="Held-out prompts the KL estimate samples from: a "
                                   "seeded draw of this many (all when unset or larger). An unbiased estimate of "
                                   "the same mean, at a cost that does not grow with the eval set; "
                                   "`eval/kl_to_reference_stderr` says how precise it is.")
    seed: int = Field(0, description="Seed for the sampled responses.")
    base: bool = Field(False, description="Also evaluate the base model (run `evaluate-base`): the 'before' of a "
                       "before/after table, and the reference of each model's `benign_perplexity_ratio_vs_base`.")


class RegistrySection(Section):
    policy_name: str = Field("alignflow-policy", description="Registered model name for policies.")
    reward_name: str = Field("alignflow-reward", description="Registered model name for reward models.")
    cost_name: str = Field("alignflow-cost", description="Registered model name for cost models (Safe RLHF).")
    reward_alias: str = Field("newest", description="Alias of the newest reward model, and of the newest cost model "
                              "('latest' is reserved by MLflow).")
    candidate_alias: str = Field("candidate", description="Alias given to the newest trained "
                                 "policy; a version that fails its gates loses it.")
    champion_alias: str = Field("champion", description="Alias of the promoted policy.")
    previous_champion_alias: str = Field("previous-champion", description="Alias the displaced champion keeps.")


class WorldSection(Section):
    """The real-language safety world (`alignflow data world`): prompts from a catalogue, answers from the base
    model itself (on-policy), written to `data.dir` as a new DVC data version."""

    catalogue: Path = Field(Path("configs/worlds/safety.yaml"), description="Kinds, categories and requests.")
    seed: int = Field(0, description="Seed for phrasings, sampled answers and which requests get demos.")
    train_phrasings: int = Field(1, ge=1, description="Wordings of each training request (held-out ones get one).")
    sft_refusal_share: float = Field(
        0.1, ge=0, le=1, description="The SFT demo budget: share of harmful training requests with an aligned "
        "(refusing) demonstration. Benign requests get the base model's own answers.")
    max_new_tokens: int = Field(48, gt=0, description="Tokens the base model writes per answer.")
    temperature: float = Field(0.8, gt=0, description="Sampling temperature of the base model's compliant "
                               "answers to harmful requests (the rejected side of their pairs).")
    batch_size: int = Field(64, gt=0, description="Prompts generated per batch.")
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="Precision the base model writes its answers in. bfloat16 decodes 1.2-1.7x as "
        "fast on CPUs with AVX512-BF16; the answers differ (SmolLM2, held-out prompts: 53% identical, 97% of the "
        "judge's verdicts the same; benchmarks/probes/bf16_agreement.py).")
    dvc_add: bool = Field(True, description="Version `data.dir` with DVC (it must lie inside a DVC repository).")


class TrackingSection(Section):
    tracking_uri: str | None = Field(None, description="MLflow tracking URI; None uses $MLFLOW_TRACKING_URI or SQLite.")
    experiment: str = Field("alignflow", description="MLflow experiment name.")


_DispatchedStage = Literal[stage_names.DISPATCHABLE]


class DispatchSection(Section):
    """Where stages run: in the pipeline's own process, or as deployments on Prefect work pools.

    Where a stage runs never changes what it computes, so this section is left out of the config hash.
    The tracking URI must be an MLflow server both the pipeline and the workers reach.
    """

    pools: dict[_DispatchedStage, str] = Field(
        default_factory=dict, description="Stage -> Prefect work pool whose worker runs it, as deployment "
        "`<flow>/<pool>` (see infra/prefect.yaml). Stages not listed run in the pipeline's process.")
    accelerate: dict[_DispatchedStage, str] = Field(
        default_factory=dict, description="Stage -> accelerate config file (infra/accelerate/*.yaml): the worker "
        "runs the stage with `accelerate launch` on all its GPUs (DDP, FSDP, DeepSpeed ZeRO-3).")
    flow: str = Field("alignflow-stage", description="Name of the stage flow the pools' deployments run.")
    poll_interval_s: float = Field(5.0, gt=0, description="How often the pipeline polls a dispatched stage.")
    timeout_s: float | None = Field(None, gt=0, description="Give up on a dispatched stage after this long; "
                                    "None waits.")


class CAISection(Section):
    """Constitutional AI as a method of this pipeline: `alignflow compare` runs its data steps on this config's base
    model, then SL-CAI (SFT on its revisions) and RLAIF (DPO on its AI labels) beside the other methods;
    `alignflow cai run` makes its data alone. The reference runs one way: the CAI config names no pipeline."""

    config: Path | None = Field(None, description="The CAI config (configs/cai/*.yaml). None: no CAI method.")
    overrides: list[str] = Field(default_factory=list, description="`key.path=value` overrides of the CAI config.")


class IterateSection(Section):
    """`alignflow iterate`: rounds of fresh feedback on the current policy's answers (its options override these)."""

    rounds: int = Field(3, ge=1, description="Rounds to run (finished rounds are reused).")
    labeler: Literal["human", "reward", "ai", "simulated"] = Field(
        "human", description="human: export, then wait for people's labels; reward: the reward model labels; ai: "
        "the CAI feedback model of `cai_config` labels; simulated: a rule stands in for people (the request's kind "
        "and the refusal detector, `tasks.feedback.simulated`), for unattended rounds.")
    label_noise: float = Field(0.0, ge=0, le=0.5, description="simulated labeler: the share of its preferences "
                               "reversed, as people disagree.")
    pairs_per_round: int = Field(96, ge=1, description="Fresh prompts compared per round.")
    first_round_pairs: int | None = Field(None, ge=1, description="Fewer prompts in round 1: a deliberately weak "
                                          "start. None: pairs_per_round.")
    prompts_file: Path | None = Field(None, description="Prompt pool (None: data.preferences_train's prompts); no "
                                      "round reuses a prompt.")
    feedback_dir: Path | None = Field(None, description="Where the rounds' folders go (None: feedback/<name>).")
    seed: int = Field(0, description="Seed of the prompts, samples and A/B orders (plus the round).")
    temperature: float = Field(0.8, gt=0, description="Sampling temperature of the answers.")
    max_new_tokens: int = Field(48, ge=1, description="Tokens per answer.")
    reward_margin: float = Field(0.1, ge=0, description="Reward labels closer than this are ties.")
    samples_per_prompt: int = Field(2, ge=2, description="With the reward labeler: sample this many answers and "
                                    "pair the best with the worst.")
    start_from: Literal["champion", "previous"] = Field(
        "champion", description="champion: each round starts from the champion (the SFT model while there is none); "
        "previous: from the last round's candidate, promoted or not.")
    cai_config: Path | None = Field(None, description="CAI config of the ai labeler (feedback model, constitution, "
                                    "choice template).")
    dvc: bool = Field(True, description="`dvc add` the rounds' data.")
    retrain_reward: bool = Field(True, description="With PPO, RLOO or safe_ppo among the optimizers: each round "
                                 "retrains the reward model on the original comparisons plus every round's so far, "
                                 "and they optimise against it (InstructGPT's and Anthropic's loop); the cost model "
                                 "is not retrained.")
    reward_holdout: float = Field(0.2, ge=0, lt=1, description="The share of a round's fresh pairs kept out of the "
                                  "retrained reward model's data: both reward models, before and after, are scored "
                                  "on them.")

    @model_validator(mode="after")
    def _ai_labeler_needs_a_cai_config(self) -> IterateSection:
        if self.labeler == "ai" and self.cai_config is None:
            raise ValueError("labeler ai needs cai_config: the CAI config naming the feedback model, constitution "
                             "and choice template")
        return self


class PipelineConfig(HashableConfig):
    # Where stages run and where they are logged never change what they compute.
    _unhashed_sections: ClassVar[tuple[str, ...]] = ("dispatch", "tracking")

    name: str = Field("demo", description="Pipeline name, used in run names.")
    optimizers: list[Literal[stage_names.OPTIMIZERS]] = Field(
        ["dpo"], description="Preference optimizers to run after SFT; each yields a candidate. [] gates the SFT model."
    )
    work_dir: Path = Field(paths.WORK_DIR, description="Stage work folders: checkpoints, quarantine, caches.")
    reports_dir: Path = Field(paths.REPORTS_DIR, description="Where each pipeline run writes its comparison report "
                              "(also logged on its MLflow parent run).")
    data: DataSection = Field(default_factory=DataSection)
    model: ModelSection = Field(default_factory=ModelSection)
    validation: ValidationSection = Field(default_factory=ValidationSection)
    sft: SFTSection = Field(default_factory=SFTSection)
    reward: RewardSection = Field(default_factory=RewardSection)
    dpo: DPOSection = Field(default_factory=DPOSection)
    ppo: PPOSection = Field(default_factory=PPOSection)
    rloo: RLOOSection = Field(default_factory=RLOOSection)
    cost: CostSection = Field(default_factory=CostSection)
    safe_ppo: SafePPOSection = Field(default_factory=SafePPOSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    world: WorldSection = Field(default_factory=WorldSection)
    gates: GatesSection = Field(default_factory=GatesSection)
    registry: RegistrySection = Field(default_factory=RegistrySection)
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    dispatch: DispatchSection = Field(default_factory=DispatchSection)
    cai: CAISection = Field(default_factory=CAISection)
    iterate: IterateSection = Field(default_factory=IterateSection)

    def trains_reward_model(self) -> bool:
        """Whether a run trains the reward model: something uses it (an optimizer trains against it, feedback
        rounds label with it), or `reward.always` asks for its scores in every evaluation."""
        return (self.reward.always or self.iterate.labeler == "reward"
                or any(name in stage_names.REWARD_OPTIMIZERS for name in self.optimizers))

    @model_validator(mode="after")
    def _tiny_model_constraints(self) -> PipelineConfig:
        if self.model.pretrained is not None:
            return self
        if self.validation.max_length > self.model.tiny.max_position_embeddings:
            raise ValueError(
                f"validation.max_length ({self.validation.max_length}) exceeds "
                f"model.tiny.max_position_embeddings ({self.model.tiny.max_position_embeddings})"
            )
        if self.model.prompt_format == "chat_template":
            raise ValueError("model.prompt_format=chat_template needs model.pretrained: "
                             "the tiny model has no chat template")
        return self



def load_config(path: Path | str, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a YAML config (following `extends:`), apply `key.path=value` overrides and validate it."""
    return load_config_file(PipelineConfig, path, overrides)


def parse_config(raw: dict[str, Any], source: str = "config") -> PipelineConfig:
    return validate_model(PipelineConfig, raw, source)
