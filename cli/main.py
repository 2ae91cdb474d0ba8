"""The `deft` command line: thin commands that parse options, call one library function and map errors.

Heavy modules (torch, transformers) are imported inside commands so `deft --help` stays instant.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import click

from deft.errors import DeftError

log = logging.getLogger("deft")


class DeftGroup(click.Group):
    """Turns a DeftError into one `error: ...` line and exit code 1 (full traceback with --debug). Every command
    also takes the global --quiet and --debug after its name (`deft prune … --quiet`), as people type them."""

    group_class = type  # subgroups (deft data) are DeftGroups too

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not isinstance(cmd, click.Group):
            cmd.params.extend(click.Option([f"--{flag}"], is_flag=True, expose_value=False, callback=_late_flag,
                                           help=f"Same as `deft --{flag} COMMAND`.") for flag in ("quiet", "debug"))
        super().add_command(cmd, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DeftError as exc:
            if (ctx.obj or {}).get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)
        except (MemoryError, RuntimeError) as exc:  # torch's OutOfMemoryError is a RuntimeError
            if (ctx.obj or {}).get("debug") or not _out_of_memory(exc):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            click.echo(f"error: out of memory ({first}); lower the batch size of the stage that ran out "
                       "(effort.batch_size resumes where it stopped; training.batch_size or evaluation.batch_size "
                       "need --overwrite or another --out) or drop very long samples; finished stages are kept "
                       "(--debug for the traceback)", err=True)
            ctx.exit(1)


def _out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate memory" in text


def _late_flag(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """--quiet / --debug given after the command: the same as before it."""
    if value and ctx.obj is not None:
        ctx.obj[param.name] = True
        _setup_logging(ctx.obj.get("quiet", False), ctx.obj.get("debug", False))


def _setup_logging(quiet: bool, debug: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if debug else logging.INFO)
    if quiet:  # read when the Hugging Face libraries are imported, which commands do only after this
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" bar
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    # transformers' deprecation notices about its own internals (peft calls them) are noise to a DEFT user
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr, force=True)


@click.group(cls=DeftGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--quiet", is_flag=True, help="Only warnings and errors; no progress bars.")
@click.option("--debug", is_flag=True, help="Debug logging and full tracebacks on errors.")
@click.version_option(package_name="deft")
@click.pass_context
def app(ctx: click.Context, quiet: bool, debug: bool) -> None:
    """DEFT: data-efficient fine-tuning of LLMs.

    Score a pool of fine-tuning samples, select a small coreset (DEALRec and baselines), fine-tune with LoRA
    and evaluate. Commands that compute write into a run directory and reuse finished stages.

    \b
    Examples (one per command):
      deft data describe ml-100k --stride 10        describe a source and show two rendered samples
      deft validate configs/demo.yaml               check a config, report every problem at once
      deft prune data_samples/tiny-recbole --config configs/bench/tiny.yaml --budget 6 --out runs/try
                                                    a first try: the whole pipeline in ~20 s
      deft score ml-100k --stride 10 --out runs/s   per-sample influence and effort scores (~2 h on 2 cores)
      deft prune ml-100k --config configs/demo.yaml --budget 128 --out runs/p
                                                    scores -> coreset.jsonl + report.md (~12 min on 2 cores)
      deft train --samples runs/p/coreset.jsonl --valid runs/p/valid.jsonl --out runs/t   LoRA fine-tuning
      deft evaluate ml-100k --config configs/demo.yaml --adapter runs/t/adapter --out runs/e
                                                    Recall/NDCG of an adapter, prompts built as it was trained
      deft compare runs/e runs/e0                   paired bootstrap of two evaluations
      deft run configs/bench/tiny.yaml --out runs/x arms x budgets x seeds -> results.md
      deft bench ml100k-cpu                         a named benchmark tier
      deft tune configs/demo.yaml --out runs/demo --budget 128   choose DEALRec's λ on validation
    """
    ctx.ensure_object(dict)
    ctx.obj.update(quiet=quiet, debug=debug)
    _setup_logging(quiet, debug)


# ----------------------------------------------------------------------------------------------- shared options


def _config(config_path: str | None, overrides: dict[str, Any]):
    """The config file (or defaults) with the command line's options applied on top, validated at once."""
    from deft.config import from_dict, load_config

    overrides = {k: v for k, v in overrides.items() if v is not None}
    if config_path:
        return load_config(config_path, overrides)
    nested: dict[str, dict[str, Any]] = {}
    for dotted, value in overrides.items():
        section, key = dotted.split(".", 1)
        nested.setdefault(section, {})[key] = value
    return from_dict(nested)


