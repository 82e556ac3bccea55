"""``tuneforge compare RUN_A RUN_B``: is B really better than A, or is the difference noise?

Both runs' per-example predictions (``eval/predictions.jsonl``, or ``eval/test/predictions.jsonl`` with
``--split test``; written by every evaluation, see ``evaluate.stage``) are joined on the example id. Runs
evaluated on different examples are refused (the counts of shared and unshared ids say how different);
so are runs whose shared examples have different gold labels. For each metric of the task: A's value,
B's, the paired difference B - A with its 95% paired-bootstrap interval (the same resamples of examples
for both runs), and a paired test: McNemar's exact test for accuracy-type metrics (0/1 per example),
the paired bootstrap test for the others (F1, BLEU, ROUGE, MSE, ...). See ``evaluate.intervals``.

A folder written by ``tuneforge evaluate`` (eval.json and predictions.jsonl in it) works as a run too.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tuneforge.errors import TuneforgeError
from tuneforge.evaluate.intervals import (
    DEFAULT_ALPHA,
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    PairedResult,
    paired_difference,
    statistics_for,
)

SPLITS = ("validation", "test")
#: the fields of a predictions row that hold the gold answer, by kind
_GOLD = {"classification": "label", "multilabel": "labels", "regression": "label", "ner": "tags",
         "text": "reference", "final_number": "reference"}


@dataclass
class Evaluated:
    """One run's evaluation of a split: its folder, predictions rows, kind and metrics."""

    run: Path
    folder: Path
    kind: str
    meta: dict
    rows: list[dict]
    metrics: dict


@dataclass
class MetricComparison:
    metric: str
    a: float
    b: float
    difference: float
    ci95: list[float]
    test: str
    p_value: float
    significant: bool
    better: str | None  # "A", "B", or None when equal
    unit: str
    summary: str
    discordant: dict | None = None


@dataclass
class Comparison:
    a: str
    b: str
    split: str
    kind: str
    examples: int
    resampled: str
    resamples: int
    seed: int
    alpha: float
    metrics: list[MetricComparison] = field(default_factory=list)

    def to_json(self) -> dict:
        out = asdict(self)
        out["metrics"] = {m.metric: {k: v for k, v in asdict(m).items() if k != "metric"} for m in self.metrics}
        return out


def evaluation_folder(run: Path, split: str) -> Path:
    """Where ``run``'s evaluation of ``split`` is: ``RUN/eval`` (``RUN/eval/test``), or ``run`` itself
    (``run/test``) when it is an evaluation folder (``tuneforge evaluate`` output)."""
    if split not in SPLITS:
        raise TuneforgeError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    run = Path(run)
    if not run.exists():
        raise TuneforgeError(f"{run}: no such run directory")
    for base in (run / "eval", run):
        folder = base / "test" if split == "test" else base
        if (folder / "eval.json").exists() or (folder / "predictions.jsonl").exists():
            return folder
    where = run / "eval" / ("test" if split == "test" else "")
    if split == "test" and (run / "eval" / "eval.json").exists():
        raise TuneforgeError(f"{run}: no test evaluation ({where} is missing: the run's data had no test split); "
                             "compare --split validation")
    raise TuneforgeError(f"{run}: no evaluation found ({where / 'eval.json'} is missing); is it a finished run "
                         "directory (runs/<name>)?")


