"""The evaluation judge's gold set: collect answers to label, and measure the judge on the labelled ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from flows.cli.common import ConfigOption, SetOption, fail, registry_config, write_json
from tasks.core import paths

app = typer.Typer(no_args_is_help=True, help="The evaluation judge and its hand-labelled gold set.")


@app.command("collect")
def collect(
    parent: Annotated[str, typer.Option(help="The comparison's parent run id.")],
    world: Annotated[str, typer.Option(help="The pipeline's `name` (demo, smollm2): evaluations of that pipeline "
                                            "use the error rates measured on these rows.")],
    eval_prompts: Annotated[Path, typer.Option(help="The world's eval_prompts.jsonl: what helping takes.")],
    out: Annotated[Path, typer.Option(help="Where to write the unlabelled rows (JSON lines).")],
    per_cell: Annotated[int, typer.Option(min=1, help="Answers per method and kind of request.")] = 16,
    methods: Annotated[list[str] | None, typer.Option("--method", help="Only this method's answers (repeatable).")
                       ] = None,
    seed: int = 0,
    config: ConfigOption = paths.DEMO_CONFIG,
    overrides: SetOption = None,
) -> None:
    """Draw answers from the evaluate-<method> runs under a parent run, stratified by method and kind, for
    labelling by reading them (models/judge_gold/GUIDE.md)."""
    from tasks.core.errors import AlignflowError
    from tasks.judging.gold import collect as collect_rows

    registry_config(config, overrides)  # the config's tracking store
    try:
        rows = collect_rows(parent, world, eval_prompts, per_cell, seed, methods)
    except AlignflowError as err:
        fail(str(err))
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_text("".join(json.dumps(row) + "\n" for row in rows))
    partial.replace(out)  # whole or not at all
    typer.echo(f"{len(rows)} answers to label -> {out}")


@app.command("measure")
def measure(
    gold: Annotated[Path, typer.Option(help="The labelled answers.")] = Path("models/judge_gold/answers.jsonl"),
    out: Annotated[Path | None, typer.Option(
        help="Also write the measurement here: models/judge_gold/quality.json is what evaluation reads to "
             "correct its refusal rates for the judge's errors.")] = None,
) -> None:
    """Score the evaluation judge against the gold labels: refusal precision and recall, verdict and
    helpfulness accuracy, with 95% intervals, overall and per group of methods."""
    from tasks.core.errors import AlignflowError
    from tasks.judging.gold import CONFUSION, load_gold, quality_record
    from tasks.judging.gold import measure as measure_judge

    try:
        report = measure_judge(load_gold(gold))
    except AlignflowError as err:
        fail(str(err))
    for group, scores in report.items():
        if group == CONFUSION:
            continue
        typer.echo(group)
        for name, score in scores.items():
            shown = "-" if score is None else (f"{score['value']:.3f} [{score['low']:.3f}, {score['high']:.3f}] "
                                               f"n={score['n']}")
            typer.echo(f"  {name:18s} {shown}")
    if out is not None:
        write_json(out, quality_record(report, gold))


@app.command("rescore")
def rescore(
    parent: Annotated[str, typer.Option(help="The comparison's parent run id.")],
    eval_prompts: Annotated[Path, typer.Option(help="The world's eval_prompts.jsonl: what helping takes.")],
    config: ConfigOption = paths.DEMO_CONFIG,
    overrides: SetOption = None,
) -> None:
    """Score a finished comparison's logged answers again, by the old keyword detector and by the evaluation
    judge, side by side per method (nothing is generated again)."""
    from tasks.core.errors import AlignflowError
    from tasks.judging.rescore import rescore as rescore_comparison
    from tasks.judging.rescore import rescore_markdown

    registry_config(config, overrides)
    try:
        typer.echo(rescore_markdown(rescore_comparison(parent, eval_prompts)))
    except AlignflowError as err:
        fail(str(err))