def _data_options(f, *, stride: bool = True):
    options = [
        click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML config file."),
        click.option("--format", "fmt", type=click.Choice(["auto", "recbole", "movielens", "csv", "parquet", "amazon"]),
                     help="Source format (default: detect)."),
        click.option("--items", help="Items/metadata file for csv, parquet and amazon sources."),
        click.option("--split", type=click.Choice(["leave_one_out", "temporal"]), help="Split strategy."),
        click.option("--construction", type=click.Choice(["sliding_window", "last_per_user"]),
                     help="Sample construction."),
        click.option("--max-history", type=int,
                     help="Most recent items in a sample's history (H; sliding_window only: last_per_user keeps the "
                          "whole history, trimmed to prompt.max_tokens)."),
        click.option("--stride", type=int, help="Keep every stride-th sliding-window sample."),
    ]
    if not stride:
        options.pop()
    for option in reversed(options):
        f = option(f)
    return f


def _data_overrides(source: str, fmt, items, split, construction, max_history, stride) -> dict[str, Any]:
    return {"data.source": source, "data.format": fmt, "data.items": items, "data.split": split,
            "samples.construction": construction, "samples.max_history": max_history, "samples.stride": stride}


# ----------------------------------------------------------------------------------------------- data


@app.group()
def data() -> None:
    """Inspect a data source."""


@data.command("describe")
@click.argument("source")
@_data_options
def data_describe(source: str, config_path, fmt, items, split, construction, max_history, stride) -> None:
    """Users, items, density, split sizes, sample count, duplicate titles and two rendered samples.

    \b
    Example: deft data describe ml-100k --stride 10
    """
    from deft.data import build_samples, describe, format_description, load_interactions, split_interactions

    cfg = _config(config_path, _data_overrides(source, fmt, items, split, construction, max_history, stride))
    inter = load_interactions(cfg.data)
    parts = split_interactions(inter, cfg.data)
    samples = build_samples(parts, inter.titles, cfg.samples, cfg.prompt)
    click.echo(format_description(describe(inter, parts, samples)))


# ----------------------------------------------------------------------------------------------- validate


@app.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
def validate(config_path: str) -> None:
    """Check a YAML config without running it: every field, and that its data source and model are there.

    \b
    Example: deft validate configs/bench/ml100k-cpu.yaml
    """
    from deft.config import load_config
    from deft.data.loaders import resolve_source
    from deft.errors import ConfigError, DeftError
    from deft.models import check_model_name

    cfg = load_config(config_path)
    problems, found = [], []
    for check, arg in ((resolve_source, cfg.data), (check_model_name, cfg.model.name)):
        try:
            found.append(check(arg))
        except DeftError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError(problems, file=config_path)
    model = ("model found" if found[1] != "hub id" else
             f"model {cfg.model.name!r} taken as a hub id, not checked offline")
    click.echo(f"{config_path}: ok (data source found; {model})")


# ----------------------------------------------------------------------------------------------- prune / score