def load_evaluation(run: Path, split: str = "validation") -> Evaluated:
    from tuneforge.evaluate.stage import PREDICTIONS_FILE

    folder = evaluation_folder(run, split)
    metrics = {}
    if (folder / "eval.json").exists():
        metrics = json.loads((folder / "eval.json").read_text(encoding="utf-8"))
    path = folder / PREDICTIONS_FILE
    if not path.exists():
        raise TuneforgeError(f"{run}: {path} is missing: this evaluation predates per-example predictions, or its "
                             "task keeps none (loss-only and preference tasks); evaluate the run again "
                             "(tuneforge evaluate RUN/export DATA_FILE writes one) to compare it")
    with open(path, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    info = metrics.get("predictions") if isinstance(metrics.get("predictions"), dict) else {}
    kind = info.get("kind") or _infer_kind(rows)
    meta = {k: v for k, v in info.items() if k not in ("file", "kind", "examples")}
    return Evaluated(run=Path(run), folder=folder, kind=kind, meta=meta, rows=rows, metrics=metrics)


def _infer_kind(rows: list[dict]) -> str:
    first = rows[0] if rows else {}
    if "tags" in first:
        return "ner"
    if "labels" in first:
        return "multilabel"
    if "reference" in first:
        return "final_number" if "correct" in first else "text"
    if isinstance(first.get("label"), float) or "error" in first:
        return "regression"
    return "classification"


def join(a: Evaluated, b: Evaluated) -> tuple[list[dict], list[dict]]:
    """A's and B's rows in the same order (A's), or a refusal naming how the examples differ."""
    if a.kind != b.kind:
        raise TuneforgeError(f"the runs' predictions are of different kinds: A ({a.run}) {a.kind}, B ({b.run}) "
                             f"{b.kind}; compare runs of the same task")
    ids_a = [r["id"] for r in a.rows]
    ids_b = {r["id"]: r for r in b.rows}
    shared = [i for i in ids_a if i in ids_b]
    only_a, only_b = len(ids_a) - len(shared), len(ids_b) - len(shared)
    if only_a or only_b or not shared:
        raise TuneforgeError(
            f"the runs were evaluated on different examples: {len(shared)} shared, {only_a} only in A ({a.run}), "
            f"{only_b} only in B ({b.run}); a paired comparison needs the same examples (the same validation or "
            "test data)")
    rows_b = [ids_b[i] for i in ids_a]
    gold = _GOLD.get(a.kind)
    if gold:
        differ = [ra["id"] for ra, rb in zip(a.rows, rows_b) if ra.get(gold) != rb.get(gold)]
        if differ:
            raise TuneforgeError(f"the runs' gold labels differ on {len(differ)} of {len(shared)} shared examples "
                                 f"(first: {differ[0]}): they were evaluated on different data under the same ids")
    return a.rows, rows_b


def compare(run_a: Path, run_b: Path, *, split: str = "validation", metric: str | None = None,
            resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED, alpha: float = DEFAULT_ALPHA) -> Comparison:
    """Compare two runs' evaluations of ``split`` example by example (see the module docstring)."""
    a, b = load_evaluation(run_a, split), load_evaluation(run_b, split)
    rows_a, rows_b = join(a, b)
    meta = {**b.meta, **a.meta}
    stats_a, stats_b = statistics_for(a.kind, rows_a, meta), statistics_for(b.kind, rows_b, meta)
    if not stats_a:
        raise TuneforgeError(f"no metric of kind {a.kind!r} can be compared from predictions")
    names = list(stats_a)
    if metric is not None:
        if metric not in stats_a:
            raise TuneforgeError(f"--metric {metric!r}: not a metric of these runs' predictions; choose from "
                                 f"{', '.join(names)}")
        names = [metric]
    from tuneforge.evaluate.intervals import UNITS

    out = Comparison(a=str(run_a), b=str(run_b), split=split, kind=a.kind, examples=len(rows_a),
                     resampled=UNITS.get(a.kind, "examples"), resamples=resamples, seed=seed, alpha=alpha)
    for name in names:
        result = paired_difference(stats_a[name], stats_b[name], resamples=resamples, seed=seed, alpha=alpha)
        out.metrics.append(_judge(name, result, stats_a[name].unit, alpha))
    return out


def _judge(name: str, r: PairedResult, unit: str, alpha: float) -> MetricComparison:
    from tuneforge.tasks.metrics import METRIC_DIRECTIONS

    direction = METRIC_DIRECTIONS.get(name, "max")
    significant = bool(r.p_value < alpha)
    if r.difference == 0:
        better = None
    else:
        better = "B" if (r.difference > 0) == (direction == "max") else "A"
    level = round(100 * (1 - alpha))
    head = (f"A and B are equal on {name}" if better is None else
            f"B is {'better' if better == 'B' else 'worse'} than A on {name}")
    test = "McNemar" if r.test.startswith("McNemar") else "paired bootstrap"
    summary = (f"{head}: {format_difference(r.difference, unit)} [{format_bound(r.low, unit)}, "
               f"{format_bound(r.high, unit)}], {test} {format_p(r.p_value)}, "
               f"{'significant' if significant else 'not significant'}")
    if level != 95:
        summary += f" ({level}% interval, level {alpha:g})"
    discordant = None
    if r.discordant is not None:
        discordant = {"only_a_right": r.discordant[0], "only_b_right": r.discordant[1]}
    return MetricComparison(metric=name, a=r.a, b=r.b, difference=r.difference, ci95=[r.low, r.high], test=r.test,
                            p_value=r.p_value, significant=significant, better=better, unit=unit, summary=summary,
                            discordant=discordant)


def _scaled(value: float, unit: str) -> float:
    return 100 * value if unit == "share" else value


def format_difference(value: float, unit: str) -> str:
    if unit in ("share", "points"):
        return f"{_scaled(value, unit):+.2f} points"
    return f"{value:+.4g}"


def format_bound(value: float, unit: str) -> str:
    return f"{_scaled(value, unit):.2f}" if unit in ("share", "points") else f"{value:.4g}"


def format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3g}"


def format_value(value: float, unit: str) -> str:
    return f"{value:.4f}" if unit in ("share", "value") else f"{value:.2f}"


def render(comparison: Comparison, console=None) -> None:
    """The comparison as a rich table and one sentence per metric."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(highlight=False)
    c = comparison
    level = round(100 * (1 - c.alpha))
    table = Table(title=f"{c.split}: B - A on {c.examples:,} shared {c.resampled} (paired, {c.resamples:,} "
                        f"bootstrap resamples, seed {c.seed})", title_justify="left")
    for col, justify in (("metric", "left"), ("A", "right"), ("B", "right"), ("B - A", "right"),
                         (f"{level}% CI", "right"), ("test", "left"), ("p", "right"), ("verdict", "left")):
        table.add_column(col, justify=justify)
    for m in c.metrics:
        verdict = "equal" if m.better is None else f"{m.better} better"
        verdict += ", significant" if m.significant else ", not significant"
        table.add_row(m.metric, format_value(m.a, m.unit), format_value(m.b, m.unit),
                      format_difference(m.difference, m.unit),
                      f"[{format_bound(m.ci95[0], m.unit)}, {format_bound(m.ci95[1], m.unit)}]",
                      "McNemar" if m.test.startswith("McNemar") else "paired bootstrap",
                      "< 0.001" if m.p_value < 0.001 else f"{m.p_value:.3g}", verdict)
    console.print(f"A: {c.a}\nB: {c.b}", soft_wrap=True, markup=False)
    console.print(table)
    for m in c.metrics:
        console.print(m.summary, soft_wrap=True, markup=False)
