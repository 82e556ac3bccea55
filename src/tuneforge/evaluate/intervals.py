"""Confidence intervals and paired tests for evaluation metrics: pure functions of per-example numbers.

A metric on 872 examples is an estimate: another 872 sentences from the same source would give another
number. ``bootstrap_ci`` says how far: it draws ``resamples`` sets of n examples with replacement (a fixed
``seed``, so the same predictions always give the same interval), recomputes the metric on each, and
returns the 2.5th and 97.5th percentiles (the percentile bootstrap).

Every metric here is a ``Statistic``: per-example numbers ``data`` ``[n, k]`` and a ``finish`` that turns
their sums over a resample into the metric. Most metrics are functions of such sums (accuracy: the
correct count; macro F1: per-class true positives, predicted and true counts; MSE: the squared errors;
corpus BLEU and chrF: sacrebleu's own per-sentence n-gram statistics, summed as ``corpus_bleu`` sums
them), so a resample is a row of counts ``W`` and all resamples together one matrix product ``W @ data``:
a 1,000-resample interval of an 872-example classification costs milliseconds. Spearman's rho is not a
function of sums (ranks change with the resample) and is computed on the resampled rows (``additive=False``).

The unit of resampling is the example: a sentence for NER (``token_classification``'s examples are
sentences), a document (one generated text against its references) for BLEU/chrF/ROUGE.

Comparing two runs on the same examples (``paired_difference``): the same resamples are drawn for both,
so the interval of B - A accounts for the examples both found easy or hard. Its test is McNemar's exact
test for accuracy-type metrics (0/1 per example) and otherwise the paired bootstrap test: the share of
resampled differences at least as far from the observed one as the observed one is from 0 (Koehn 2004,
the "shift" form), two-sided.

``statistics_for(kind, rows, meta)`` builds the statistics of every metric a predictions file
(``eval/predictions.jsonl``, written by ``evaluate.stage``) supports; its numbers equal those of
``tuneforge.tasks.metrics`` on the same predictions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
DEFAULT_ALPHA = 0.05
#: Bootstrap index matrices are drawn in chunks of at most this many cells (memory stays ~16 MB x k).
_CHUNK_CELLS = 2_000_000


@dataclass(frozen=True)
class Statistic:
    """A metric as per-example numbers and how to finish them.

    ``additive``: ``finish(sums)`` takes ``[r, k]`` column sums over each resample's examples (counted with
    repetition) and returns ``[r]`` metric values. Otherwise ``finish(rows)`` takes the resampled rows
    themselves, ``[r, n, k]``. ``binary``: ``data`` is one 0/1 column (correct or not per example) and the
    metric its mean times ``scale``: McNemar's test applies. ``unit``: "share" (0-1, differences said in
    points, x100), "points" (0-100), "value" (the metric's own unit, e.g. MSE)."""

    data: np.ndarray
    finish: Callable[[np.ndarray], np.ndarray]
    additive: bool = True
    binary: bool = False
    unit: str = "share"

    @property
    def n(self) -> int:
        return int(self.data.shape[0])

    def value(self) -> float:
        """The metric on all examples, once each."""
        if self.additive:
            return float(self.finish(self.data.sum(axis=0, keepdims=True))[0])
        return float(self.finish(self.data[None])[0])

    def on_indices(self, idx: np.ndarray) -> np.ndarray:
        """``[r]`` values of the metric on resamples given as example indices ``[r, n]``."""
        if self.additive:
            return self.finish(resample_counts(idx, self.n) @ self.data)
        return self.finish(self.data[idx])


def mean_statistic(values: Sequence[float] | np.ndarray, *, scale: float = 1.0, binary: bool = False,
                   unit: str = "share") -> Statistic:
    """The mean of per-example ``values`` (times ``scale``): accuracy from 0/1 correctness, MSE from
    squared errors, ROUGE from per-document F-measures."""
    data = np.asarray(values, dtype=np.float64).reshape(-1, 1)
    n = data.shape[0]
    return Statistic(data, lambda s: scale * s[:, 0] / n, binary=binary, unit=unit)


# --------------------------------------------------------------------------------------- resampling


def resample_counts(idx: np.ndarray, n: int) -> np.ndarray:
    """``[r, n]`` float counts: how often each example is in each resample (rows of ``idx``)."""
    r = idx.shape[0]
    flat = (idx + (np.arange(r)[:, None] * n)).ravel()
    return np.bincount(flat, minlength=r * n).reshape(r, n).astype(np.float64)


def index_chunks(n: int, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED):
    """Resamples of ``n`` example indices (with replacement), ``[r, n]`` chunks totalling ``resamples``
    rows. Deterministic for a given (n, resamples, seed): the chunking depends on n only."""
    if n <= 0:
        raise ValueError("cannot resample zero examples")
    rng = np.random.default_rng(seed)
    step = max(1, _CHUNK_CELLS // n)
    done = 0
    while done < resamples:
        r = min(step, resamples - done)
        yield rng.integers(0, n, size=(r, n))
        done += r


def resampled(fn: Callable[[np.ndarray], np.ndarray], n: int, *, resamples: int = DEFAULT_RESAMPLES,
              seed: int = DEFAULT_SEED) -> np.ndarray:
    """``[resamples]`` values of ``fn(idx)`` over bootstrap resamples of n examples."""
    return np.concatenate([np.asarray(fn(idx), dtype=np.float64).reshape(-1)
                           for idx in index_chunks(n, resamples, seed)])


def _as_fn(values_or_fn) -> Callable[[np.ndarray], np.ndarray]:
    if isinstance(values_or_fn, Statistic):
        return values_or_fn.on_indices
    if callable(values_or_fn):
        return values_or_fn
    return mean_statistic(values_or_fn).on_indices


def bootstrap_ci(values_or_fn, n: int, *, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                 alpha: float = DEFAULT_ALPHA) -> tuple[float, float]:
    """The ``1 - alpha`` percentile-bootstrap interval ``(low, high)`` of a metric over ``n`` examples.

    ``values_or_fn``: per-example values (the metric is their mean), a ``Statistic``, or a function of
    an index matrix ``[r, n]`` returning the ``[r]`` metric values of those resamples."""
    draws = resampled(_as_fn(values_or_fn), n, resamples=resamples, seed=seed)
    return percentile_interval(draws, alpha)


def percentile_interval(draws: np.ndarray, alpha: float = DEFAULT_ALPHA) -> tuple[float, float]:
    low, high = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def intervals(stats: dict[str, Statistic], *, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
              alpha: float = DEFAULT_ALPHA) -> dict[str, list[float]]:
    """``{metric: [low, high]}`` for every statistic, all on the same resamples."""
    if not stats:
        return {}
    n = next(iter(stats.values())).n
    draws = {name: [] for name in stats}
    for idx in index_chunks(n, resamples, seed):
        for name, stat in stats.items():
            draws[name].append(stat.on_indices(idx))
    return {name: list(percentile_interval(np.concatenate(d), alpha)) for name, d in draws.items()}


# ------------------------------------------------------------------------------------- paired tests


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: ``b`` examples only A got right, ``c`` only B got right.

    Under no difference each discordant example is a fair coin: p = 2 P(X <= min(b, c)), X ~ Bin(b + c,
    1/2), capped at 1 (the binomial test of scipy's ``binomtest(b, b + c).pvalue``)."""
    b, c = int(b), int(c)
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    total, low = b + c, min(b, c)
    if total == 0:
        return 1.0
    if total <= 1000:  # exact in integers
        tail = sum(math.comb(total, k) for k in range(low + 1))
        return min(1.0, 2 * tail / 2**total)
    logs = [math.lgamma(total + 1) - math.lgamma(k + 1) - math.lgamma(total - k + 1) - total * math.log(2)
            for k in range(low + 1)]
    top = max(logs)
    return min(1.0, 2 * math.exp(top) * sum(math.exp(x - top) for x in logs))


@dataclass
class PairedResult:
    a: float
    b: float
    difference: float  # b - a
    low: float
    high: float
    p_value: float
    test: str  # "McNemar exact" or "paired bootstrap"
    discordant: tuple[int, int] | None = None  # (only A right, only B right) for McNemar


def paired_difference(stat_a: Statistic, stat_b: Statistic, *, resamples: int = DEFAULT_RESAMPLES,
                      seed: int = DEFAULT_SEED, alpha: float = DEFAULT_ALPHA) -> PairedResult:
    """B - A on the same examples (rows aligned): value, paired-bootstrap interval, and the p-value of
    McNemar's exact test (binary statistics) or of the paired bootstrap test (the others)."""
    if stat_a.n != stat_b.n:
        raise ValueError(f"paired statistics need the same examples: {stat_a.n} vs {stat_b.n}")
    a, b = stat_a.value(), stat_b.value()
    observed = b - a
    diffs = resampled(lambda idx: stat_b.on_indices(idx) - stat_a.on_indices(idx), stat_a.n, resamples=resamples,
                      seed=seed)
    low, high = percentile_interval(diffs, alpha)
    if stat_a.binary and stat_b.binary:
        right_a, right_b = stat_a.data[:, 0] > 0, stat_b.data[:, 0] > 0
        only_a, only_b = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
        return PairedResult(a, b, observed, low, high, mcnemar_exact(only_a, only_b), "McNemar exact",
                            (only_a, only_b))
    return PairedResult(a, b, observed, low, high, paired_bootstrap_p(diffs, observed), "paired bootstrap")


def paired_bootstrap_p(diffs: np.ndarray, observed: float) -> float:
    """Two-sided p-value of "no difference" from resampled differences: the share (add-one) of resamples
    whose difference lies at least |observed| from the observed one (the bootstrap distribution shifted
    to mean 0 under the null)."""
    if observed == 0:
        return 1.0
    extreme = int(np.sum(np.abs(diffs - observed) >= abs(observed) - 1e-12))
    return min(1.0, (extreme + 1) / (len(diffs) + 1))


# --------------------------------------------------------------------- the statistics of each task kind

#: Kinds of predictions file, and the resampling unit said in reports.
UNITS = {"classification": "examples", "multilabel": "examples", "regression": "examples", "ner": "sentences",
         "text": "documents", "final_number": "examples"}


def statistics_for(kind: str, rows: list[dict], meta: dict | None = None) -> dict[str, Statistic]:
    """Every metric's ``Statistic`` from a predictions file's rows (``evaluate.stage`` writes them)."""
    meta = meta or {}
    builders = {"classification": _classification, "multilabel": _multilabel, "regression": _regression,
                "ner": _ner, "text": _text, "final_number": _final_number}
    if kind not in builders:
        return {}
    if not rows:
        return {}
    return builders[kind](rows, meta)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)


def _classification(rows: list[dict], meta: dict) -> dict[str, Statistic]:
    """Accuracy (0/1 per example) and macro precision/recall/F1 over the classes present in the gold
    or predicted labels of the resample, as ``classification_metrics`` (scikit-learn's macro)."""
    gold = np.array([int(r["label"]) for r in rows])
    pred = np.array([int(r["prediction"]) for r in rows])
    classes = max(len(meta.get("label_names") or []), int(gold.max()) + 1, int(pred.max()) + 1)
    eye = np.eye(classes)
    data = np.concatenate([eye[gold] * (gold == pred)[:, None], eye[pred], eye[gold]], axis=1)

    def macro(which: str):
        def finish(s: np.ndarray) -> np.ndarray:
            tp, pc, tc = s[:, :classes], s[:, classes:2 * classes], s[:, 2 * classes:]
            seen = (pc + tc) > 0
            per = {"precision": _safe_div(tp, pc), "recall": _safe_div(tp, tc), "f1": _safe_div(2 * tp, pc + tc)}[which]
            return (per * seen).sum(axis=1) / np.maximum(seen.sum(axis=1), 1)
        return Statistic(data, finish)

    return {"accuracy": mean_statistic(gold == pred, binary=True), "macro_f1": macro("f1"),
            "macro_precision": macro("precision"), "macro_recall": macro("recall")}


def _multilabel(rows: list[dict], meta: dict) -> dict[str, Statistic]:
    """Micro F1/precision/recall, macro F1 (labels seen in the resample) and subset accuracy, at the
    thresholds the run used (its predicted label sets)."""
    names = list(meta.get("label_names") or sorted({x for r in rows for x in [*r["labels"], *r["prediction"]]}))
    index = {name: j for j, name in enumerate(names)}
    L = len(names)
    y = np.zeros((len(rows), L), dtype=bool)
    p = np.zeros((len(rows), L), dtype=bool)
    for i, r in enumerate(rows):
        y[i, [index[x] for x in r["labels"]]] = True
        p[i, [index[x] for x in r["prediction"]]] = True
    data = np.concatenate([p & y, p & ~y, ~p & y], axis=1).astype(np.float64)

    def micro(which: str):
        def finish(s: np.ndarray) -> np.ndarray:
            tp, fp, fn = s[:, :L].sum(1), s[:, L:2 * L].sum(1), s[:, 2 * L:].sum(1)
            return {"f1": _safe_div(2 * tp, 2 * tp + fp + fn), "precision": _safe_div(tp, tp + fp),
                    "recall": _safe_div(tp, tp + fn)}[which]
        return Statistic(data, finish)

    def macro_f1(s: np.ndarray) -> np.ndarray:
        tp, fp, fn = s[:, :L], s[:, L:2 * L], s[:, 2 * L:]
        seen = (tp + fp + fn) > 0
        return (_safe_div(2 * tp, 2 * tp + fp + fn) * seen).sum(1) / np.maximum(seen.sum(1), 1)

    return {"micro_f1": micro("f1"), "macro_f1": Statistic(data, macro_f1), "micro_precision": micro("precision"),
            "micro_recall": micro("recall"), "subset_accuracy": mean_statistic((p == y).all(axis=1), binary=True)}


def _regression(rows: list[dict], meta: dict) -> dict[str, Statistic]:
    """MSE, RMSE, MAE, R², Pearson (from sums of p, t, p², t², pt) and Spearman (ranks per resample);
    undefined correlations are 0, as in ``regression_metrics``."""
    p = np.array([float(r["prediction"]) for r in rows])
    t = np.array([float(r["label"]) for r in rows])
    n = len(rows)
    e = p - t
    moments = np.stack([p, t, p * p, t * t, p * t, e * e], axis=1)

    def r2(s: np.ndarray) -> np.ndarray:
        ss_res = s[:, 5]
        ss_tot = s[:, 3] - s[:, 1] ** 2 / n
        constant = ss_tot <= 1e-12 * np.maximum(s[:, 3], 1e-300)
        return np.where(constant, np.where(ss_res == 0, 1.0, 0.0), 1 - ss_res / np.where(constant, 1, ss_tot))

    def pearson(s: np.ndarray) -> np.ndarray:
        vp = s[:, 2] - s[:, 0] ** 2 / n
        vt = s[:, 3] - s[:, 1] ** 2 / n
        cov = s[:, 4] - s[:, 0] * s[:, 1] / n
        flat = (vp <= 1e-12 * np.maximum(s[:, 2], 1e-300)) | (vt <= 1e-12 * np.maximum(s[:, 3], 1e-300))
        return np.where(flat, 0.0, cov / np.sqrt(np.where(flat, 1, vp * vt)))

    def spearman(rows_: np.ndarray) -> np.ndarray:  # [r, n, 2]
        from scipy.stats import rankdata

        rp, rt = rankdata(rows_[:, :, 0], axis=1), rankdata(rows_[:, :, 1], axis=1)
        rp, rt = rp - rp.mean(1, keepdims=True), rt - rt.mean(1, keepdims=True)
        vp, vt = (rp * rp).sum(1), (rt * rt).sum(1)
        flat = (vp == 0) | (vt == 0)
        return np.where(flat, 0.0, (rp * rt).sum(1) / np.sqrt(np.where(flat, 1, vp * vt)))

    return {"mse": mean_statistic(e * e, unit="value"),
            "rmse": Statistic(e.reshape(-1, 1) ** 2, lambda s: np.sqrt(s[:, 0] / n), unit="value"),
            "mae": mean_statistic(np.abs(e), unit="value"),
            "pearson": Statistic(moments, pearson, unit="value"),
            "spearman": Statistic(np.stack([p, t], axis=1), spearman, additive=False, unit="value"),
            "r2": Statistic(moments, r2, unit="value")}


def _ner(rows: list[dict], meta: dict) -> dict[str, Statistic]:
    """Entity-level micro F1/precision/recall and token accuracy from per-sentence counts (correct,
    predicted and true entities as seqeval's default mode finds them; right and all tokens)."""
    from seqeval.metrics.sequence_labeling import get_entities

    counts = []
    for r in rows:
        gold, pred = list(r["tags"]), list(r["prediction"])
        true_set, pred_set = set(get_entities(gold)), set(get_entities(pred))
        counts.append([len(true_set & pred_set), len(pred_set), len(true_set),
                       sum(g == q for g, q in zip(gold, pred)), len(gold)])
    data = np.array(counts, dtype=np.float64)

    def entity(which: str):
        def finish(s: np.ndarray) -> np.ndarray:
            c, pc, tc = s[:, 0], s[:, 1], s[:, 2]
            return {"f1": _safe_div(2 * c, pc + tc), "precision": _safe_div(c, pc), "recall": _safe_div(c, tc)}[which]
        return Statistic(data, finish)

    return {"entity_f1": entity("f1"), "entity_precision": entity("precision"), "entity_recall": entity("recall"),
            "token_accuracy": Statistic(data, lambda s: _safe_div(s[:, 3], s[:, 4]))}


def _text(rows: list[dict], meta: dict) -> dict[str, Statistic]:
    """Corpus BLEU and chrF recomputed per resample from sacrebleu's per-document statistics (summed
    exactly as ``corpus_bleu``/``corpus_chrf`` sum them), ROUGE-1/2/L as means of per-document F-measures
    (best reference), all 0-100 as ``generation_metrics``."""
    import sacrebleu
    from rouge_score import rouge_scorer

    predictions = [str(r["prediction"]) for r in rows]
    refs = [[r["reference"]] if isinstance(r["reference"], str) else list(r["reference"]) for r in rows]
    streams = [[x[k] if k < len(x) else None for x in refs] for k in range(max(len(x) for x in refs))]
    out: dict[str, Statistic] = {}
    for name, metric in (("bleu", sacrebleu.BLEU()), ("chrf", sacrebleu.CHRF())):
        data = np.array(metric._extract_corpus_statistics(predictions, streams), dtype=np.float64)

        def finish(s: np.ndarray, metric=metric) -> np.ndarray:
            return np.array([metric._compute_score_from_stats([_int_or_float(v) for v in row]).score for row in s])
        out[name] = Statistic(data, finish, unit="points")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scores = [scorer.score_multi(x, p) for x, p in zip(refs, predictions)]
    for kind in ("rouge1", "rouge2", "rougeL"):
        out[kind] = mean_statistic([s[kind].fmeasure for s in scores], scale=100.0, unit="points")
    return out


def _int_or_float(v: float):
    return int(v) if float(v).is_integer() else float(v)


def _final_number(rows: list[dict], meta: dict) -> dict[str, Statistic]:
    """Final-number accuracy and the share answered (0-100), per example."""
    return {"final_number_accuracy": mean_statistic([bool(r["correct"]) for r in rows], scale=100.0, binary=True,
                                                    unit="points"),
            "answered": mean_statistic([bool(r.get("answered", r.get("predicted_number") is not None))
                                        for r in rows], scale=100.0, binary=True, unit="points")}


def eval_intervals(kind: str, rows: list[dict], meta: dict | None, metrics: dict, *,
                   resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                   alpha: float = DEFAULT_ALPHA) -> dict:
    """What eval.json gets: ``{"ci95": {metric: [low, high]}, "ci95_method": {...}}`` for the metrics of
    ``metrics`` that ``kind``'s rows support; empty when none does."""
    stats = {k: v for k, v in statistics_for(kind, rows, meta).items()
             if isinstance(metrics.get(k), (int, float)) and not isinstance(metrics.get(k), bool)}
    if not stats:
        return {}
    level = round(100 * (1 - alpha))
    return {f"ci{level}": intervals(stats, resamples=resamples, seed=seed, alpha=alpha),
            f"ci{level}_method": {"method": "percentile bootstrap", "resampled": UNITS.get(kind, "examples"),
                                  "examples": len(rows), "resamples": resamples, "seed": seed,
                                  "level": 1 - alpha}}
