"""The config sections of the training stages: shared optimisation settings, LoRA, and each stage's own
(SFT, reward, DPO, PPO, RLOO with its reward-hacking monitors). `tasks.core.config` assembles them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tasks.core.config_files import Section


class LoraSection(Section):
    enabled: bool = Field(False, description="Train LoRA adapters instead of all weights.")
    r: int = Field(8, gt=0, description="LoRA rank.")
    alpha: int = Field(16, gt=0, description="LoRA scaling numerator.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA branch.")
    target_modules: list[str] = Field(["q_proj", "v_proj"], description="Module names that get adapters.")
    top_layers: int | None = Field(
        None, gt=0, description="Adapt only the top N decoder layers (None: all). Backpropagation stops at the "
        "lowest adapted layer, so adapting half the layers saves about a third of each step.")


class TrainingSection(Section):
    """Optimisation settings shared by the trainer-based stages."""

    epochs: float = Field(3.0, gt=0, description="Passes over the training set.")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: use epochs).")
    learning_rate: float = Field(1e-3, gt=0, description="Peak learning rate.")
    lr_scheduler: str = Field("cosine", description="Transformers scheduler name.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of steps used for warmup.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    batch_size: int = Field(16, gt=0, description="Per-device batch size.")
    gradient_accumulation_steps: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    save_steps: int = Field(20, gt=0, description="Write a checkpoint every N optimizer steps.")
    logging_steps: int = Field(5, gt=0, description="Log training metrics every N steps.")
    seed: int = Field(0, description="Training seed (data order, dropout).")
    bf16: bool | None = Field(
        None, description="Mixed precision: weights and optimizer state stay float32, the forward and backward "
        "passes compute in bfloat16 (autocast). None: where the launcher asks for bf16 or a CUDA GPU supports it. "
        "Without CUDA it trains on the CPU, where AVX512-BF16 makes it about twice as fast (docs/performance.md) and "
        "a CPU without it emulates bfloat16 slowly. A DPO stage's reference log-probs are computed the same way.")
    lora: LoraSection = Field(default_factory=LoraSection, description="LoRA adapters via peft.")


class SFTSection(TrainingSection):
    completion_only_loss: bool = Field(True, description="Compute the loss on completions only.")


class RewardSection(TrainingSection):
    always: bool = Field(
        False, description="Train the reward model in every run, so every evaluation reports its reward means and "
        "win rates. Otherwise it is trained only where it is used: an optimizer trains against it (ppo, rloo, "
        "safe_ppo) or feedback rounds label with it (iterate.labeler: reward). On SmolLM2 it takes longer to "
        "train than DPO, which never reads it.")
    center_rewards_coefficient: float | None = Field(
        None, ge=0, description="Pull mean reward towards zero (Eisenstein et al. 2023); None disables."
    )
    hard_negatives: bool = Field(
        False, description="Also train on each chosen answer over cut-short answers (the rejected one's and its "
        "own first sentence) and over another request's chosen answer, so neither an opener alone nor a good "
        "answer to something else scores high: what PPO exploits otherwise.")
    rank_cut_short: bool = Field(
        False, description="With hard_negatives, also train on the chosen answer's first sentence over the rejected "
        "answer (chosen > its opener > rejected), so a refusal cut short still beats compliance.")

    @model_validator(mode="after")
    def _ranks_only_with_hard_negatives(self) -> RewardSection:
        if self.rank_cut_short and not self.hard_negatives:
            raise ValueError("rank_cut_short ranks the hard negatives' openers: it needs hard_negatives: true")
        return self


class CostSection(TrainingSection):
    """Safe RLHF's cost model (Dai et al. 2023): trained like the reward model, from the SFT model, on the same
    comparisons' harmlessness (`tasks/cost.py`); trained only when `safe_ppo` is among the optimizers."""


class SafePPOSection(Section):
    """PPO-Lagrangian (Safe RLHF, Dai et al. 2023): PPO with every `ppo` setting, maximising reward minus lambda
    times the cost model's cost, lambda >= 0 learnt so the mean cost of a batch stays at `cost_limit`."""

    cost_limit: float = Field(0.0, description="The mean cost per answer the policy may spend: the cost model puts "
                              "harmless answers below 0 and harmful ones above, so 0 (Safe RLHF's) asks for "
                              "answers on the harmless side on average.")
    lambda_init: float = Field(1.0, ge=0, description="The Lagrange multiplier lambda at the first step.")
    lambda_lr: float = Field(0.05, gt=0, description="lambda's step per unit of mean cost over (or under) the limit, "
                             "each PPO iteration.")
    lambda_max: float | None = Field(None, gt=0, description="Ceiling on lambda (None: none), so a cost the policy "
                                     "cannot lower does not drown the reward.")

    @model_validator(mode="after")
    def _starts_under_its_ceiling(self) -> SafePPOSection:
        if self.lambda_max is not None and self.lambda_max < self.lambda_init:
            raise ValueError(f"lambda_max ({self.lambda_max}) is below lambda_init ({self.lambda_init})")
        return self


