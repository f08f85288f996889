"""What the RL stages (PPO, RLOO) read before they train: the inputs that key them, the prompts they sample,
and a check that the reward model reads text the way the policy writes it."""

from __future__ import annotations

import pandas as pd

from tasks.data.conversations import prompt_key
from tasks.run.contract import StageResult


def rl_input_hashes(sft: StageResult, reward: StageResult, data: StageResult) -> dict[str, str]:
    """What an RL stage's output depends on besides its config: the SFT and reward models and the prompts."""
    return {"sft": sft.output_hashes["model"], "reward": reward.output_hashes["model"],
            "preferences_train": data.output_hashes["preferences_train"]}


def training_prompts(rows: pd.DataFrame, stage: str, source: str) -> list:
    """Distinct raw prompts (requests or conversations), in a fixed order; formatted with the policy's tokenizer
    when sampled."""
    if rows.empty or "prompt" not in rows:
        raise ValueError(f"{stage} needs training prompts: {source} has no rows with a 'prompt'")
    distinct = {prompt_key(prompt): prompt for prompt in rows["prompt"]}
    return [distinct[key] for key in sorted(distinct)]


def check_same_tokenizer(policy_tokenizer, reward_tokenizer, policy_source, reward_source) -> None:
    """The reward model must read text the way the policy writes it; a different vocabulary is a wrong pairing."""
    if policy_tokenizer.get_vocab() != reward_tokenizer.get_vocab():
        raise ValueError(
            f"the reward model's tokenizer ({reward_source}, {len(reward_tokenizer)} tokens) does not match the "
            f"policy's ({policy_source}, {len(policy_tokenizer)} tokens): train the reward model from the same "
            "SFT model as the policy"
        )
