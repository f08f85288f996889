"""The pipeline's stages by name, declared once.

The config schema, the Prefect layer, the stage flow a worker runs and `flows.stage_entry` all read the names
here. Each name is a module `tasks/<name>.py` holding `run_<name>` and `<name>_key` (see docs/architecture.md,
"Adding a stage").
"""

BASE_MODEL = "base_model"
VALIDATE = "validate"
SFT = "sft"
REWARD = "reward"
COST = "cost"
DPO = "dpo"
PPO = "ppo"
RLOO = "rloo"
SAFE_PPO = "safe_ppo"
EVALUATE = "evaluate"
REGISTER = "register"
PROMOTE = "promote"

STAGES = (BASE_MODEL, VALIDATE, SFT, REWARD, COST, DPO, PPO, RLOO, SAFE_PPO, EVALUATE, REGISTER, PROMOTE)
# Preference optimizers a pipeline may run after SFT (`optimizers:`); each yields a candidate.
OPTIMIZERS = (DPO, PPO, RLOO, SAFE_PPO)
# Optimizers that train against the reward model.
REWARD_OPTIMIZERS = (PPO, RLOO, SAFE_PPO)
# Stages that train, and so can run on their own under `accelerate launch` (flows.stage_entry).
TRAINING = (SFT, REWARD, COST, DPO, PPO, RLOO, SAFE_PPO)
# Stages that may run on another worker: they read their inputs from MLflow URIs and write only to MLflow.
DISPATCHABLE = (*TRAINING, EVALUATE)
