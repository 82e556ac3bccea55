"""``tuneforge`` command line.

Heavy libraries (torch, transformers, peft) are imported inside the commands that need them, so
``tuneforge --help`` and ``tuneforge validate`` answer in a fraction of a second. User errors
(``TuneforgeError``) print one clear message and exit with status 2; only bugs show a traceback.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="tuneforge: from text data and a pretrained transformer to a better, verified task model.",
    pretty_exceptions_enable=False,
)

OVERRIDES = typer.Argument(None, help="Recipe overrides, key.path=value (e.g. train.learning_rate=1e-4).",
                           show_default=False)


def _err(message: str) -> None:
    from rich.console import Console

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {message}", markup=True)


def _guard(fn, *args, **kwargs):
    """Run a command body, turning user errors into a message and exit code 2."""
    from tuneforge.errors import TuneforgeError

    try:
        return fn(*args, **kwargs)
    except TuneforgeError as exc:
        _err(str(exc))
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        _err("interrupted; a run can continue from its last checkpoint with --resume")
        raise typer.Exit(130) from None


def _load(recipe: Path, overrides: Optional[List[str]], parsed: dict | None = None):
    """The recipe at ``recipe`` validated with ``overrides``; ``parsed``: its YAML, when the command read it already."""
    from tuneforge.config_io import load_config, read_yaml
    from tuneforge.recipe import Recipe

    parsed = read_yaml(recipe) if parsed is None else parsed
    if "search" in parsed:
        from tuneforge.errors import RecipeError

        raise RecipeError(f"{recipe} has a search: section: run the study with `tuneforge tune {recipe}` (remove "
                          "search: to train the recipe once)")
    return load_config(Recipe, recipe, overrides or [], parsed=parsed)


def _require_data(cfg, recipe: Path, where: str = "") -> None:
    """Fail before any work when a data file is missing, with the recipe's own note on how to get it."""
    from tuneforge.config_io import data_hint
    from tuneforge.errors import DataError

    from tuneforge.tasks import spec_for

    missing = [(key, path, "data file") for key, path in cfg.data.missing_files()]
    missing += [(key, path, "file") for key, path in spec_for(cfg).missing_files(cfg)]
    if missing:
        lines = [f"{where}{key}: {what} not found: {path}" for key, path, what in missing]
        hint = data_hint(recipe)
        if hint:
            lines.append(f"{recipe} says: {hint}")
        raise DataError("\n".join(lines))


@app.command()
def validate(recipe: Path = typer.Argument(..., help="Recipe YAML file."), overrides: Optional[List[str]] = OVERRIDES,
             explain: bool = typer.Option(False, "--explain", help="Also list every key with its default (list "
                                          "items as data.sources[].path).")):
    """Check a recipe (keys, types, cross-field rules; data files exist, their format can be told and their
    first rows have the columns the recipe names) without running anything."""
    def body():
        from tuneforge.config_io import read_yaml
        from tuneforge.recipe import describe_fields
        from tuneforge.stages import load_stages, plan

        checked: set[str] = set()

        def check_data(cfg, where: str = "") -> None:
            """The first rows of every data source, read as the data stage reads them (once per data section)."""
            import json

            from tuneforge.data.check import check_sources
            from tuneforge.errors import DataError
            from tuneforge.tasks import spec_for

            labels = spec_for(cfg).labels
            key = json.dumps([cfg.data.model_dump(mode="json"), labels], sort_keys=True)
            if key in checked:
                return
            checked.add(key)
            try:
                check_sources(cfg.data, labels=labels)
            except DataError as exc:
                raise DataError(f"{where}{exc}") from None

        parsed = read_yaml(recipe)  # once: the kind of recipe and the recipe itself
        if "search" in parsed:
            from tuneforge.tune.run import load_tune

            spec = load_tune(recipe, overrides or [])
            s = spec.search
            grid = f", {s.grid_size()} grid points" if s.sampler == "grid" else ""
            print(f"{recipe}: valid study: {len(s.parameters)} parameters ({', '.join(s.parameters)}){grid}; "
                  f"{s.sampler} sampler, {s.pruner} pruner, {spec.direction} {spec.metric}; up to "
                  f"{s.trial_budget()} trials in {spec.study_dir}")
            return
        if "stages" in parsed:
            runs = plan(load_stages(recipe, overrides or [], parsed=parsed))
            for r in runs:
                _require_data(r.recipe, recipe, f"stage {r.label}: ")
                check_data(r.recipe, f"stage {r.label}: ")
                print(f"{recipe}: stage {r.label}: task {r.recipe.task}, model from {r.model_from} "
                      f"-> {r.recipe.run_dir}")
            print(f"{recipe}: valid ({len(runs)} stage runs)")
            return
        cfg = _load(recipe, overrides, parsed)
        _require_data(cfg, recipe)
        check_data(cfg)
        print(f"{recipe}: valid (run directory {cfg.run_dir})")
        if explain:
            for key, default, desc in describe_fields():
                print(f"  {key} = {default}\n      {desc}")
    _guard(body)


