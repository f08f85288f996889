"""Our PPO (`models.ppo`) against TRL 1.12's `trl.experimental.ppo.PPOTrainer` on the same CPU workload.

    .venv/bin/python benchmarks/ppo_vs_trl.py --quick              # smoke test: tiny size, one step per side

The command, its flags and the workload are documented in `benchmarks/ppo_vs_trl/harness.py`; the modules in
`benchmarks/ppo_vs_trl/__init__.py`. Each worker is a fresh process of this file (`--worker ours|trl|probe`),
the TRL one under the anchor venv's python, so this file and the package import nothing from the project.
"""

from ppo_vs_trl.harness import main  # the package beside this file: this file's folder is first on sys.path

if __name__ == "__main__":
    main()
