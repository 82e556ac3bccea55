"""Bootstrap confidence intervals and paired tests (``tuneforge.evaluate.intervals``): pure numpy, fast."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from tuneforge.evaluate.intervals import (
    bootstrap_ci,
    eval_intervals,
    intervals,
    mcnemar_exact,
    mean_statistic,
    paired_difference,
    statistics_for,
)


def _proportion(p: float, n: int) -> np.ndarray:
    return np.r_[np.ones(round(p * n)), np.zeros(n - round(p * n))]


def test_proportion_interval_matches_the_normal_approximation():
    low, high = bootstrap_ci(_proportion(0.8, 1000), 1000)
    half = 1.96 * math.sqrt(0.8 * 0.2 / 1000)  # 0.0248
    assert low == pytest.approx(0.8 - half, abs=0.005)
    assert high == pytest.approx(0.8 + half, abs=0.005)


def test_same_seed_same_interval_other_seed_other_interval():
    values = _proportion(0.7, 300)
    assert bootstrap_ci(values, 300, seed=0) == bootstrap_ci(values, 300, seed=0)
    assert bootstrap_ci(values, 300, seed=0) != bootstrap_ci(values, 300, seed=1)


def test_constant_metric_has_a_zero_width_interval():
    assert bootstrap_ci(np.full(50, 0.25), 50) == (0.25, 0.25)
    rows = [{"id": str(i), "label": i % 3, "prediction": i % 3} for i in range(30)]  # all right
    ci = intervals(statistics_for("classification", rows, {"label_names": ["a", "b", "c"]}))
    assert ci["accuracy"] == [1.0, 1.0] and ci["macro_f1"] == [1.0, 1.0]


def test_a_function_of_the_resample_indices_works_too():
    values = np.arange(100.0)
    by_fn = bootstrap_ci(lambda idx: values[idx].mean(axis=1), 100)
    assert by_fn == bootstrap_ci(values, 100)
    assert by_fn[0] < values.mean() < by_fn[1]


def _classification_rows(n=872, classes=2, right=0.86, seed=0):
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, classes, n)
    pred = np.where(rng.random(n) < right, gold, (gold + 1) % classes)
    return [{"id": f"dev.tsv:{i + 2}", "label": int(g), "prediction": int(p)}
            for i, (g, p) in enumerate(zip(gold, pred))]


def test_classification_statistics_equal_the_reported_metrics_and_are_fast():
    from tuneforge.tasks.metrics import classification_metrics

    rows = _classification_rows(classes=3)
    names = ["a", "b", "c"]
    stats = statistics_for("classification", rows, {"label_names": names})
    reported = classification_metrics([r["label"] for r in rows], [r["prediction"] for r in rows], names)
    for name, stat in stats.items():
        assert stat.value() == pytest.approx(reported[name], abs=1e-12), name
    start = time.perf_counter()
    ci = intervals(stats)
    assert time.perf_counter() - start < 1.0  # 872 examples, 1,000 resamples, four metrics
    for name, (low, high) in ci.items():
        assert low <= reported[name] <= high


def test_regression_ner_and_text_statistics_equal_the_reported_metrics():
    from tuneforge.tasks.metrics.task_metrics import generation_metrics, ner_metrics, regression_metrics

    rng = np.random.default_rng(1)
    p = rng.normal(size=120)
    t = p + rng.normal(size=120) * 0.5
    stats = statistics_for("regression", [{"label": float(a), "prediction": float(b)} for a, b in zip(t, p)])
    for name, value in regression_metrics(p, t).items():
        assert stats[name].value() == pytest.approx(value, abs=1e-9), name

    tags = ["O", "B-PER", "I-PER", "B-LOC"]
    gold = [[tags[j] for j in rng.integers(0, 4, rng.integers(1, 9))] for _ in range(60)]
    pred = [[g if rng.random() < 0.8 else tags[rng.integers(0, 4)] for g in s] for s in gold]
    stats = statistics_for("ner", [{"tags": g, "prediction": q} for g, q in zip(gold, pred)])
    reported = ner_metrics(gold, pred)
    for name, stat in stats.items():
        assert stat.value() == pytest.approx(reported[name], abs=1e-12), name

    words = "the cat sat on a mat and a dog ran far".split()
    refs = [" ".join(rng.choice(words, 7)) for _ in range(40)]
    hyps = [" ".join(w if rng.random() < 0.7 else rng.choice(words) for w in r.split()) for r in refs]
    refs = [[r, r.upper()] if i % 4 == 0 else r for i, r in enumerate(refs)]  # some with two references
    stats = statistics_for("text", [{"reference": r, "prediction": h} for r, h in zip(refs, hyps)])
    reported = generation_metrics(hyps, refs)
    for name, stat in stats.items():
        assert stat.value() == pytest.approx(reported[name], abs=1e-9), name
    for name, (low, high) in intervals(stats, resamples=200).items():
        assert low <= reported[name] <= high


def test_eval_intervals_cover_only_reported_scalar_metrics():
    rows = _classification_rows(n=200)
    out = eval_intervals("classification", rows, {"label_names": ["n", "p"]}, {"accuracy": 0.86, "loss": 0.3})
    assert list(out["ci95"]) == ["accuracy"]
    assert out["ci95_method"] == {"method": "percentile bootstrap", "resampled": "examples", "examples": 200,
                                  "resamples": 1000, "seed": 0, "level": 0.95}
    assert eval_intervals("unknown", rows, {}, {"accuracy": 1.0}) == {}


def test_mcnemar_exact_on_a_hand_computed_table():
    # b=10, c=2: 2 * (C(12,0) + C(12,1) + C(12,2)) / 2**12 = 2 * 79 / 4096
    assert mcnemar_exact(10, 2) == pytest.approx(2 * 79 / 4096, rel=1e-12)
    assert mcnemar_exact(10, 2) == pytest.approx(0.0386, abs=1e-4)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0
    scipy_stats = pytest.importorskip("scipy.stats")
    for b, c in ((10, 2), (3, 9), (40, 61), (700, 650)):
        assert mcnemar_exact(b, c) == pytest.approx(scipy_stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-9)


def test_identical_predictions_differ_by_zero_and_not_significantly():
    rows = _classification_rows(n=300)
    stats = statistics_for("classification", rows, {"label_names": ["n", "p"]})
    for name in ("accuracy", "macro_f1"):
        r = paired_difference(stats[name], stats[name])
        assert r.difference == 0 and (r.low, r.high) == (0.0, 0.0) and r.p_value == 1.0


def test_a_clearly_better_set_is_significant():
    n = 1000
    gold = np.zeros(n, dtype=int)
    a = np.where(np.arange(n) < 700, 0, 1)  # 700 right
    b = np.where(np.arange(n) < 800, 0, 1)  # the same 700 and 100 more
    acc_a, acc_b = mean_statistic(a == gold, binary=True), mean_statistic(b == gold, binary=True)
    r = paired_difference(acc_a, acc_b)
    assert r.test == "McNemar exact" and r.discordant == (0, 100)
    assert r.difference == pytest.approx(0.1) and r.low > 0 and r.p_value < 1e-20
    # a metric without a 0/1 form: the paired bootstrap test
    rows_a = [{"label": 0, "prediction": int(p)} for p in a]
    rows_b = [{"label": 0, "prediction": int(p)} for p in b]
    meta = {"label_names": ["x", "y"]}
    f1 = paired_difference(statistics_for("classification", rows_a, meta)["macro_f1"],
                           statistics_for("classification", rows_b, meta)["macro_f1"])
    assert f1.test == "paired bootstrap" and f1.difference > 0 and f1.low > 0 and f1.p_value < 0.05


def test_a_small_difference_is_not_significant():
    n = 500
    a = (np.arange(n) % 10 != 0)  # 450 right
    b = a.copy()
    b[[0, 10]] = True  # 2 more right
    b[[1]] = False  # 1 fewer
    r = paired_difference(mean_statistic(a, binary=True), mean_statistic(b, binary=True))
    assert r.discordant == (1, 2) and r.p_value == 1.0 and r.low <= 0 <= r.high


def test_eval_md_shows_each_interval_after_its_metric(tmp_path):
    from tuneforge.evaluate.report import write_eval_report

    evidence = {"ci95": {"mse": [0.16397, 0.24679], "bleu": [36.221, 49.062]},
                "ci95_method": {"method": "percentile bootstrap", "resampled": "documents", "examples": 60,
                                "resamples": 1000, "seed": 0, "level": 0.95}}
    paths = write_eval_report({"mse": 0.2025, "bleu": 42.97, "loss": 0.5}, tmp_path, evidence=evidence)
    md = paths["markdown"].read_text()
    assert "| mse | 0.2025 [0.164, 0.247] |" in md and "| bleu | 42.9700 [36.22, 49.06] |" in md
    assert "| loss | 0.5000 |" in md
    assert "95% confidence interval (percentile bootstrap over the 60 documents, 1,000 resamples, seed 0)" in md
    import json

    saved = json.loads(paths["json"].read_text())
    assert saved["ci95"] == evidence["ci95"] and saved["mse"] == 0.2025


def test_example_ids_are_file_name_and_line_unique_by_index():
    from tuneforge.evaluate.stage import example_ids

    records = [{"_origin": "/data/a/dev.tsv:2"}, {"_origin": "data/a/dev.tsv:3"}, {"_origin": "x.jsonl:4"},
               {"_origin": "x.jsonl:4"}, {}]
    assert example_ids(records) == ["dev.tsv:2", "dev.tsv:3", "x.jsonl:4#2", "x.jsonl:4#3", "#4"]


def test_generated_examples_take_the_ids_of_their_records():
    from types import SimpleNamespace

    from tuneforge.evaluate.stage import Split, prediction_rows

    records = [{"_origin": "d.jsonl:1", "source": "a", "target": "A"},
               {"_origin": "d.jsonl:2", "messages": [{"role": "user", "content": "no reply"}]},  # not generated
               {"_origin": "d.jsonl:3", "messages": [{"role": "user", "content": "b"},
                                                     {"role": "assistant", "content": "B"}]}]
    generations = [{"prompt": "a", "reference": "A", "prediction": "A", "chrf": 100.0},
                   {"prompt": "b", "reference": "B", "prediction": "C", "chrf": 0.0}]
    split = Split("validation", records, SimpleNamespace(label_kind="causal"), None)
    kind, rows, meta = prediction_rows(SimpleNamespace(outputs=[]), split, {}, generations)
    assert kind == "text" and [r["id"] for r in rows] == ["d.jsonl:1", "d.jsonl:3"]
    assert rows[1] == {"id": "d.jsonl:3", "index": 2, "reference": "B", "prediction": "C", "chrf": 0.0}
    numbers = [{**g, "reference_number": "1", "predicted_number": None, "correct": False} for g in generations]
    kind, rows, _ = prediction_rows(SimpleNamespace(outputs=[]), split, {}, numbers)
    assert kind == "final_number" and rows[0]["answered"] is False and rows[0]["correct"] is False
