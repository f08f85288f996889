"""Pipeline stages: one module per stage, each a plain `run_<stage>` function plus its Prefect task."""
