"""The docs name only what exists: every module path and repository file that README.md and docs/*.md mention.

Checked, in inline code, fenced code blocks and markdown links:
- dotted module names under `flows`, `tasks` or `models` (`tasks.run.contract.stage_run`): some prefix must be a
  module or package of the repository, and a remaining name must be defined at the top of that module's source;
- repository paths (`tasks/run/contract.py`, `infra/accelerate/ddp.yaml`, `docs/rlhf.md`) must exist; a markdown
  link's target is resolved from the document's folder.
Placeholders (`tasks/<stage>.py`, `configs/prompts/chat_*.jinja`, `infra/accelerate/{ddp,fsdp}.yaml`) and what a
run produces (reports/, data*/, mlartifacts/, .alignflow/, virtualenvs) are not checked.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

MODULE_PACKAGES = ("flows", "tasks", "models")
# Top-level folders of the repository whose paths the docs name; anything else (reports/, data/, a user's
# folder) is not the repository's.
PATH_FOLDERS = ("flows", "tasks", "models", "configs", "infra", "benchmarks", "docs", "tests")
PLACEHOLDER = re.compile(r"[<>*{}…]|\.\.\.")
RUNTIME_OUTPUT = re.compile(r"(^|/)(reports|data[^/]*|mlartifacts|\.alignflow|\.venv[^/]*)(/|$)")
# Files an operator makes, never committed: the stack's secrets, copied from infra/.env.example.
LOCAL_FILES = {"infra/.env"}

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
TOKEN = re.compile(r"[^\s`'\"()\[\],;=|]+")
DOTTED = re.compile(r"(?:flows|tasks|models)(?:\.[A-Za-z_]\w*)+")


def _module_file(parts: list[str]) -> Path | None:
    base = ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@cache
def _top_level_names(source: Path) -> frozenset[str]:
    names: set[str] = set()

    def visit(body):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                names.update(t.id for target in node.targets for t in ast.walk(target) if isinstance(t, ast.Name))
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
            for field in ("body", "orelse", "finalbody", "handlers"):
                if isinstance(node, (ast.If, ast.Try, ast.With, ast.ExceptHandler)) and hasattr(node, field):
                    visit(getattr(node, field))

    visit(ast.parse(source.read_bytes(), filename=str(source)).body)
    return frozenset(names)


def module_problem(name: str) -> str | None:
    """None when `name` is a module of the repository, or a name defined at the top of one; else what is wrong."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        source = _module_file(parts[:cut])
        if source is None:
            continue
        rest = parts[cut:]
        if not rest or rest[0] in _top_level_names(source):
            return None
        return f"module {'.'.join(parts[:cut])} ({source.relative_to(ROOT)}) defines no {rest[0]!r}"
    return "no such module in the repository"


def path_problem(path: str, base: Path = ROOT) -> str | None:
    """None when the repository path exists (or is a placeholder or a run's output); else what is wrong."""
    path, _, attribute = path.partition("::")
    if PLACEHOLDER.search(path) or RUNTIME_OUTPUT.search(path) or path in LOCAL_FILES:
        return None
    target = (base / path).resolve()
    if not target.exists():
        return "no such file or folder"
    if attribute and target.suffix == ".py" and attribute.split(".")[0] not in _top_level_names(target):
        return f"{path} defines no {attribute!r}"
    return None


def _tokens(text: str) -> list[tuple[int, str]]:
    """Whitespace- and punctuation-separated words; a closing brace with no opening one ends a YAML mapping."""
    found = []
    for match in TOKEN.finditer(text):
        token = match.group().rstrip(".:")
        found.append((match.start(), token if "{" in token else token.rstrip("}").rstrip(".:")))
    return found


def _check_token(token: str) -> str | None:
    token = re.sub(r":\d+$", "", token.removeprefix("./"))
    if DOTTED.fullmatch(token):
        return module_problem(token)
    if token.split("/", 1)[0] in PATH_FOLDERS and "/" in token:
        return path_problem(token)
    return None


def doc_problems(doc: Path, text: str | None = None) -> list[str]:
    """Every module or path `doc` names that does not exist, as 'doc:line: `name`: problem'."""
    text = doc.read_text(encoding="utf-8") if text is None else text
    label = doc.relative_to(ROOT) if doc.is_relative_to(ROOT) else doc
    found: list[tuple[int, str, str]] = []
    prose_lines = []
    fenced = False
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line):
            fenced = not fenced
            prose_lines.append("")
            continue
        if fenced:
            prose_lines.append("")
            found.extend((number, token, problem) for _, token in _tokens(line) if (problem := _check_token(token)))
        else:
            prose_lines.append(line)
    prose = "\n".join(prose_lines)

    def line_of(offset: int) -> int:
        return prose.count("\n", 0, offset) + 1

    for match in INLINE_CODE.finditer(prose):
        if "\n\n" in match.group(2):
            continue
        for offset, token in _tokens(match.group(2)):
            if problem := _check_token(token):
                found.append((line_of(match.start(2) + offset), token, problem))
    for match in LINK.finditer(prose):
        target = match.group(1).split("#", 1)[0]
        if not target or re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
            continue
        if problem := path_problem(target, base=doc.parent):
            found.append((line_of(match.start(1)), target, problem))
    return [f"{label}:{line}: `{name}`: {problem}" for line, name, problem in sorted(found)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: str(doc.relative_to(ROOT)))
def test_every_module_and_path_the_docs_name_exists(doc):
    problems = doc_problems(doc)
    assert not problems, "names in the docs that do not exist:\n" + "\n".join(problems)


def test_the_check_finds_dead_names_and_says_where():
    doc = ROOT / "docs" / "example.md"
    text = """\
Fine: `tasks.run.contract.stage_run`, `tasks/run/contract.py`, [arch](architecture.md), `models.ppo`.
Dead: `tasks.reference_logps` and `flows.config`,
and `tasks.run.contract.no_such_thing`, `tasks/stage.py`.
```bash
accelerate launch --config_file infra/accelerate/nope.yaml -m flows.stage_entry ppo
dispatch: {accelerate: {ppo: infra/accelerate/gone.yaml}}
```
A [broken link](missing.md); placeholders `tasks/<stage>.py`, `reports/run.json`, `data-cai/sft.jsonl`.
A span over two lines: `alignflow run --config
configs/absent.yaml`.
"""
    problems = doc_problems(doc, text)
    assert [problem.split("`: ", 1)[0] + "`" for problem in problems] == [
        "docs/example.md:2: `flows.config`",
        "docs/example.md:2: `tasks.reference_logps`",
        "docs/example.md:3: `tasks.run.contract.no_such_thing`",
        "docs/example.md:3: `tasks/stage.py`",
        "docs/example.md:5: `infra/accelerate/nope.yaml`",
        "docs/example.md:6: `infra/accelerate/gone.yaml`",
        "docs/example.md:8: `missing.md`",
        "docs/example.md:10: `configs/absent.yaml`",
    ], problems
