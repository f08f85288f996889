"""Safe RLHF's cost model on TRL's `RewardTrainer`: the same tokenisation, batching, checkpoints and logging as
the reward model, with the cost loss (`models.losses.cost_model_loss`) in place of Bradley-Terry's.

Its dataset is the reward model's pairs with each pair's harmlessness (`tasks.data.harmlessness`): `chosen` is the
safer answer, and `chosen_sign`, `rejected_sign` and `ranked` ride through TRL's tokenisation into the batch.
"""

from __future__ import annotations

import torch
from trl import RewardTrainer
from trl.trainer.reward_trainer import DataCollatorForPreference

from models.losses import cost_model_loss
from tasks.data.harmlessness import Harmlessness

LABELS = Harmlessness._fields  # chosen_sign, rejected_sign, ranked


class HarmlessnessCollator(DataCollatorForPreference):
    """TRL's preference batch (chosen rows, then rejected rows, right-padded) plus the pairs' labels, (B,) each."""

    def torch_call(self, examples: list[dict]) -> dict:
        batch = super().torch_call(examples)
        for name in LABELS:
            batch[name] = torch.tensor([example[name] for example in examples], dtype=torch.float)
        return batch


class CostTrainer(RewardTrainer):
    """A `RewardTrainer` whose loss is the cost model's: costs C(chosen) (safer) and C(rejected) (less safe)."""

    def __init__(self, *args, processing_class, **kwargs):
        collator = HarmlessnessCollator(pad_token_id=processing_class.pad_token_id)
        super().__init__(*args, processing_class=processing_class, data_collator=collator, **kwargs)

    def _set_signature_columns_if_needed(self):
        # The Trainer drops dataset columns the collator is not known to read; the labels must reach it.
        if self._signature_columns is None:
            self._signature_columns = ["chosen_ids", "rejected_ids", *LABELS]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        chosen_signs, rejected_signs, ranked = (inputs.pop(name) for name in LABELS)
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
        safer_costs, unsafer_costs = torch.chunk(outputs.logits.squeeze(-1), chunks=2)  # (B,), (B,)
        loss, pair_accuracy, sign_accuracy = cost_model_loss(safer_costs, unsafer_costs, chosen_signs,
                                                             rejected_signs, ranked)
        with torch.no_grad():
            self._metrics[mode]["mean_cost"].append(self.accelerator.gather(outputs.logits).mean().item())
            self._metrics[mode]["sign_accuracy"].append(
                self.accelerator.gather_for_metrics(sign_accuracy).mean().item())
            if not torch.isnan(pair_accuracy):  # a batch of benign pairs ranks nothing
                self._metrics[mode]["pair_accuracy"].append(
                    self.accelerator.gather_for_metrics(pair_accuracy).mean().item())
        return (loss, outputs) if return_outputs else loss