def _stages_command(recipe: Path, overrides, resume: bool, overwrite: bool, parsed: dict):
    from tuneforge.errors import TuneforgeError
    from tuneforge.stages import load_stages, run_stages

    if resume:
        raise TuneforgeError("--resume applies to single runs; a stages recipe reuses its finished stages by itself "
                             "(run it again), or starts over with --overwrite")
    result = run_stages(load_stages(recipe, overrides or [], parsed=parsed), overwrite=overwrite)
    print(f"report: {result.report}")


def _warn_if_too_big(cfg) -> None:
    """Say before any work when the plan's peak exceeds the memory this machine has free (issue: silent OOM
    kills). Printed once, by the first process; the run goes on, since the plan is an estimate."""
    import os

    if os.environ.get("RANK", "0") != "0" or os.environ.get("TUNEFORGE_PLAN_CHECK", "1") == "0":
        return
    from tuneforge.plan import warn_if_too_big

    message = warn_if_too_big(cfg)
    if message:
        print(message, file=sys.stderr, flush=True)


def _train_command(recipe: Path, overrides, resume: bool, overwrite: bool, export: bool):
    def body():
        from tuneforge.config_io import read_yaml

        parsed = read_yaml(recipe)  # once: the kind of recipe and the recipe itself
        if "stages" in parsed:
            if not export:
                from tuneforge.errors import TuneforgeError

                raise TuneforgeError("a stages recipe runs with `tuneforge run` (each stage exports the model the "
                                     "next one starts from)")
            return _stages_command(recipe, overrides, resume, overwrite, parsed)
        cfg = _load(recipe, overrides, parsed)
        _require_data(cfg, recipe)
        _warn_if_too_big(cfg)
        if not export:
            cfg = cfg.model_copy(update={"export": cfg.export.model_copy(update={"enabled": False})})
        from tuneforge.train.run import train

        result = train(cfg, resume=resume, overwrite=overwrite)
        if not result.is_main:
            return
        if result.halted:
            print(f"halted at step {result.global_step}/{result.total_steps}; continue with: "
                  f"tuneforge {'run' if export else 'train'} {recipe} --resume")
            return
        if result.metrics:
            from tuneforge.tasks import spec_for

            print(f"validation: {spec_for(cfg).summary(result.metrics)}")
        if result.export_dir:
            print(f"exported model: {result.export_dir}")
        print(f"run directory: {result.run_dir}")
    _guard(body)


RESUME = typer.Option(False, "--resume", help="Continue from the run's last checkpoint (same data order and RNG).")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace an existing run directory of the same name.")


@app.command()
def run(recipe: Path = typer.Argument(..., help="Recipe YAML file."), overrides: Optional[List[str]] = OVERRIDES,
        resume: bool = RESUME, overwrite: bool = OVERWRITE):
    """The whole pipeline: prepare data, train, evaluate the best checkpoint, export and verify."""
    _train_command(recipe, overrides, resume, overwrite, export=True)


@app.command("train")
def train_cmd(recipe: Path = typer.Argument(..., help="Recipe YAML file."), overrides: Optional[List[str]] = OVERRIDES,
              resume: bool = RESUME, overwrite: bool = OVERWRITE):
    """Prepare data and train, keeping checkpoints and the evaluation; no export (see `tuneforge export`)."""
    _train_command(recipe, overrides, resume, overwrite, export=False)


