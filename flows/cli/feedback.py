"""Human feedback: export comparison pairs, label them on our page (or in Label Studio / Argilla), import labels."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Annotated

import typer

from flows.cli.common import ConfigOption, SetOption, fail, registry_config
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
    rounds: Annotated[int, typer.Option(min=1, help="Rounds to run (finished rounds are reused).")] = 3,
    labeler: Annotated[str, typer.Option(help="human: export, then wait for people's labels; reward: the reward "
                                         "model labels; ai: the CAI feedback model labels (--cai-config).")] = "human",
    pairs_per_round: Annotated[int, typer.Option(min=1, help="Fresh prompts compared per round.")] = 96,
    first_round_pairs: Annotated[int | None, typer.Option(
        min=1, help="Fewer prompts in round 1: a deliberately weak start.")] = None,
    prompts: Annotated[Path | None, typer.Option(
        help="Prompt pool (default: the config's preferences_train prompts); no round reuses a prompt.")] = None,
    feedback_dir: Annotated[Path | None, typer.Option(
        help="Where the rounds' folders go (default: feedback/<config name>).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the prompts, samples and A/B orders (plus the round).")] = 0,
    temperature: Annotated[float, typer.Option(min=0.01, help="Sampling temperature of the answers.")] = 0.8,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens per answer.")] = 48,
    reward_margin: Annotated[float, typer.Option(min=0.0, help="Reward labels closer than this are ties.")] = 0.1,
    samples_per_prompt: Annotated[int, typer.Option(
        min=2, help="With --labeler reward: sample this many answers and pair the best with the worst.")] = 2,
    start_from: Annotated[str, typer.Option(
        help="champion: each round starts from the champion (the SFT model while there is none); previous: from "
        "the last round's candidate, promoted or not.")] = "champion",
    cai_config: Annotated[Path | None, typer.Option(
        help="CAI config of the ai labeler (feedback model, constitution, choice template).")] = None,
    no_dvc: Annotated[bool, typer.Option("--no-dvc", help="Do not `dvc add` the rounds' data.")] = False,
    config: ConfigOption = paths.DEMO_CONFIG,
    overrides: SetOption = None,
) -> None:
    """Rounds of fresh feedback as a Prefect flow: the champion answers new prompts, the pairs are labelled, the
    labels become a new data version, and the optimizers train from the champion on it, then gates decide."""
    from tasks.core.config import load_config
    from tasks.core.errors import AlignflowError
    from tasks.feedback.rounds import RoundSettings
    from tasks.report.results import ResultRow, round_line

    if labeler not in ("human", "reward", "ai"):
        fail(f"--labeler {labeler!r}: expected human, reward or ai")
    if start_from not in ("champion", "previous"):
        fail(f"--start-from {start_from!r}: expected champion or previous")
    if labeler == "ai" and cai_config is None:
        fail("--labeler ai needs --cai-config: the CAI config naming the feedback model, constitution and template")
    try:
        cfg = load_config(config, overrides or [])
    except AlignflowError as err:
        fail(str(err))
    settings = RoundSettings(
        feedback_dir=feedback_dir or Path("feedback") / cfg.name,
        prompts_file=prompts or cfg.data.path("preferences_train"), pairs_per_round=pairs_per_round,
        first_round_pairs=first_round_pairs, seed=seed, temperature=temperature, max_new_tokens=max_new_tokens,
        reward_margin=reward_margin, samples_per_prompt=samples_per_prompt, start_from=start_from,
        cai_config=cai_config,
        dvc=not no_dvc)
    from flows.feedback import feedback_rounds

    try:
        summaries = feedback_rounds(str(config), overrides or [], rounds, labeler, settings)
    except AlignflowError as err:
        fail(str(err))
    for summary in summaries:
        if summary["status"] == "waiting":
            typer.echo(summary["message"])
            continue
        line = round_line([ResultRow.model_validate(row) for row in summary["rows"]])
        typer.echo(f"round {summary['round']}: from {summary['start']} on {summary['data_dir']} "
                   f"(dvc {summary['data_md5']}); promoted {summary['promoted'] or 'nothing'}; {line}")
