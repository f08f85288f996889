"""The pipeline's stages by name, declared once.

The config schema, the Prefect layer, the stage flow a worker runs and `flows.stage_entry` all read the names
here. Each name is a module `tasks/<name>.py` holding `run_<name>` and `<name>_key` (see docs/architecture.md,
"Adding a stage").
"""

BASE_MODEL = "base_model"
VALIDATE = "validate"
SFT = "sft"
REWARD = "reward"
DPO = "dpo"
PPO = "ppo"
RLOO = "rloo"
EVALUATE = "evaluate"
REGISTER = "register"
PROMOTE = "promote"

STAGES = (BASE_MODEL, VALIDATE, SFT, REWARD, DPO, PPO, RLOO, EVALUATE, REGISTER, PROMOTE)
# Preference optimizers a pipeline may run after SFT (`optimizers:`); each yields a candidate.
OPTIMIZERS = (DPO, PPO, RLOO)
# Stages that train, and so can run on their own under `accelerate launch` (flows.stage_entry).
TRAINING = (SFT, REWARD, DPO, PPO, RLOO)
# Stages that may run on another worker: they read their inputs from MLflow URIs and write only to MLflow.
DISPATCHABLE = (*TRAINING, EVALUATE)