@app.command()
def prepare(recipe: Path = typer.Argument(..., help="Recipe YAML file."), overrides: Optional[List[str]] = OVERRIDES,
            preview: int = typer.Option(0, "--preview", min=0, help="After preparing, print the first N training "
                                        "rows as the task encodes them for training (causal LM: the trained "
                                        "tokens marked; classification: text and label; NER: words and tags).")):
    """Run the data stage only: read, clean, deduplicate, split, decontaminate, augment, report."""
    def body():
        from tuneforge.data.prepare import prepare_task_data
        from tuneforge.tasks import spec_for

        cfg = _load(recipe, overrides)
        _require_data(cfg, recipe)
        out = cfg.run_dir / "data"
        spec = spec_for(cfg)
        with _row_counter("preparing data") as tick:
            prepared = prepare_task_data(cfg.data, cfg.seed, out, spec, progress=tick)
        _print_data_summary(prepared, out)
        if preview:
            from tuneforge.data.preview_command import print_preview

            print_preview(cfg, prepared, preview, spec)  # the task's own encoding, the one training uses
    _guard(body)


@contextlib.contextmanager
def _row_counter(what: str):
    """A live "rows read" counter on a terminal (reading a big corpus takes minutes); silent otherwise."""
    if not sys.stdout.isatty():
        yield None
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn(f"{what}: {{task.completed:,}} rows read"), TimeElapsedColumn(),
                  transient=True) as bar:
        task = bar.add_task(what, total=None)
        count = 0

        def tick() -> None:
            nonlocal count
            count += 1
            if count % 1000 == 0:
                bar.update(task, completed=count)

        yield tick


def _print_data_summary(prepared, out: Path) -> None:
    report = prepared.report
    dups = report["duplicates"]
    read = sum(c["read"] for c in report["sources"].values())
    print(f"rows read: {read:,}; rejected or removed: {report['rejected']['total']:,} "
          f"(exact duplicates {dups['exact']:,}, near-duplicates {dups['near']:,}, "
          f"contaminated {report['decontamination']['total']:,})")
    print("splits: " + ", ".join(f"{name} {n:,}" for name, n in prepared.counts.items()))
    if prepared.label_names:
        print(f"labels: {prepared.label_names}")
    print(f"report: {out / 'data_report.md'}; rejected rows: {out / 'rejected.jsonl'}")


@app.command()
def pairs(recipe: Path = typer.Argument(..., help="A GRPO recipe (task: grpo): its prompts, model and rewards."),
          overrides: Optional[List[str]] = OVERRIDES,
          out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: runs/<name>-pairs)."),
          min_margin: float = typer.Option(0.0, "--min-margin", min=0.0, help="Skip prompts whose best and worst "
                                           "completions' rewards differ by no more than this.")):
    """Build chosen/rejected pairs: sample grpo.num_generations completions per prompt with the recipe's
    model, score them with grpo.rewards, keep the best and the worst (train.jsonl, validation.jsonl), for
    a DPO recipe (task: preference)."""
    def body():
        from tuneforge.tasks.pairs import build_pairs

        cfg = _load(recipe, overrides)
        _require_data(cfg, recipe)
        target = out or cfg.output_dir / f"{cfg.name}-pairs"
        build_pairs(cfg, target, min_margin=min_margin)
        typer.echo(f"pairs written to {target} (train.jsonl, validation.jsonl; rewards.json, pairs_report.json)")
    _guard(body)


