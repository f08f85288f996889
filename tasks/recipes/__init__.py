"""What two stages share that reads data, the registry and the trainers at once: PPO's recipe (`ppo` and
`safe_ppo`), the reward and cost models' held-out scoring and LoRA, and the cost model's trainer. Below the stages,
above `training`, `registry` and `data`, which may not import each other."""
