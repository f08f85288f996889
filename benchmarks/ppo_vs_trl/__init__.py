"""`benchmarks/ppo_vs_trl.py`, our PPO against TRL 1.12 on the same CPU workload, in modules of one job each:

- `harness`: the command (its docstring documents it): flags, the alternating worker runs, the JSON;
- `workload`: what both sides run (prompts, tokenizer, Llama shapes, seeding) and the measuring helpers;
- `worker_ours`, `worker_trl`: one timed run of each side, each in a fresh process (`--worker ours|trl`);
- `worker_probe`: bf16 against fp32, op by op, where whole bf16 steps are too slow (`--worker probe`);
- `anchor_venv`: the TRL 1.12 venv, made on first use;
- `report`: the Markdown tables.

Every module imports only the standard library at import time: the TRL worker runs in the anchor venv, which
has torch, transformers and trl but not this project.
"""
