"""Cache keys cover the code a stage runs: its module and what that imports, not every file in the tree."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tasks.core import code_version as cv
from tasks.core import paths
from tasks.core.code_version import code_version, module_closure
from tasks.run.contract import StageResult


@pytest.fixture
def two_trees(tmp_path) -> tuple[Path, Path]:
    """Two copies of the project's code: `before` as it is, `after` to edit."""
    trees = []
    for name in ("before", "after"):
        for package in cv.PROJECT_PACKAGES:
            shutil.copytree(paths.PROJECT_ROOT / package, tmp_path / name / package,
                            ignore=shutil.ignore_patterns("__pycache__"))
        trees.append(tmp_path / name)
    return trees[0], trees[1]


def _append(root: Path, module: str, text: str) -> None:
    path = root.joinpath(*module.split(".")).with_suffix(".py")
    path.write_text(path.read_text(encoding="utf-8") + text, encoding="utf-8")
    cv._code_version.cache_clear()  # a process computes each version once; after an edit, stand for a new process


def test_closure_follows_imports_and_packages_only():
    sft = module_closure("tasks.sft")
    # What SFT runs: its helpers, the model loader, and the packages those live in.
    assert {"tasks.sft", "tasks.training.trainer", "models.loading", "tasks", "tasks.training", "models"} <= set(sft)
    # What it does not: the other stages, CAI, the flows.
    assert not {"tasks.dpo", "tasks.ppo", "tasks.cai.steps", "models.losses"} & set(sft)
    assert not any(name.startswith("flows") for name in sft)
    assert "models.losses" in module_closure("tasks.ppo")


def test_relative_and_submodule_imports(tmp_path):
    # pkg/__init__.py: `from . import a`; a.py: `from .sub import b`; sub/b.py: `from tasks.x import nothing`.
    root = tmp_path / "tree"
    (root / "tasks" / "sub").mkdir(parents=True)
    (root / "tasks" / "__init__.py").write_text("from . import a\n")
    (root / "tasks" / "a.py").write_text("from .sub import b\n")
    (root / "tasks" / "sub" / "__init__.py").write_text("")
    (root / "tasks" / "sub" / "b.py").write_text("import os\nfrom ..sub import c\n")
    (root / "tasks" / "sub" / "c.py").write_text("def f():\n    import models.m\n")
    (root / "models").mkdir()
    (root / "models" / "m.py").write_text("")
    assert module_closure("tasks.sub.b", root) == (
        "models.m", "tasks", "tasks.a", "tasks.sub", "tasks.sub.b", "tasks.sub.c")


def test_unknown_module_is_an_error():
    with pytest.raises(ValueError, match="'tasks.nonexistent' is not a module of this project"):
        module_closure("tasks.nonexistent")


def test_edit_outside_a_stage_keeps_its_version_and_inside_changes_it(two_trees):
    before, after = two_trees
    # A docstring edit in CAI: CAI's steps rerun, SFT and PPO do not.
    _append(after, "tasks.cai.steps", '\n"""A note added by a reader."""\n')
    assert code_version("tasks.sft", after) == code_version("tasks.sft", before)
    assert code_version("tasks.ppo", after) == code_version("tasks.ppo", before)
    assert code_version("tasks.cai.supervised", after) != code_version("tasks.cai.supervised", before)
    # An edit to the PPO losses: PPO reruns, SFT still does not.
    _append(after, "models.losses", "\n# a changed line\n")
    assert code_version("tasks.ppo", after) != code_version("tasks.ppo", before)
    assert code_version("tasks.sft", after) == code_version("tasks.sft", before)


def test_stage_key_hits_after_an_unrelated_edit_and_misses_after_a_related_one(two_trees, monkeypatch, tmp_path,
                                                                               demo_data_dir):
    from tasks.sft import sft_key
    from tests.helpers.configs import reduced_config

    before, after = two_trees
    cfg = reduced_config(tmp_path, demo_data_dir)
    base = StageResult(stage="base_model", run_id="r1", cache_key="b" * 64, output_hashes={"model": "b" * 64})
    data = StageResult(stage="validate", run_id="r2", cache_key="d" * 64, output_hashes={"sft_train": "d" * 32})

    def key_in(root: Path) -> str:
        monkeypatch.setattr(paths, "PROJECT_ROOT", root)
        return sft_key(cfg, base, data)

    original = key_in(before)
    _append(after, "tasks.cai.steps", "\n# unrelated to SFT\n")
    assert key_in(after) == original
    _append(after, "models.loading", "\n# SFT loads its base model through this\n")
    assert key_in(after) != original


def test_library_versions_are_part_of_the_version(two_trees, monkeypatch):
    before, _ = two_trees
    original = code_version("tasks.sft", before)
    installed = cv.library_versions()
    monkeypatch.setattr(cv, "library_versions", lambda: {**installed, "trl": "0.0.1"})
    cv._code_version.cache_clear()
    try:
        assert code_version("tasks.sft", before) != original
    finally:
        monkeypatch.undo()
        cv._code_version.cache_clear()
    assert code_version("tasks.sft", before) == original
