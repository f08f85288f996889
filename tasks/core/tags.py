"""MLflow tag keys. Every key alignflow writes starts with `TAG_PREFIX`, so our tags sort and filter together."""

TAG_PREFIX = "alignflow."

# Lineage: on every run and every registered version.
GIT_SHA_TAG = f"{TAG_PREFIX}git_sha"
CONFIG_HASH_TAG = f"{TAG_PREFIX}config_hash"
DATA_MD5_TAG = f"{TAG_PREFIX}dvc_data_md5"
CONSTITUTION_TAG = f"{TAG_PREFIX}constitution_hash"  # on data made by the constitutional flow, and all it trains
FLOW_RUN_TAG = f"{TAG_PREFIX}prefect_flow_run_id"
PARENT_TAG_PREFIX = f"{TAG_PREFIX}parent."  # + input name: the model URI a stage started from

# A stage's own run.
STAGE_TAG = f"{TAG_PREFIX}stage"
CACHE_KEY_TAG = f"{TAG_PREFIX}cache_key"
CODE_VERSION_TAG = f"{TAG_PREFIX}code_version"
CACHE_TAG_PREFIX = f"{TAG_PREFIX}cache."  # + stage, on the parent run: "computed" or "reused:<run id>"
RESUMED_FROM_TAG = f"{TAG_PREFIX}resumed_from_step"
MONITOR_TRIPPED_TAG = f"{TAG_PREFIX}monitor_tripped"  # an RL stage's reward-hacking monitor: which, and why
MONITOR_TRIPPED_METRIC = "monitor/tripped"  # 1.0 when it tripped, on the RL stage's run
TRAINING_TRIPPED_METRIC = "train/monitor_tripped"  # the same, carried into the candidate's evaluation for the gates

# A registered version: where it came from.
SOURCE_STAGE_TAG = f"{TAG_PREFIX}source_stage"
SOURCE_RUN_TAG = f"{TAG_PREFIX}source_run_id"
EVAL_RUN_TAG = f"{TAG_PREFIX}eval_run_id"
BASE_MODEL_TAG = f"{TAG_PREFIX}base_model"  # what a policy was trained from: only its own kind competes with it

# Promotion: on a registered version (metric tags `alignflow.eval/...` come from the register stage).
PROMOTION_TAG = f"{TAG_PREFIX}promotion"  # "gated" or "manual"
PROMOTED_AT_TAG = f"{TAG_PREFIX}promoted_at"  # UTC ISO time of the latest promotion of this version
PROMOTION_REASON_TAG = f"{TAG_PREFIX}promotion_reason"
DECISION_TAG = f"{TAG_PREFIX}gate_decision"  # "pass" or "fail"
GATE_TAG_PREFIX = f"{TAG_PREFIX}gate."  # + GateResult.key: "pass value=… bound=…" / "fail value=… bound=… (…)"
NOT_PROMOTED_TAG = f"{TAG_PREFIX}not_promoted_reason"
ROLLED_BACK_TAG = f"{TAG_PREFIX}rolled_back"  # "true" on a champion that a rollback demoted
ROLLED_BACK_AT_TAG = f"{TAG_PREFIX}rolled_back_at"
ALIAS_CHANGE_TAG = f"{TAG_PREFIX}alias_change"  # on a registered model while several aliases move: their old values
METRIC_TAG_PREFIX = f"{TAG_PREFIX}eval/"