@app.command()
def evaluate(model_dir: Path = typer.Argument(..., help="An exported model directory (any task, any method)."),
             data_file: Path = typer.Argument(..., help="Labelled data in any format the task's data supports: "
                                              ".csv/.tsv/.jsonl/.json/.parquet, CoNLL/IOB, SQuAD .json, chat "
                                              "(alpaca/sharegpt/messages), source/target pairs."),
             overrides: Optional[List[str]] = OVERRIDES):
    """Score an export on a labelled file with its task's metrics, as its run's final evaluation does:
    eval.json, eval.md, plots (a classifier's confusion matrix), rejected.jsonl.

    Options as overrides: text_column, label_column, target_column, tags_column, target_file, format,
    batch_size, max_length, max_rejected_fraction, output_dir, allow_pickle, device.
    """
    def body():
        from tuneforge.evaluate.command import EvaluateConfig, describe_rejected, run_evaluate
        from tuneforge.config_io import load_config

        cfg = load_config(EvaluateConfig, None, overrides, base={"model_dir": str(model_dir),
                                                                  "data_file": str(data_file)})
        result = run_evaluate(cfg)
        rejected = describe_rejected(result)
        if rejected:
            print(rejected)
        print(f"{result.summary} on {result.examples} examples of {cfg.data_file} (model {cfg.model_dir}, "
              f"{result.task}); report: {result.report}")
    _guard(body)


@app.command()
def compare(run_a: Path = typer.Argument(..., help="Run A (runs/<name>), the baseline; or a tuneforge evaluate "
                                         "output folder."),
            run_b: Path = typer.Argument(..., help="Run B, compared with A on the same examples."),
            split: str = typer.Option("validation", "--split", help="validation or test (eval/ or eval/test/)."),
            metric: Optional[str] = typer.Option(None, "--metric", help="Only this metric (default: every metric "
                                                 "of the task that per-example predictions give)."),
            json_out: bool = typer.Option(False, "--json", help="Print the comparison as JSON (for scripts).")):
    """Is B better than A? Both runs' per-example predictions joined on the example: each metric's values,
    the paired difference B - A with its 95% bootstrap interval, and a paired test (McNemar for accuracy,
    paired bootstrap for F1, BLEU, ROUGE, MSE), said in words: significant at 0.05 or not."""
    def body():
        import json

        from tuneforge.evaluate.compare import compare as run_compare
        from tuneforge.evaluate.compare import render

        result = run_compare(run_a, run_b, split=split, metric=metric)
        if json_out:
            print(json.dumps(result.to_json(), indent=2))
        else:
            render(result)
    _guard(body)


@app.command()
def export(run_dir: Path = typer.Argument(..., help="A run directory (runs/<name>) with a best checkpoint."),
           overrides: Optional[List[str]] = OVERRIDES,
           export_format: Optional[str] = typer.Option(None, "--format", help="safetensors (default) or onnx: "
                                                       "also <export>/onnx/model.onnx, checked against PyTorch "
                                                       "(parity.md)."),
           quantize: Optional[str] = typer.Option(None, "--quantize", help="int8: also an int8 ONNX model "
                                                  "(model.int8.onnx), in the parity report; needs --format onnx.")):
    """Export a run's best checkpoint: LoRA merged, safetensors, tokenizer, model card; verified.

    Options as overrides: output_dir, verify, format, quantize, max_logit_diff, min_agreement, int8_min_agreement.
    """
    def body():
        from tuneforge.config_io import load_config
        from tuneforge.export.command import ExportConfig, run_export

        # the options are the config's fields; validated (allowed values listed) by load_config like overrides
        options = {k: v for k, v in {"format": export_format, "quantize": quantize}.items() if v is not None}
        cfg = load_config(ExportConfig, None, overrides, base={"run_dir": str(run_dir), **options})
        out = run_export(cfg)
        print(f"exported model: {out}")
        if cfg.format == "onnx":
            print(f"onnx: {out / 'onnx'} (parity report: {out / 'onnx' / 'parity.md'})")
    _guard(body)


