"""What the critic and the labeler are shown: prompt templates from files, and the principle each step uses.

Templates are Jinja files named in the config (`templates.*`), rendered with `StrictUndefined`, so a
template that uses a variable the code does not pass fails when it is loaded, naming the file and the
variable. Principles are drawn with a `random.Random` seeded by (seed, prompt id, round): a record's draw
depends on nothing else, so a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

import jinja2

from tasks.cai.config import Constitution, FewShot, Principle, PromptSet, PromptTemplates
from tasks.core.errors import ConfigError

_SAMPLE_SHOT = FewShot(prompt="p", response="r", critique_request="cq", critique="c", revision_request="rq",
                       revision="v")
_SAMPLE_PRINCIPLE = Principle(name="n", critique_request="cq", revision_request="rq", preference_question="q")
# The variables each template is rendered with; a dry run with these catches typos when the file is loaded.
_SAMPLE_CONTEXT = {
    "critique": {"few_shots": [_SAMPLE_SHOT], "prompt": "p", "response": "r", "principle": _SAMPLE_PRINCIPLE},
    "revision": {"few_shots": [_SAMPLE_SHOT], "prompt": "p", "response": "r", "principle": _SAMPLE_PRINCIPLE,
                 "critique": "c"},
    "choice": {"prompt": "p", "question": "q", "response_a": "a", "response_b": "b"},
}


@dataclass(frozen=True)
class Template:
    path: Path
    sha256: str
    _template: jinja2.Template

    def render(self, **context) -> str:
        return self._template.render(**context)


def load_templates(config: PromptTemplates) -> dict[str, Template]:
    """Every template named in the config, checked by a dry render."""
    templates = {}
    for name, context in _SAMPLE_CONTEXT.items():
        path = Path(getattr(config, name))
        try:
            source = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"templates.{name}: template file {path} does not exist") from None
        environment = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
        try:
            template = environment.from_string(source)
            template.render(**context)
        except jinja2.TemplateError as err:
            raise ConfigError(f"templates.{name}: {path}: {err}") from None
        templates[name] = Template(path, hashlib.sha256(source.encode()).hexdigest(), template)
    return templates


def prompt_id(prompt: str) -> str:
    """A record's key: the prompt's content, so adding or reordering prompts keeps finished records valid."""
    return hashlib.sha256(prompt.encode()).hexdigest()[:16]


def draw_principle(constitution: Constitution, seed: int, record_id: str, step: int | str,
                   prompts: PromptSet = "red_team") -> Principle:
    """One of the principles that apply to the record's prompt set."""
    pool = constitution.principles_for(prompts)
    if not pool:
        raise ConfigError(f"constitution {constitution.name!r}: no principle applies to {prompts} prompts "
                          f"(principles.*.applies_to)")
    return random.Random(f"{seed}:{record_id}:{step}").choice(pool)


def derived_seed(seed: int, record_id: str, purpose: str) -> int:
    """A 31-bit seed for one record's sampling, independent of what ran before it."""
    return int(hashlib.sha256(f"{seed}:{record_id}:{purpose}".encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def few_shots(constitution: Constitution, count: int | None, prompts: PromptSet = "red_team") -> list[FewShot]:
    shots = constitution.few_shots_for(prompts)
    return shots if count is None else shots[:count]
