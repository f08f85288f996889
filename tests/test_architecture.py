"""The house rules: the modules directly in tasks/ are the stages, each keeps the naming convention the stage
table relies on, and the import contracts hold (and break, naming the contract, when an import runs upward)."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tasks.core import paths, stage_names
from tasks.core.config import PipelineConfig
from tasks.orchestration.stage_table import STAGES

ROOT = paths.PROJECT_ROOT
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
# Modules allowed past ~300 lines, each because it is one table-driven job.
LONG_MODULES = {"tasks/data/expectations.py": "the _CHECKS table drives all three GX suites"}


def test_the_modules_directly_in_tasks_are_the_stages_and_nothing_else():
    modules = {path.stem for path in (ROOT / "tasks").glob("*.py") if path.name != "__init__.py"}
    assert modules == set(stage_names.STAGES)


@pytest.mark.parametrize("name", stage_names.STAGES)
def test_each_stage_keeps_the_convention_the_stage_table_reads(name):
    module = importlib.import_module(f"tasks.{name}")
    assert module.STAGE == name
    assert set(module.SECTIONS) <= set(PipelineConfig.model_fields), module.SECTIONS
    assert STAGES[name].run is getattr(module, f"run_{name}")
    assert STAGES[name].key is getattr(module, f"{name}_key")


def test_the_import_contracts_name_every_stage():
    """A stage the contracts do not name would escape them: import-linter leaves unlisted modules alone."""
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layered = next(c for c in contracts if c.get("containers") == ["tasks"])
    stage_layer = next(layer for layer in layered["layers"] if "|" in layer and "sft" in layer)
    assert {name.strip() for name in stage_layer.split("|")} == set(stage_names.STAGES)
    plain = next(c for c in contracts if c["type"] == "forbidden" and c["forbidden_modules"] == ["prefect"])
    assert {f"tasks.{name}" for name in stage_names.STAGES} <= set(plain["source_modules"])


def test_no_module_is_long_unless_it_is_one_table_driven_job():
    long = {str(path.relative_to(ROOT)): len(path.read_text().splitlines())
            for package in ("flows", "tasks", "models") for path in (ROOT / package).rglob("*.py")}
    assert {path for path, lines in long.items() if lines > 320} <= set(LONG_MODULES)


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
                          check=False, cwd=root, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)},
                          capture_output=True, text=True)


def test_the_import_contracts_hold():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_upward_import_breaks_the_three_floors_contract_by_name(tmp_path):
    for package in ("flows", "tasks", "models"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    errors = tmp_path / "tasks" / "core" / "errors.py"
    errors.write_text(errors.read_text() + "\nimport flows.pipeline  # noqa: E402,F401 - the planted upward import\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert "Three floors: flows -> tasks -> models, never upward BROKEN" in " ".join(result.stdout.split())
    assert "tasks.core.errors -> flows.pipeline" in result.stdout