class DPOSection(TrainingSection):
    beta: float = Field(0.1, gt=0, description="Strength of the implicit KL penalty to the reference model.")
    loss_type: Literal["sigmoid", "ipo", "hinge"] = Field("sigmoid", description="DPO, IPO or SLiC-style hinge loss.")
    sft_weight: float = Field(0.0, ge=0, description="Weight of an extra NLL term on the chosen responses (RPO).")
    balance_refusals: bool = Field(False, description="Repeat the scarcer side's pairs until as many prefer a refusal "
                                   "(harmful requests) as prefer help (benign and sound-harmful ones): the refusal "
                                   "words are often the same on both sides, and the larger side would otherwise "
                                   "push them up or down on every request (`tasks.data.sampling`). Pairs whose "
                                   "row says no kind are on neither side.")


class MonitorSection(Section):
    """Reward-hacking monitors of an RL stage (`models.monitors`): each signal is logged every step as
    `monitor/<signal>`; one beyond its threshold for `patience` checks in a row stops the run, which keeps its
    last healthy state, and the gates refuse its candidate. A threshold of null switches that monitor off."""

    enabled: bool = Field(True, description="Compute and log the monitors (and act on them).")
    action: Literal["stop", "warn"] = Field("stop", description="On a trip: stop early and keep the last healthy "
                                            "state (`stop`), or only log it (`warn`); the gates refuse either way.")
    max_abs_reward_length_corr: float | None = Field(
        0.9, gt=0, le=1, description="Largest |correlation| of reward with response length within a batch.")
    min_length_ratio: float | None = Field(
        0.5, gt=0, description="Smallest mean response length, as a share of the SFT policy's (the first step's).")
    max_length_ratio: float | None = Field(2.0, gt=0, description="Largest mean response length, likewise.")
    kl_budget: float | None = Field(
        None, gt=0, description="Largest KL(policy || reference) in nats per answer, as the evaluation's gate "
        "measures it: answers to the probe prompts sampled at temperature 1, checked on probe steps.")
    min_entropy_ratio: float | None = Field(
        0.2, gt=0, description="Smallest policy entropy, as a share of the first step's.")
    max_gold_gap: float | None = Field(
        0.2, gt=0, description="Largest growth, since the first probe, of the reward model's approval of the "
        "probe answers over the share an independent check (the refusal detector) passes: the reward model "
        "likes what the check does not.")
    patience: int = Field(2, ge=1, description="Bad checks in a row before a monitor trips.")
    probe_steps: int = Field(5, gt=0, description="Run the probe set every N steps (and before the first).")
    probe_size: int = Field(32, gt=0, description="Fixed training prompts in the probe set, half of them ones whose "
                            "preferred answer is a refusal.")
    probe_min_words: int = Field(5, ge=1, description="Words an answer to a request that should not be refused "
                                 "needs to count as an answer.")


class RewardFunction(Section):
    name: Literal["model", "refuses_harmful", "helps_benign"] = Field(
        description="model: the reward model's score. refuses_harmful: +1 when a harmful request's answer declines, "
        "-1 when it does not, 0 on other requests. helps_benign: +1 when a benign or sound-harmful request's answer "
        "helps (does not decline, says something), -1 when not, 0 on harmful ones. The rules read the request's "
        "`kind` in the prompt data and the training side's refusal detector (`models.reward_rules`).")
    weight: float = Field(1.0, description="Its weight in the sum.")


class RolloutSection(Section):
    """What the RL optimizers (PPO, RLOO) share: how answers are sampled and scored, and the monitors."""

    max_new_tokens: int = Field(32, gt=0, description="Tokens sampled per answer.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature; log-probs are taken at it too.")
    clip_range: float = Field(0.2, gt=0, description="Policy ratio clip epsilon.")
    missing_eos_penalty: float | None = Field(None, description="Subtracted from the score of answers with no EOS.")
    length_penalty: float = Field(0.0, ge=0, description="Subtracted from the score per answer token.")
    reward_functions: list[RewardFunction] = Field(
        default_factory=lambda: [RewardFunction(name="model")], min_length=1,
        description="The reward: the weighted sum of these terms (OpenAI's rule-based rewards add rule terms to "
        "the reward model's score), each logged on its own every step. Must include `model`.")
    monitors: MonitorSection = Field(default_factory=MonitorSection, description="Reward-hacking monitors.")

    @model_validator(mode="after")
    def _reward_functions_once_each_with_the_model(self) -> RolloutSection:
        names = [function.name for function in self.reward_functions]
        if len(set(names)) != len(names) or "model" not in names:
            raise ValueError(f"reward_functions {names}: each at most once, and `model` among them")
        return self


