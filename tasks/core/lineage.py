"""Where a run comes from: the code (git), the config (hash), the data (DVC) and the Prefect flow run."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from tasks.core import paths
from tasks.core.errors import AlignflowError
from tasks.core.tags import CONFIG_HASH_TAG, DATA_MD5_TAG, FLOW_RUN_TAG, GIT_SHA_TAG


@dataclass(frozen=True)
class Lineage:
    """Where a run comes from. Computed once per pipeline run and handed to every stage."""

    git_sha: str
    config_hash: str
    data_md5: str
    flow_run_id: str | None = None
    parent_run_id: str | None = None
    data_tags: tuple[tuple[str, str], ...] = ()  # from the training data itself, e.g. the constitution hash

    def tags(self) -> dict[str, str]:
        tags = {
            GIT_SHA_TAG: self.git_sha,
            "mlflow.source.git.commit": self.git_sha,
            CONFIG_HASH_TAG: self.config_hash,
            DATA_MD5_TAG: self.data_md5,
        }
        if self.flow_run_id:
            tags[FLOW_RUN_TAG] = self.flow_run_id
        tags.update(self.data_tags)
        return tags


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
    problem = _dvc_status(dvc_file)
    return recorded if problem is None else f"{recorded}+{problem}"


def check_in_regenerated_data(data_dir: Path) -> str | None:
    """After regenerating DVC-tracked data: confirm it is the recorded version and put it in DVC's cache.

    A fresh clone has the .dvc file but an empty cache, so `dvc status` says "not in cache" even when the files
    are right. `dvc commit` hashes the files and stores them; if that would change the recorded md5, the .dvc file
    is restored and the mismatch is an error. Returns the md5, or None when no .dvc file covers `data_dir`.
    """
    from dvc.repo import Repo  # imported here: DVC is slow to import

    dvc_file = data_dir.with_name(data_dir.name + ".dvc")
    if not dvc_file.is_file():
        return None
    recorded = dvc_file.read_text()
    with Repo(str(dvc_file.resolve().parent)) as repo:
        repo.commit(str(dvc_file.resolve()), force=True)
    if dvc_file.read_text() != recorded:
        computed = (yaml.safe_load(dvc_file.read_text())["outs"][0]).get("md5")
        dvc_file.write_text(recorded)
        expected = (yaml.safe_load(recorded)["outs"][0]).get("md5")
        raise AlignflowError(f"{data_dir}: the regenerated files hash to {computed}, but {dvc_file} records "
                             f"{expected}; {dvc_file} was left unchanged")
    return (yaml.safe_load(recorded)["outs"][0]).get("md5")


def _dvc_status(dvc_file: Path) -> str | None:
    """None when DVC vouches for the files; else why not ('modified', 'unverified': files not in DVC's cache)."""
    # Imported here: DVC is slow to import and only needed for this check.
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(dvc_file.resolve().parent)) as repo:
            status = repo.status(targets=[str(dvc_file.resolve())])
    except DvcException:  # not a DVC repo (e.g. a copied data folder): we cannot vouch for the files
        return "unverified"
    if not status:
        return None
    # A fresh clone's cache is empty: DVC cannot tell the files are right until `alignflow data demo` stores them.
    changes = str(status)
    return "unverified" if "not in cache" in changes and "modified" not in changes else "modified"