@app.command("tune")
def tune_cmd(recipe: Path = typer.Argument(..., help="Recipe YAML file with a search: section."),
             overrides: Optional[List[str]] = OVERRIDES,
             workers: int = typer.Option(1, "--workers", min=1, help="Trials run in parallel processes on this "
                                         "machine, sharing the study's storage (the CPU threads are split)."),
             storage: Optional[str] = typer.Option(None, "--storage", help="Study database URL shared by several "
                                                   "machines, e.g. postgresql://user@host/db (default: SQLite file "
                                                   "runs/<name>/study.db)."),
             overwrite: bool = typer.Option(False, "--overwrite", help="Delete the study and its trials and start "
                                            "over (default: resume it)."),
             retrain_best: bool = typer.Option(False, "--retrain-best", help="After the search, train the best "
                                               "configuration on train + validation and evaluate it on the test "
                                               "split.")):
    """Hyperparameter search over any recipe keys (grid, random, TPE, CMA-ES; median/ASHA/Hyperband pruning).

    A killed or finished study resumes when run again: finished trials are kept, an interrupted one runs again.
    """
    def body():
        from tuneforge.tune.run import load_tune, tune

        spec = load_tune(recipe, overrides or [])
        try:
            result = tune(spec, workers=workers, storage=storage, overwrite=overwrite, retrain_best=retrain_best)
        except KeyboardInterrupt:
            _err("interrupted; run the same command again to resume the study (finished trials are kept, the "
                 "interrupted one runs again)")
            raise typer.Exit(130) from None
        counts = ", ".join(f"{n} {state.lower()}" for state, n in result.counts.items())
        print(f"trials: {counts}; {result.total_steps:,} training steps in total")
        if result.best_number is not None:
            params = ", ".join(f"{k}={v}" for k, v in result.best_params.items())
            print(f"best: trial {result.best_number}, {spec.metric} {result.best_value:.4f} ({params})")
        if result.retrained is not None:
            print(f"retrained best: test {spec.metric} {result.retrained.metrics.get(spec.metric):.4f}; "
                  f"run directory {result.retrained.run_dir}")
        print(f"report: {result.report}")
    _guard(body)


@app.command()
def serve(model_dir: Path = typer.Argument(..., help="An exported model directory (tuneforge export writes one)."),
          host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (0.0.0.0: every interface)."),
          port: int = typer.Option(8000, "--port", help="TCP port."),
          api_key: Optional[List[str]] = typer.Option(None, "--api-key", help="Accepted API key (repeat for "
                                                      "several); default: $TUNEFORGE_API_KEY, comma-separated."),
          no_auth: bool = typer.Option(False, "--no-auth", help="Serve without API keys."),
          allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow pickle (.bin) weights; they can run "
                                            "code when loaded."),
          device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
          threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads."),
          dtype: str = typer.Option("fp32", "--dtype", help="fp32, bf16 or fp16 (CUDA) autocast."),
          max_batch_size: int = typer.Option(32, "--max-batch-size", help="Most inputs per model call."),
          max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", help="Longest wait for a batch to fill."),
          max_body_bytes: int = typer.Option(1_000_000, "--max-body-bytes", help="Largest request body (413 above)."),
          max_texts: int = typer.Option(256, "--max-texts", help="Most texts per /v1/classify or /v1/tokens "
                                        "request."),
          max_input_tokens: Optional[int] = typer.Option(None, "--max-input-tokens", help="Longest input in tokens "
                                                         "(default: the model's context)."),
          max_new_tokens: int = typer.Option(512, "--max-new-tokens", help="Most tokens a generation may ask."),
          request_timeout: float = typer.Option(60.0, "--request-timeout", help="Seconds before a request gets 504."),
          model_id: Optional[str] = typer.Option(None, "--model-id", help="Model name in the API (default: the "
                                                 "directory name).")):
    """Serve a model over HTTP: /v1/classify, /v1/tokens or OpenAI-compatible /v1/completions and
    /v1/chat/completions (streaming), with micro-batching, API keys, limits and Prometheus /metrics."""
    def body():
        from tuneforge.config_io import load_config
        from tuneforge.serve.command import run_server
        from tuneforge.serve.config import ServeConfig

        cfg = load_config(ServeConfig, None, None, base=dict(
            model_dir=str(model_dir), host=host, port=port, api_keys=api_key or [], no_auth=no_auth,
            allow_pickle=allow_pickle, device=device, dtype=dtype, threads=threads, max_batch_size=max_batch_size,
            max_wait_ms=max_wait_ms, max_body_bytes=max_body_bytes, max_texts=max_texts,
            max_input_tokens=max_input_tokens, max_new_tokens=max_new_tokens, request_timeout_s=request_timeout,
            model_id=model_id))
        run_server(cfg)
    _guard(body)