def _prune_options(f):
    options = [
        click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory."),
        click.option("--model", help="Target LLM: smollm2-135m (bundled), tiny-llama, a local HF directory or a hub id (org/name)."),
        click.option("--device", help="auto, cpu, cuda or cuda:N."),
        click.option("--overwrite", is_flag=True, help="Replace outputs made with other inputs or settings."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


SAMPLES_HELP = ("A file of samples to score instead of SOURCE: JSONL/Parquet with instruction, input, output "
                "(plus user, history, target_item for the surrogate-based scores), e.g. any instruction dataset.")


def _samples_or_source(source: str | None, samples_path: str | None, fmt, items, split, construction, max_history,
                       stride, config_path: str | None = None) -> tuple[Any, dict[str, Any]]:
    """(the samples table given with --samples, or None) and the data overrides for SOURCE; exactly one of the
    two is given (SOURCE may come from the config's data.source), and the options that shape samples built from
    SOURCE go with SOURCE only."""
    from_config = source is None and samples_path is None and _config_names_source(config_path)
    if (source is None) == (samples_path is None) and not from_config:
        raise click.UsageError("give either SOURCE (interactions to build samples from; or data.source in "
                               "--config) or --samples FILE")
    overrides = _data_overrides(source, fmt, items, split, construction, max_history, stride)
    if samples_path is None:
        return None, overrides
    given = [f"--{key.split('.')[1].replace('_', '-')}" for key, v in overrides.items() if v is not None
             and key != "data.source"]
    if given:
        raise click.UsageError(f"{', '.join(given)} {'shapes' if len(given) == 1 else 'shape'} the samples built "
                               "from SOURCE; --samples gives them ready")
    from deft.pipeline import load_samples_file

    return load_samples_file(samples_path), {}


def _config_names_source(config_path: str | None) -> bool:
    """Whether the YAML config sets data.source itself (the built-in default is no choice of the user's)."""
    if config_path is None:
        return False
    import yaml

    try:
        raw = yaml.safe_load(Path(config_path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False  # loading the config proper reports what is wrong with it
    return isinstance(raw, dict) and isinstance(raw.get("data"), dict) and raw["data"].get("source") is not None


@app.command()
@click.argument("source", required=False)
@_data_options
@_prune_options
@click.option("--samples", "samples_path", type=click.Path(dir_okay=False), help=SAMPLES_HELP)
@click.option("--scores", "score_names", default="influence,effort", show_default=True,
              help="Comma-separated: influence, effort, grand, el2n, loss.")
@click.pass_context
def score(ctx, source, config_path, fmt, items, split, construction, max_history, stride, out, model, device,
          overwrite, samples_path, score_names) -> None:
    """Compute per-sample scores into OUT/scores.parquet (reuses a matching surrogate and finished shards).

    \b
    Example: deft score ml-100k --scores influence,effort --stride 10 --out runs/scores
             deft score --samples my_instructions.jsonl --scores effort --out runs/scores
    """
    from deft.pipeline import run_scores

    samples, overrides = _samples_or_source(source, samples_path, fmt, items, split, construction, max_history,
                                            stride, config_path)
    overrides.update({"model.name": model, "model.device": device})
    cfg = _config(config_path, overrides)
    names = [s.strip() for s in score_names.split(",") if s.strip()]
    path = run_scores(cfg, out, names, overwrite=overwrite, progress=not ctx.obj["quiet"], samples=samples,
                      samples_file=samples_path)
    click.echo(f"scores: {path}")


@app.command()
@click.argument("source", required=False)
@_data_options
@_prune_options
@click.option("--samples", "samples_path", type=click.Path(dir_okay=False),
              help=SAMPLES_HELP.replace("to score", "to prune"))
@click.option("--budget", "budgets", multiple=True,
              help="Coreset size: a count (256) or a share of the pool (2%). Repeat for a sweep.")
@click.option("--method", type=click.Choice(["dealrec", "random", "greedy", "ccs", "influence_only", "effort_only",
                                             "kcenter", "grand", "el2n"]), help="Selection strategy.")
@click.option("--lambda", "lambda_", type=float, help="Weight of effort: minmax(I) + lambda * minmax(effort).")
@click.option("--strata", type=int, help="Number of equal-width strata K.")
@click.option("--hard-prune", type=float, help="Share of top-scored samples dropped first (beta).")
@click.option("--seed", type=int, help="Selection seed.")
@click.pass_context
def prune(ctx, source, config_path, fmt, items, split, construction, max_history, stride, out, model, device,
          overwrite, samples_path, budgets, method, lambda_, strata, hard_prune, seed) -> None:
    """Curate a dataset: samples, surrogate, influence, effort, selection -> OUT/coreset*.jsonl + report.md.

    \b
    Example: deft prune ml-100k --stride 10 --budget 256 --budget 2% --out runs/ml100k
             deft prune --samples my_instructions.jsonl --method effort_only --budget 5% --out runs/mine

    The pool's size sets the cost: ML-100K's default windows (stride 1) are 97,171 samples, hours of effort
    scoring on a CPU; --stride 10 gives 10,132, --construction last_per_user 943.
    """
    from deft.pipeline import run_prune

    samples, overrides = _samples_or_source(source, samples_path, fmt, items, split, construction, max_history,
                                            stride, config_path)
    overrides.update({"model.name": model, "model.device": device, "selection.method": method,
                      "selection.lambda_": lambda_, "selection.strata": strata, "selection.hard_prune": hard_prune,
                      "selection.seed": seed,
                      "selection.budgets": [int(b) if b.strip().isdigit() else b for b in budgets] or None})
    cfg = _config(config_path, overrides)
    result = run_prune(cfg, out, overwrite=overwrite, progress=not ctx.obj["quiet"], samples=samples,
                       samples_file=samples_path)
    for budget, path in result.coresets.items():
        click.echo(f"coreset ({budget} sample{'' if budget == 1 else 's'}): {path}")
    if result.valid is not None:
        click.echo(f"validation samples (for deft train --valid): {result.valid}")
    click.echo(f"report: {result.report}")


# ----------------------------------------------------------------------------------------------- train / evaluate


@app.command()
@click.option("--samples", "samples_path", required=True, type=click.Path(dir_okay=False),
              help="Training samples: JSONL/Parquet with instruction, input, output (e.g. a coreset.jsonl).")
@click.option("--valid", "valid_path", type=click.Path(dir_okay=False),
              help="Validation samples (same format; deft prune writes OUT/valid.jsonl) for early stopping; "
                   "without them every epoch runs and the last adapter is kept.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory for the adapter.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML config file.")
@click.option("--model", help="Target LLM (default smollm2-135m).")
@click.option("--device", help="auto, cpu, cuda or cuda:N.")
@click.option("--epochs", type=int, help="Maximum epochs (with --valid, early stopping picks the best).")
@click.option("--lr", type=float, help="Learning rate.")
@click.option("--seed", type=int, help="Training seed.")
@click.option("--overwrite", is_flag=True, help="Replace a finished training made with other settings.")
@click.pass_context
def train(ctx, samples_path, valid_path, out, config_path, model, device, epochs, lr, seed, overwrite) -> None:
    """LoRA fine-tuning of the target LLM on a set of samples (response-only loss, early stopping).

    \b
    Example: deft train --samples runs/ml100k/coreset-256.jsonl --valid runs/ml100k/valid.jsonl --out runs/ml100k/train-256
    """
    from deft.pipeline import run_train

    cfg = _config(config_path, {"model.name": model, "model.device": device, "training.epochs": epochs,
                                "training.lr": lr, "training.seed": seed})
    result = run_train(cfg, samples_path, valid_path, out, overwrite=overwrite, progress=not ctx.obj["quiet"])
    loss = "no validation data" if result.best_valid_loss is None else f"best validation loss {result.best_valid_loss:.4f}"
    click.echo(f"adapter: {result.adapter_dir} ({loss}, {result.epochs_run} epochs, {result.wall_s:.0f} s)")


@app.command()
@click.argument("source", required=False)  # none: the config's data.source (default ml-100k)
@functools.partial(_data_options, stride=False)  # test prompts are one per user: a stride has nothing to thin
@click.option("--adapter", type=click.Path(file_okay=False), help="LoRA adapter directory (none = the base model).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--model", help="Target LLM (default smollm2-135m).")
@click.option("--device", help="auto, cpu, cuda or cuda:N.")
@click.option("--max-users", type=int, help="Evaluate the first N test users only.")
@click.option("--overwrite", is_flag=True, help="Replace an evaluation in OUT made with other inputs or settings.")
@click.pass_context
def evaluate(ctx, source, config_path, fmt, items, split, construction, max_history, adapter, out, model, device,
             max_users, overwrite) -> None:
    """BIGRec grounding evaluation: generate for every test user, ground to items, Recall/NDCG@K.

    \b
    Example: deft evaluate ml-100k --adapter runs/ml100k/train-256/adapter --out runs/ml100k/eval-256
    """
    from deft.pipeline import run_evaluate

    overrides = _data_overrides(source, fmt, items, split, construction, max_history, None)
    overrides.update({"model.name": model, "model.device": device, "evaluation.max_users": max_users})
    cfg = _config(config_path, overrides)
    result = run_evaluate(cfg, adapter, out, progress=not ctx.obj["quiet"], overwrite=overwrite)
    click.echo("  ".join(f"{k}={v:.4f}" for k, v in result.metrics.items()))



@app.command()
@click.argument("a", type=click.Path(exists=True))
@click.argument("b", type=click.Path(exists=True))
@click.option("--metric", "metrics", multiple=True, help="Per-user metric, e.g. ndcg@10 (repeatable; default all).")
@click.option("--samples", type=click.IntRange(min=100), default=1000, show_default=True,
              help="Bootstrap resamples.")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
def compare(a, b, metrics, samples, seed) -> None:
    """Paired bootstrap of A minus B over the same test users, per metric (95% interval, two-sided p).

    A and B are `deft evaluate --out` directories, experiment arm directories (runs/x/arms/<key>) or
    per_user.parquet files.

    \b
    Example: deft compare runs/x/arms/dealrec-256-s0 runs/x/arms/random-256-s0
    """
    from deft.evaluation import compare_evaluations
    from deft.report.common import p_text

    table = compare_evaluations(a, b, metrics=metrics or None, n=samples, seed=seed)
    click.echo(f"A = {a}\nB = {b}\n{table['users'].iloc[0]} users, {samples} paired bootstrap resamples")
    for row in table.itertuples(index=False):
        verdict = "A better" if row.lo > 0 else "B better" if row.hi < 0 else "no clear difference"
        click.echo(f"{row.metric:>10}  A {row.a:.4f}  B {row.b:.4f}  A-B {row.mean_diff:+.4f} "
                   f"[{row.lo:+.4f}, {row.hi:+.4f}]  p {p_text(row.p_value, samples)}  {verdict}")


# ----------------------------------------------------------------------------------------------- experiments


def _parse_set(ctx, param, items: tuple[str, ...]) -> dict[str, Any]:
    """`--set section.key=value` items as dotted overrides; values are YAML (`4`, `0.5`, `[random, dealrec]`)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        dotted, sep, text = item.partition("=")
        section, dot, key = dotted.strip().partition(".")
        if not sep or not dot or not section or not key:
            raise click.BadParameter(f"expected SECTION.KEY=VALUE, e.g. training.epochs=4; got {item!r}")
        try:
            out[f"{section}.{key}"] = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise click.BadParameter(f"{item!r}: the value is not valid YAML ({exc.problem})") from exc
    return out


_set_option = click.option(
    "--set", "overrides", multiple=True, callback=_parse_set, metavar="SECTION.KEY=VALUE",
    help="Override one config setting (repeatable), e.g. --set experiment.arms=[random,dealrec].")


@app.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Experiment directory.")
@_set_option
@click.option("--overwrite", is_flag=True, help="Replace cached arms made with other settings.")
@click.pass_context
def run(ctx, config_path, out, overrides, overwrite) -> None:
    """An experiment of arms x budgets x seeds: results.json, results.md and plots; resumes from cached arms.

    \b
    Example: deft run configs/bench/ml100k-cpu.yaml --out runs/bench-cpu
             deft run configs/bench/ml100k-cpu.yaml --out runs/quick --set experiment.seeds=[0]
    """
    from deft.config import load_config
    from deft.experiment import run_experiment

    cfg = load_config(config_path, overrides)
    result = run_experiment(cfg, out, overwrite=overwrite, progress=not ctx.obj["quiet"],
                            command=" ".join(["deft", *sys.argv[1:]]))
    click.echo(f"results: {result.markdown}")


@app.command()
@click.argument("name", type=click.Choice(["ml100k-cpu", "ml100k-full", "ml100k-mini", "tiny"]))
@click.option("--out", type=click.Path(file_okay=False), help="Experiment directory (default runs/bench-NAME).")
@_set_option
@click.option("--overwrite", is_flag=True, help="Replace cached arms made with other settings.")
@click.pass_context
def bench(ctx, name, out, overrides, overwrite) -> None:
    """Run a named benchmark tier from configs/bench/ (shortcut for `deft run`).

    \b
    Example: deft bench ml100k-cpu
             deft bench ml100k-cpu --set experiment.arms=[random,dealrec]   the headline arms only
    """
    from importlib.resources import as_file, files

    # configs/bench/NAME.yaml in a checkout; the same file shipped as package data in an install
    with as_file(files("deft_cli.bench") / f"{name}.yaml") as config_path:
        ctx.invoke(run, config_path=str(config_path), out=out or f"runs/bench-{name}", overrides=overrides,
                   overwrite=overwrite)


@app.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Run directory (an experiment's directory reuses its scores).")
@click.option("--lambda", "lambdas", type=click.FloatRange(min=0), multiple=True,
              help="A λ to try (repeatable; default 0.1 0.3 0.5 1 2).")
@click.option("--budget", help="Coreset size, e.g. 256 or 2% (default: the smallest experiment budget).")
@click.option("--seed", "seeds", type=click.IntRange(min=0), multiple=True,
              help="Selection and training seed (repeatable; default: the first experiment seed).")
@_set_option
@click.option("--overwrite", is_flag=True,
              help="Replace cached tuning runs, and score stages, made with other settings (in an experiment's "
                   "directory, replaced scores also retire its arms).")
@click.pass_context
def tune(ctx, config_path, out, lambdas, budget, seeds, overrides, overwrite) -> None:
    """Choose DEALRec's λ on validation: for each λ, select, fine-tune and rank the validation items.

    Test items play no part in the choice; the users early stopping uses are left out of the ranking. Writes
    tune.md, tune.json and tune_lambda.png; each (λ, seed) run is cached, so an interrupted sweep resumes.

    \b
    Example: deft tune configs/bench/ml100k-cpu.yaml --out runs/bench-ml100k-cpu --set evaluation.max_users=300
             deft tune configs/demo.yaml --out runs/demo --lambda 0.3 --lambda 1 --budget 128
    """
    from deft.config import load_config
    from deft.tuning import DEFAULT_LAMBDAS, tune_lambda

    cfg = load_config(config_path, overrides)
    parsed_budget = None if budget is None else int(budget) if budget.strip().isdigit() else budget
    result = tune_lambda(cfg, out, lambdas=lambdas or DEFAULT_LAMBDAS, budget=parsed_budget, seeds=seeds or None,
                         overwrite=overwrite, progress=not ctx.obj["quiet"],
                         command=" ".join(["deft", *sys.argv[1:]]))
    click.echo(f"best λ: {result.best_lambda:g} (validation); report: {result.markdown_path}")


def main() -> None:
    app(prog_name="deft")


if __name__ == "__main__":
    main()
