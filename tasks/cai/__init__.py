"""Constitutional AI: its config, prompts, backends, the critique-revision steps, RLAIF labels and data versions."""