@app.command()
def predict(model_dir: Path = typer.Argument(..., help="An exported model directory."),
            input_file: Path = typer.Argument(..., help="CSV, TSV, JSONL, JSON or Parquet file with a text column."),
            output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output file: .csv for CSV, else "
                                                  "JSONL (default: <input stem>.predictions.jsonl)."),
            overrides: Optional[List[str]] = OVERRIDES):
    """Predict every row of a file (labels and scores, entities, or generations) to JSONL or CSV.

    Options as overrides: text_column, format, batch_size, truncate, max_new_tokens, chat, device, allow_pickle.
    """
    def body():
        from tuneforge.config_io import load_config
        from tuneforge.serve.predict import PredictConfig, run_predict

        base = {"model_dir": str(model_dir), "input_file": str(input_file)}
        if output is not None:
            base["output"] = str(output)
        summary = run_predict(load_config(PredictConfig, None, overrides, base=base))
        extra = f", {summary['truncated']} truncated" if summary["truncated"] else ""
        why = (f" ({100 * summary['rejected_fraction']:.1f}%; most common: {summary['top_reason']})"
               if summary["rejected"] else "")
        print(f"predicted {summary['rows']} rows{extra} -> {summary['output']}; {summary['rejected']} rejected "
              f"-> {summary['rejected_file']}{why}")
    _guard(body)


@app.command()
def doctor(json_out: bool = typer.Option(False, "--json", help="Print the checks as JSON (for scripts and CI)."),
           runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where runs go: its free disk space is "
                                         "checked (the nearest existing parent if it does not exist).")):
    """Check this machine and installation: Python, CPU (bf16, AMX), RAM, torch and the GPU, every dependency
    against requirements.lock, optional extras, model aliases, the matmul peak, disk space. Exit code 1 when
    something `make demo` needs is missing; paste the output into bug reports."""
    def body():
        from tuneforge.doctor import collect, exit_code, render_json, render_text

        checks = collect(runs_dir)
        print(render_json(checks) if json_out else render_text(checks), end="")
        return exit_code(checks)
    raise typer.Exit(_guard(body))


@app.command("plan")
def plan_cmd(recipe: Path = typer.Argument(..., help="Recipe YAML file."), overrides: Optional[List[str]] = OVERRIDES,
             memory: Optional[str] = typer.Option(None, "--memory", help="Memory budget per process (e.g. 24GiB): "
                                                  "does it fit, and the cheapest recipe changes that make it fit."),
             device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, h100, a100-80gb, l4 or rtx4090 "
                                                  "(default: this machine's GPU, else cpu)."),
             measure: int = typer.Option(0, "--measure", min=0, help="Also run N real training steps here and "
                                         "print measured vs planned peak memory and step time."),
             processes: Optional[int] = typer.Option(None, "--processes", min=1, help="Processes sharing the "
                                                     "global batch (default: this launch's)."),
             shard: Optional[str] = typer.Option(None, "--shard", help="none, zero2, zero3 or fsdp."),
             json_out: bool = typer.Option(False, "--json", help="Print the plan as JSON.")):
    """Estimate peak memory and time of a recipe's training before any work (no weights are loaded)."""
    def body():
        from tuneforge.plan.command import run_plan

        cfg = _load(recipe, overrides)
        if measure:
            _require_data(cfg, recipe)
        run_plan(cfg, recipe_path=recipe, overrides=overrides, device=device, memory=memory, measure_steps=measure,
                 processes=processes, shard=shard, as_json=json_out)
    _guard(body)


bench_app = typer.Typer(no_args_is_help=True, help="Measure this machine (cached; used for MFU during training).")
app.add_typer(bench_app, name="bench")


