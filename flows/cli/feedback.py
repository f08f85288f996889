"""Human feedback: export comparison pairs, label them on our page (or in Label Studio / Argilla), import labels."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Annotated

import typer

from flows.cli.common import ConfigOption, SetOption, fail, local_prefect_server_starting, registry_config
from tasks.core import paths

app = typer.Typer(no_args_is_help=True, help="Human feedback: export pairs, label them, import the labels.")
TOKEN_VARIABLE = "ALIGNFLOW_FEEDBACK_TOKEN"


@app.command("export")
def feedback_export(
    model: Annotated[str, typer.Option(help="The model that answers: models:/name@alias, runs:/..., or a path.")],
    out: Annotated[Path, typer.Option(help="Folder for the pairs, Label Studio and Argilla files.")],
    against: Annotated[str | None, typer.Option(
        help="A second model (@alias means that alias of --model's registered model); none: two samples of "
        "--model.")] = None,
    prompts: Annotated[Path | None, typer.Option(
        help="JSONL/Parquet with a `prompt` column (default: the config's preferences_train prompts).")] = None,
    n: Annotated[int, typer.Option(min=1, help="Prompts to compare on (a seeded sample of the file).")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the prompt sample, the answers and the A/B order.")] = 0,
    temperature: Annotated[float, typer.Option(min=0.01, help="Sampling temperature.")] = 0.8,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens per answer.")] = 48,
    config: ConfigOption = paths.DEMO_CONFIG,
    overrides: SetOption = None,
) -> None:
    """Sample two answers per prompt into a shuffled A/B order; write our JSONL, Label Studio and Argilla files;
    log them to MLflow."""
    from tasks.core.errors import AlignflowError
    from tasks.feedback.export import Sampling, export_pairs, log_export, resolve_model_uri, write_export
    from tasks.feedback.prompts import sample_prompts

    cfg = registry_config(config, overrides)
    try:
        model_uri = resolve_model_uri(model)
        against_uri = None if against is None else resolve_model_uri(against, like=model)
        prompts_file = prompts or cfg.data.path("preferences_train")
        chosen = sample_prompts(prompts_file, n, seed)
        sampling = Sampling(temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
        pairs = export_pairs(cfg, chosen, model_uri=model_uri, against_uri=against_uri, sampling=sampling,
                             download_dir=cfg.work_dir / "feedback-export" / "models")
        manifest = {"model": model, "model_uri": model_uri, "against": against, "against_uri": against_uri,
                    "prompts_file": str(prompts_file), "prompts": len(chosen), "seed": seed,
                    "temperature": temperature, "max_new_tokens": max_new_tokens,
                    "dropped_identical_or_empty": len(chosen) - len(pairs)}
        write_export(pairs, out, manifest)
        run_id = log_export(out, manifest)
    except AlignflowError as err:
        fail(str(err))
    typer.echo(f"{len(pairs)} pairs in {out} ({len(chosen) - len(pairs)} prompts dropped: answers identical or empty); "
               f"MLflow run {run_id}")
    typer.echo(f"label them: alignflow feedback page --pairs {out / 'pairs.jsonl'} --out {out / 'labels.jsonl'}")


@app.command("page")
def feedback_page(
    pairs: Annotated[Path, typer.Option(help="The pairs.jsonl of an export.")],
    out: Annotated[Path, typer.Option(help="Labels JSONL: appended to, one line per label; reopening resumes.")],
    host: Annotated[str, typer.Option(help="Interface to bind; anything but 127.0.0.1 exposes the page.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 picks a free one).")] = 8765,
    annotator: Annotated[str | None, typer.Option(help="Who labels (default: $USER).")] = None,
    token: Annotated[str | None, typer.Option(
        help=f"Access token (default: ${TOKEN_VARIABLE}, else a random one printed in the URL).")] = None,
) -> None:
    """Open the labelling page: prompt and answers A/B side by side; A, B, tie, skip (keys 1/2/3/0), a note,
    back and next. Every label is saved at once."""
    from tasks.core.errors import AlignflowError
    from tasks.feedback.page import LabellingServer
    from tasks.feedback.records import LabelLog, read_pairs

    try:
        exported = list(read_pairs(pairs).values())
        log = LabelLog(out)
    except AlignflowError as err:
        fail(str(err))
    if not exported:
        fail(f"{pairs}: holds no pairs")
    token = token or os.environ.get(TOKEN_VARIABLE) or secrets.token_urlsafe(16)
    who = annotator or os.environ.get("USER") or "annotator"
    try:
        server = LabellingServer((host, port), exported, log, token=token, annotator=who)
    except OSError as err:
        fail(f"cannot listen on {host}:{port} ({err.strerror})")
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"warning: listening on {host}: anyone who can reach it and has the token can label", err=True)
    done = len([pid for pid in log.current(who) if pid in server.pairs])
    typer.echo(f"labelling {len(exported)} pairs as {who} ({done} done); labels go to {out}")
    typer.echo(f"open {server.url}", err=False)
    try:
        server.serve_forever()
    finally:
        server.server_close()


# The page's old name, kept for one release: `serve` also named the scheduler and MLflow's model server.
app.command("serve", hidden=True, deprecated=True, help="Old name of `alignflow feedback page`.")(feedback_page)


@app.command("import")
def feedback_import(
    labels: Annotated[Path, typer.Argument(help="Our labels.jsonl, a Label Studio JSON export, or an Argilla "
                                           "records JSONL export.")],
    pairs: Annotated[Path, typer.Option(help="The pairs.jsonl of the export the labels are for.")],
    out: Annotated[Path, typer.Option(help="New data folder (a DVC data version): the config's datasets with the "
                                      "labelled pairs in preferences_train.")],
    format: Annotated[str | None, typer.Option(
        help="alignflow, labelstudio or argilla (default: from the file).")] = None,
    replace: Annotated[bool, typer.Option(help="Only the labelled pairs in preferences_train (default: after the "
                                          "existing pairs).")] = False,
    no_dvc: Annotated[bool, typer.Option("--no-dvc", help="Do not `dvc add` the folder.")] = False,
    config: ConfigOption = paths.DEMO_CONFIG,
    overrides: SetOption = None,
) -> None:
    """Turn labels into preference pairs (majority vote; ties, skips and disagreements dropped and counted),
    validate them, and write a new DVC data version to train on with --set data.dir=<out>."""
    from tasks.core.errors import AlignflowError
    from tasks.feedback.importing import import_feedback, log_import

    if format not in (None, "alignflow", "labelstudio", "argilla"):
        fail(f"--format {format!r}: expected alignflow, labelstudio or argilla")
    cfg = registry_config(config, overrides)
    try:
        imported = import_feedback(cfg, labels, pairs, out, kind=format, mode="replace" if replace else "append",
                                   dvc=not no_dvc)
        run_id = log_import(imported)
    except AlignflowError as err:
        fail(str(err))
    tally = imported.tally
    agreement = "n/a (one annotator per pair)" if tally.agreement is None else f"{tally.agreement:.2f}"
    typer.echo(f"{tally.kept} preference pairs from {tally.labels} {imported.format} labels on {tally.pairs} pairs: "
               f"dropped {tally.ties} ties, {tally.skips} skips, {tally.disagreements} disagreements; "
               f"{tally.unlabelled} unlabelled; {len(tally.annotators)} annotators, agreement {agreement}")
    typer.echo(f"data version {imported.folder} (dvc md5 {imported.dvc_md5}, {imported.preference_rows} pairs in "
               f"preferences_train); MLflow run {run_id}")
    typer.echo(f"train on it: alignflow run --config {config} --set data.dir={imported.folder}")


def iterate(
    rounds: Annotated[int | None, typer.Option(help="Rounds to run (iterate.rounds).")] = None,
    labeler: Annotated[str | None, typer.Option(help="human, reward, ai or simulated (iterate.labeler).")] = None,
    label_noise: Annotated[float | None, typer.Option(
        help="Share of the simulated labeler's preferences reversed (iterate.label_noise).")] = None,
    pairs_per_round: Annotated[int | None, typer.Option(help="Fresh prompts per round (iterate.pairs_per_round).")]
    = None,
    first_round_pairs: Annotated[int | None, typer.Option(help="Prompts in round 1 (iterate.first_round_pairs).")]
    = None,
    prompts: Annotated[Path | None, typer.Option(help="Prompt pool (iterate.prompts_file).")] = None,
    feedback_dir: Annotated[Path | None, typer.Option(help="The rounds' folders (iterate.feedback_dir).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (iterate.seed).")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature (iterate.temperature).")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Tokens per answer (iterate.max_new_tokens).")] = None,
    reward_margin: Annotated[float | None, typer.Option(help="Ties below it (iterate.reward_margin).")] = None,
    samples_per_prompt: Annotated[int | None, typer.Option(
        help="Best-of-worst samples (iterate.samples_per_prompt).")] = None,
    start_from: Annotated[str | None, typer.Option(help="champion or previous (iterate.start_from).")] = None,
    cai_config: Annotated[Path | None, typer.Option(help="The ai labeler's CAI config (iterate.cai_config).")] = None,
    no_dvc: Annotated[bool, typer.Option("--no-dvc", help="Do not `dvc add` the rounds' data (iterate.dvc=false).")]
    = False,
    config: ConfigOption = paths.DEMO_CONFIG,
    overrides: SetOption = None,
) -> None:
    """Rounds of fresh feedback as a Prefect flow: the champion answers new prompts, the pairs are labelled, the
    labels become a new data version, and the optimizers train from the champion on it, then gates decide. The
    settings are the config's `iterate` section; each option here overrides one of its keys."""
    from tasks.core.config import load_config
    from tasks.core.errors import AlignflowError
    from tasks.report.results import ResultRow, round_line

    given = {"rounds": rounds, "labeler": labeler, "label_noise": label_noise, "pairs_per_round": pairs_per_round,
             "first_round_pairs": first_round_pairs, "prompts_file": prompts, "feedback_dir": feedback_dir,
             "seed": seed, "temperature": temperature, "max_new_tokens": max_new_tokens,
             "reward_margin": reward_margin, "samples_per_prompt": samples_per_prompt, "start_from": start_from,
             "cai_config": cai_config, "dvc": False if no_dvc else None}
    overrides = [*(overrides or []), *(f"iterate.{key}={value}" for key, value in given.items() if value is not None)]
    try:
        load_config(config, overrides)  # a bad setting fails here, before Prefect starts
    except AlignflowError as err:
        fail(str(err))
    with local_prefect_server_starting():
        from flows.feedback import feedback_rounds
    try:
        summaries = feedback_rounds(str(config), overrides)
    except AlignflowError as err:
        fail(str(err))
    for summary in summaries:
        if summary["status"] == "waiting":
            typer.echo(summary["message"])
            continue
        line = round_line([ResultRow.model_validate(row) for row in summary["rows"]])
        typer.echo(f"round {summary['round']}: from {summary['start']} on {summary['data_dir']} "
                   f"(dvc {summary['data_md5']}); promoted {summary['promoted'] or 'nothing'}; {line}")
