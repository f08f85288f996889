"""The pipeline's stages, one module each (base_model, validate, sft, reward, dpo, ppo, evaluate, register,
promote), and the subpackages they share. A stage imports subpackages and `models`, never another stage."""
