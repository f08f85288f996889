"""Where a pipeline run comes from: the code (git), the config (hash) and the data (DVC)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from flows import paths


def git_sha() -> str:
    """The commit the code runs from, or 'unknown' outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=paths.PROJECT_ROOT, capture_output=True, text=True,
                             check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


def dvc_data_md5(data_dir: Path) -> str:
    """The md5 DVC recorded for `data_dir` (from `<data_dir>.dvc`), marked when the files no longer match it.

    Returns 'untracked' when no .dvc file covers the folder, so lineage never claims a version it isn't.
    """
    dvc_file = data_dir.with_name(data_dir.name + ".dvc")
    if not dvc_file.is_file():
        return "untracked"
    outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or [{}]
    recorded = str(outs[0].get("md5", "unknown"))
    return recorded if _matches_dvc(dvc_file) else f"{recorded}+modified"


def _matches_dvc(dvc_file: Path) -> bool:
    # Imported here: DVC is slow to import and only needed for this check.
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(dvc_file.resolve().parent)) as repo:
            return not repo.status(targets=[str(dvc_file.resolve())])
    except DvcException:  # not a DVC repo (e.g. a copied data folder): we cannot vouch for the files
        return False
