"""The MLflow pyfunc that serves a policy (logged "from code": MLflow runs this file when it loads the model).

Input: a DataFrame with a `prompt` column of raw user requests. Output: the greedy completion of each.
"""

import mlflow
from mlflow.models import set_model


class PolicyGenerator(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        import tempfile
        from pathlib import Path

        from hf_folders import model_chain  # shipped in the model's code folder

        from models.loading import load_model_and_tokenizer

        # A LoRA model's folder holds adapters naming their base model: load the base, merge the adapters.
        chain = model_chain(context.artifacts["hf_model"], Path(tempfile.mkdtemp(prefix="alignflow-base-")))
        self.model, self.tokenizer = load_model_and_tokenizer(chain[0], adapters=chain[1:])
        self.config = context.model_config

    def predict(self, context, model_input, params=None):
        from models.generation import generate
        from models.prompting import format_prompt

        params = params or {}
        prompts = [
            format_prompt(p, self.tokenizer, self.config["prompt_format"], self.config["prompt_template"])
            for p in model_input["prompt"]
        ]
        max_new_tokens = int(params.get("max_new_tokens", self.config["max_new_tokens"]))
        return generate(self.model, self.tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=16)


set_model(PolicyGenerator())
