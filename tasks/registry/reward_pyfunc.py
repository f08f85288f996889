"""The MLflow pyfunc that serves a reward model (logged "from code": MLflow runs this file to load the model).

Input: a DataFrame with `prompt` (raw user requests) and `response` columns. Output: one float reward per row.
Prompts are formatted with the settings the model was trained with, which travel in the model config.
"""

import mlflow
from mlflow.models import set_model


class RewardScorer(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        import tempfile
        from pathlib import Path

        from hf_folders import model_chain  # shipped in the model's code folder

        from models.reward import load_reward_model

        # A LoRA model's folder holds adapters naming their base model: load the base, merge the adapters.
        chain = model_chain(context.artifacts["hf_model"], Path(tempfile.mkdtemp(prefix="alignflow-base-")))
        self.model, self.tokenizer = load_reward_model(chain[0], adapters=chain[1:])
        self.config = context.model_config

    def predict(self, context, model_input, params=None):
        from models.prompting import format_prompt
        from models.reward import reward_scores

        prompts = [
            format_prompt(p, self.tokenizer, self.config["prompt_format"], self.config["prompt_template"])
            for p in model_input["prompt"]
        ]
        responses = list(model_input["response"])
        return reward_scores(self.model, self.tokenizer, prompts, responses, batch_size=16).tolist()


set_model(RewardScorer())
