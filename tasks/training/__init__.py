"""What the trainer-based stages share: TRL arguments, LoRA, resume, the final save, cached reference log-probs."""