@bench_app.command("peak")
def bench_peak(dtype: str = typer.Option("bf16", "--dtype", help="bf16, fp32, or fp16 (CUDA only)."),
               device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda if "
                                                    "available, else cpu)."),
               force: bool = typer.Option(False, "--force", help="Measure again even if a value is cached."),
               sizes: Optional[str] = typer.Option(None, "--sizes", hidden=True,
                                                   help="Comma-separated matmul sizes (tests).")):
    """Measure the matmul peak (TFLOP/s) of this machine for one dtype and cache it: the denominator of
    the MFU that training prints. Uses torch's current thread count."""
    def body():
        import torch

        from tuneforge.train.peak import cached_entry, measure_peak, peak_file, store

        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        entry = None if force else cached_entry(dev, dtype)
        if entry is None:
            size_list = [int(s) for s in sizes.split(",")] if sizes else None
            entry = measure_peak(dev, dtype, size_list)
            where = f"cached in {store(entry)}"
        else:
            where = f"cached value from {entry['measured_at']} in {peak_file()} (--force to measure again)"
        fp = entry["fingerprint"]
        machine = fp.get("gpu") or f"{fp['cpu']}, {fp['threads']} thread(s)"
        for n, flops in entry["by_size"].items():
            print(f"{dtype} matmul {n}x{n}: {flops / 1e12:.3f} TFLOP/s")
        print(f"peak {dtype} on {dev} ({machine}): {entry['flops'] / 1e12:.3f} TFLOP/s; {where}")
    _guard(body)


tokenizer_app = typer.Typer(no_args_is_help=True, help="Tokenizers for pretraining from scratch.")
app.add_typer(tokenizer_app, name="tokenizer")


@tokenizer_app.command("train")
def tokenizer_train(
    corpus: List[Path] = typer.Argument(..., help="Corpus files: .txt (a text per line), .csv/.tsv/.jsonl/.json/"
                                        ".parquet records, datasets folders, folders or globs of text files."),
    out: Path = typer.Option(..., "--out", help="Output directory; AutoTokenizer.from_pretrained(DIR) loads it."),
    type_: str = typer.Option("bpe", "--type", help="bpe (byte-level, GPT-2) | wordpiece (BERT) | unigram "
                              "(SentencePiece, byte fallback) | char (one token per character, nanoGPT)."),
    vocab_size: Optional[int] = typer.Option(None, "--vocab-size", help="Vocabulary size incl. special tokens "
                                             "(default 8000; not for char)."),
    min_frequency: Optional[int] = typer.Option(None, "--min-frequency", help="Minimum count of a merge "
                                                "(bpe/wordpiece, default 2) or a character (char, default 1)."),
    special_token: Optional[List[str]] = typer.Option(None, "--special-token", help="A special token (repeat the "
                                                      "option); replaces the per-type defaults."),
    lowercase: bool = typer.Option(False, "--lowercase", help="Lowercase all text (stored in the tokenizer)."),
    normalization: str = typer.Option("none", "--normalization", help="Unicode normalisation: none | nfc | nfkc."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="model_max_length (default 1024)."),
    text_column: Optional[str] = typer.Option(None, "--text-column", help="Column of record files holding the "
                                              "text (default text; chat records are recognised)."),
    whole_files: bool = typer.Option(False, "--whole-files", help="A .txt file is one text (newlines kept), not "
                                     "one text per line; use it for char."),
):
    """Train a bpe, wordpiece, unigram or char tokenizer on a corpus and save it for transformers."""
    def body():
        from tuneforge.data.corpus import corpus_texts
        from tuneforge.models.tokenizer_train import INFO_FILE, config_from_options, train_tokenizer

        cfg = config_from_options(type=type_, vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=special_token or None, lowercase=lowercase,
                                  normalization=normalization, max_length=max_length)
        with _row_counter("training tokenizer") as tick:
            texts = corpus_texts(corpus, text_column=text_column, whole_files=whole_files, progress=tick)
            train_tokenizer(texts, cfg, out)
        import json

        info = json.loads((out / INFO_FILE).read_text(encoding="utf-8"))
        stats = info["corpus"]
        print(f"{cfg.type} tokenizer: vocabulary {info['vocab_size']:,}, {stats['texts']:,} "
              f"text{'s' if stats['texts'] != 1 else ''}, "
              f"{stats['characters']:,} characters, {info['seconds']:.1f}s; saved to {out}")
        if texts.rejected:
            print(f"skipped {texts.rejected:,} rejected rows (first: {texts.rejected_examples[0]})")
    _guard(body)


def main() -> None:
    # peft imports bitsandbytes and torchao whenever they are installed, and both log at import about
    # optional kernels they cannot load here (then fall back): quiet those loggers for every command.
    from tuneforge.models.quantize import quiet_kernel_loaders

    quiet_kernel_loaders()
    app()


if __name__ == "__main__":
    main()
