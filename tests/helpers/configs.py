"""The demo config shrunk for tests."""

from __future__ import annotations

from pathlib import Path


def reduced_config(tmp_path: Path, data_dir: Path, *overrides: str):
    """The demo config, shrunk to run in seconds, writing everything under tmp_path."""
    from tasks.core import paths
    from tasks.core.config import load_config

    return load_config(
        paths.DEMO_CONFIG,
        [
            f"data.dir={data_dir}",
            f"work_dir={tmp_path / 'work'}",
            f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
            "sft.epochs=2",
            "eval.max_new_tokens=12",
            *overrides,
        ],
    )