class PPOSection(RolloutSection):
    """Our PPO (Ziegler et al. 2019; Stiennon et al. 2020; Ouyang et al. 2022) on a policy with a value head."""

    steps: int = Field(60, gt=0, description="PPO iterations: one rollout batch and its updates each.")
    rollout_batch_size: int = Field(32, gt=0, description="Answers sampled per iteration.")
    samples_per_prompt: int = Field(1, ge=1, description="Answers per prompt in a batch; above 1 each answer's "
                                    "score is judged against its siblings' mean (a per-prompt baseline).")
    mini_batch_size: int = Field(16, gt=0, description="Rollouts per gradient step.")
    ppo_epochs: int = Field(4, gt=0, description="Passes over each rollout batch (K epochs).")
    learning_rate: float = Field(1e-4, gt=0, description="Adam learning rate for policy and value head.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    clip_range_value: float = Field(0.2, gt=0, description="Value prediction clip epsilon.")
    vf_coef: float = Field(0.1, ge=0, description="Weight of the value loss.")
    ent_coef: float = Field(0.0, ge=0, description="Weight of the entropy bonus.")
    gamma: float = Field(1.0, ge=0, le=1, description="GAE discount.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    whiten_advantages: bool = Field(True, description="Normalise advantages per batch.")
    target_approx_kl: float | None = Field(0.1, gt=0, description="Stop the epochs early once approx KL exceeds this.")
    kl_controller: Literal["fixed", "adaptive"] = Field("adaptive", description="KL coefficient schedule.")
    init_kl_coef: float = Field(0.05, ge=0, description="Initial per-token KL penalty coefficient.")
    kl_target: float | None = Field(6.0, gt=0, description="Target sequence KL for the adaptive controller.")
    kl_horizon: int = Field(10000, gt=0, description="Adaptive controller horizon, in samples.")
    critic: Literal["value_head", "separate", "reward_model"] = Field(
        "value_head", description="Value head on the policy trunk; a separate critic on the reward model's trunk "
        "(trained whole, fresh head); or the reward model itself, frozen, its score head the value head that "
        "learns (InstructGPT's init: the first values already know which prompts score low)."
    )
    save_steps: int = Field(20, gt=0, description="Checkpoint every N iterations.")
    sample_table_steps: int = Field(20, gt=0, description="Log a table of sample completions every N iterations.")
    seed: int = Field(0, description="Seed for sampling and prompt order.")
    lora: LoraSection = Field(default_factory=LoraSection, description="LoRA adapters; the reference is then the base.")

    @model_validator(mode="after")
    def _minibatch_divides_batch(self) -> PPOSection:
        if self.rollout_batch_size % self.mini_batch_size:
            raise ValueError(f"rollout_batch_size ({self.rollout_batch_size}) must be a multiple of "
                             f"mini_batch_size ({self.mini_batch_size})")
        if self.rollout_batch_size % self.samples_per_prompt:
            raise ValueError(f"rollout_batch_size ({self.rollout_batch_size}) must be a multiple of "
                             f"samples_per_prompt ({self.samples_per_prompt})")
        if self.kl_controller == "adaptive" and self.kl_target is None:
            raise ValueError("kl_controller=adaptive needs kl_target")
        return self


class RLOOSection(TrainingSection, RolloutSection):
    """RLOO (Ahmadian et al. 2024) on TRL's `RLOOTrainer`: `batch_size` answers per step, `num_generations` per
    prompt, each judged against the mean of its siblings; no value head."""

    num_generations: int = Field(4, ge=2, description="Answers sampled per prompt: the leave-one-out group.")
    beta: float = Field(0.05, ge=0, description="KL coefficient against the SFT reference (0: no reference).")
    normalize_advantages: bool = Field(True, description="Normalise advantages per batch.")

    @model_validator(mode="after")
    def _groups_fill_the_batch(self) -> RLOOSection:
        if self.batch_size % self.num_generations:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of num_generations "
                             f"({self.num_generations}): whole groups of answers per step")
        if (self.beta == 0 and not self.lora.enabled and self.monitors.enabled
                and self.monitors.kl_budget is not None):
            # TRL keeps no reference model at beta 0, and full fine-tuning has no adapters to switch off.
            raise ValueError("monitors.kl_budget needs a reference to measure KL against: with beta 0 and no LoRA "
                             "RLOO keeps none; set beta > 0, lora.enabled: true, or monitors.kl_budget: null")
        return self
