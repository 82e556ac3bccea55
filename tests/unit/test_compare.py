"""``tuneforge compare RUN_A RUN_B``: per-example predictions joined, paired difference, test, verdict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.errors import TuneforgeError
from tuneforge.evaluate.compare import compare, format_difference, format_value

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def fake_run(root: Path, name: str, predictions: list[int], gold: list[int], ids: list[str] | None = None,
             split: str = "validation") -> Path:
    """A run directory with just what compare reads: eval/eval.json and eval/predictions.jsonl."""
    folder = root / name / "eval" / ("test" if split == "test" else "")
    folder.mkdir(parents=True, exist_ok=True)
    ids = ids or [f"dev.tsv:{i + 2}" for i in range(len(gold))]
    rows = [{"id": ids[i], "index": i, "label": g, "prediction": p, "correct": g == p}
            for i, (g, p) in enumerate(zip(gold, predictions))]
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    accuracy = sum(r["correct"] for r in rows) / len(rows)
    (folder / "eval.json").write_text(json.dumps({"accuracy": accuracy, "predictions": {
        "file": "predictions.jsonl", "kind": "classification", "examples": len(rows), "label_names": ["n", "p"]}}))
    return root / name


GOLD = [i % 2 for i in range(1000)]


def _with_right(count: int) -> list[int]:
    """Predictions right on the first ``count`` examples, wrong on the rest."""
    return [g if i < count else 1 - g for i, g in enumerate(GOLD)]


def test_identical_runs_differ_by_zero_not_significant(tmp_path):
    a = fake_run(tmp_path, "a", _with_right(800), GOLD)
    b = fake_run(tmp_path, "b", _with_right(800), GOLD)
    result = compare(a, b)
    acc = {m.metric: m for m in result.metrics}["accuracy"]
    assert acc.difference == 0 and acc.ci95 == [0.0, 0.0] and acc.p_value == 1.0 and not acc.significant
    assert acc.summary == "A and B are equal on accuracy: +0.00 points [0.00, 0.00], McNemar p = 1, not significant"


def test_clearly_better_run_is_significant(tmp_path):
    a = fake_run(tmp_path, "a", _with_right(700), GOLD)
    b = fake_run(tmp_path, "b", _with_right(800), GOLD)  # 100 more right of 1000
    by_metric = {m.metric: m for m in compare(a, b).metrics}
    acc = by_metric["accuracy"]
    assert acc.better == "B" and acc.significant and acc.discordant == {"only_a_right": 0, "only_b_right": 100}
    assert acc.summary.startswith("B is better than A on accuracy: +10.00 points [")
    assert acc.summary.endswith("McNemar p < 0.001, significant")
    f1 = by_metric["macro_f1"]
    assert f1.test == "paired bootstrap" and f1.significant and f1.better == "B"
    # the other way round: A is the better one
    worse = {m.metric: m for m in compare(b, a, metric="accuracy").metrics}["accuracy"]
    assert worse.better == "A" and worse.summary.startswith("B is worse than A on accuracy: -10.00 points [")


def test_small_difference_is_not_significant(tmp_path):
    a = fake_run(tmp_path, "a", _with_right(800), GOLD)
    b_preds = _with_right(800)
    b_preds[900] = GOLD[900]  # one more right
    result = compare(a, fake_run(tmp_path, "b", b_preds, GOLD), metric="accuracy")
    (acc,) = result.metrics
    assert acc.better == "B" and not acc.significant and acc.p_value == 1.0
    assert acc.summary.endswith("McNemar p = 1, not significant")


def test_runs_on_different_examples_are_refused(tmp_path):
    a = fake_run(tmp_path, "a", _with_right(800), GOLD)
    ids = [f"dev.tsv:{i + 2}" for i in range(990)] + [f"other.tsv:{i}" for i in range(10)]
    b = fake_run(tmp_path, "b", _with_right(800), GOLD, ids=ids)
    with pytest.raises(TuneforgeError) as err:
        compare(a, b)
    assert str(err.value) == (f"the runs were evaluated on different examples: 990 shared, 10 only in A ({a}), "
                              f"10 only in B ({b}); a paired comparison needs the same examples (the same "
                              "validation or test data)")
    relabelled = fake_run(tmp_path, "c", _with_right(800), [1 - g if i == 5 else g for i, g in enumerate(GOLD)])
    with pytest.raises(TuneforgeError, match="gold labels differ on 1 of 1000 shared examples"):
        compare(a, relabelled)


def test_missing_predictions_and_unknown_metric_are_clear(tmp_path):
    a = fake_run(tmp_path, "a", _with_right(800), GOLD)
    b = fake_run(tmp_path, "b", _with_right(800), GOLD)
    with pytest.raises(TuneforgeError, match="--metric 'bleu': not a metric of these runs' predictions; choose "
                                             "from accuracy, macro_f1, macro_precision, macro_recall"):
        compare(a, b, metric="bleu")
    with pytest.raises(TuneforgeError, match="no test evaluation"):
        compare(a, b, split="test")
    (b / "eval" / "predictions.jsonl").unlink()
    with pytest.raises(TuneforgeError, match="predictions.jsonl is missing"):
        compare(a, b)


def test_compare_cli_json_and_test_split(tmp_path):
    a = fake_run(tmp_path, "a", _with_right(700), GOLD, split="test")
    b = fake_run(tmp_path, "b", _with_right(800), GOLD, split="test")
    fake_run(tmp_path, "a", _with_right(700), GOLD)
    fake_run(tmp_path, "b", _with_right(700), GOLD)
    result = invoke("compare", a, b, "--split", "test", "--metric", "accuracy", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["split"] == "test" and out["examples"] == 1000 and out["seed"] == 0 and out["resamples"] == 1000
    acc = out["metrics"]["accuracy"]
    assert acc["a"] == pytest.approx(0.7) and acc["b"] == pytest.approx(0.8) and acc["significant"] is True
    assert acc["test"] == "McNemar exact" and acc["ci95"][0] > 0


# ------------------------------------------------------------------------------ end to end, tiny runs


def test_tiny_runs_compared_end_to_end(make_recipe, one_thread, toy_data):
    """Two tiny classifier runs (1 step, 36 steps): each writes predictions.jsonl and eval.json intervals;
    `tuneforge compare` names the metric, both values, the difference and the verdict; a run on other
    validation rows is refused with the counts."""
    from tuneforge.train.run import train

    weak = train(make_recipe("train.max_steps=1", name="weak"))
    strong = train(make_recipe(name="strong"))
    for run in (weak, strong):
        folder = run.run_dir / "eval"
        report = json.loads((folder / "eval.json").read_text())
        assert report["predictions"]["kind"] == "classification" and report["predictions"]["examples"] == 24
        assert report["ci95_method"]["resamples"] == 1000 and report["ci95_method"]["seed"] == 0
        assert set(report["ci95"]) == {"accuracy", "macro_f1", "macro_precision", "macro_recall"}
        for metric, (low, high) in report["ci95"].items():
            assert low <= report[metric] <= high, metric
        rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
        assert {r["id"] for r in rows} == {f"dev.tsv:{line}" for line in range(2, 26)}  # header on line 1
        assert [r["index"] for r in rows] == list(range(24))
        assert set(rows[0]) == {"id", "index", "label", "label_name", "prediction", "prediction_name", "correct"}
        assert sum(r["correct"] for r in rows) / 24 == pytest.approx(report["accuracy"])
        accuracy_line = (folder / "eval.md").read_text().split("**Accuracy**: ")[1].splitlines()[0]
        low, high = report["ci95"]["accuracy"]
        assert accuracy_line == f"{report['accuracy']:.4f} [{low:.3f}, {high:.3f}]"
        assert "ci95" not in run.metrics  # the metrics (result.json, the tuner, the model card) are unchanged

    result = invoke("compare", weak.run_dir, strong.run_dir, "--json")
    assert result.exit_code == 0, result.output
    acc = json.loads(result.output)["metrics"]["accuracy"]
    result = invoke("compare", weak.run_dir, strong.run_dir)
    assert result.exit_code == 0, result.output
    text = result.output
    assert "accuracy" in text and "macro_f1" in text
    assert format_value(acc["a"], "share") in text and format_value(acc["b"], "share") in text
    assert format_difference(acc["difference"], "share") in text
    assert acc["summary"] in text
    assert acc["summary"].endswith(", significant" if acc["significant"] else ", not significant")

    other = toy_data[1].with_name("other_dev.tsv")
    other.write_text("\n".join(toy_data[1].read_text().splitlines()[:21]) + "\n")  # header + 20 rows
    moved = train(make_recipe(f"data.validation_file={other}", "train.max_steps=1", name="moved"))
    result = invoke("compare", weak.run_dir, moved.run_dir)
    assert result.exit_code == 2
    assert (f"the runs were evaluated on different examples: 0 shared, 24 only in A ({weak.run_dir}), 20 only in B "
            f"({moved.run_dir}); a paired comparison needs the same examples (the same validation or test data)") \
        in " ".join(result.output.split())
