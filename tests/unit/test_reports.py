"""Evaluation report files and the two plots."""

import json

import pytest

from tuneforge.tasks.metrics import classification_metrics
from tuneforge.evaluate.plots import plot_confusion_matrix, plot_loss_curves
from tuneforge.evaluate.report import write_eval_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LABELS = ["negative", "neutral", "positive"]


@pytest.fixture
def metrics():
    return classification_metrics(
        [0, 0, 0, 0, 1, 1, 2, 2], [0, 0, 0, 1, 1, 1, 2, 1], LABELS
    )


def _assert_png(path, min_bytes=5_000):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > min_bytes  # an actual drawing, not an empty canvas


def test_write_eval_report_creates_three_files(tmp_path, metrics):
    out = tmp_path / "nested" / "eval"  # parents must be created
    paths = write_eval_report(metrics, out, extra={"model_dir": tmp_path / "model"})

    assert set(paths) == {"json", "markdown", "confusion_matrix"}
    assert paths["json"] == out / "eval.json"
    assert paths["markdown"] == out / "eval.md"
    assert paths["confusion_matrix"] == out / "confusion_matrix.png"
    assert all(p.is_file() for p in paths.values())
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths.values())
    _assert_png(paths["confusion_matrix"])


def test_eval_json_round_trips_metrics_and_keeps_extra_separate(tmp_path, metrics):
    extra = {"model_dir": tmp_path / "model", "data_file": "test.jsonl", "num_examples": 99}
    paths = write_eval_report(metrics, tmp_path, extra=extra)

    data = json.loads(paths["json"].read_text())
    assert data.pop("extra") == {
        "model_dir": str(tmp_path / "model"),  # Paths are stored as strings
        "data_file": "test.jsonl",
        "num_examples": 99,
    }
    assert data == metrics  # extra never overwrites a metric


def test_eval_json_without_extra_is_exactly_the_metrics(tmp_path, metrics):
    paths = write_eval_report(metrics, tmp_path)
    assert json.loads(paths["json"].read_text()) == metrics


def test_eval_markdown_content(tmp_path, metrics):
    paths = write_eval_report(
        metrics, tmp_path, title="Sentiment eval", extra={"data_file": "data/test.jsonl"}
    )
    md = paths["markdown"].read_text()

    assert md.startswith("# Sentiment eval\n")
    assert "**Accuracy**: 0.7500" in md
    assert f"**Macro F1**: {metrics['macro_f1']:.4f}" in md
    assert "- **data_file**: data/test.jsonl" in md
    # per-class rows: precision, recall, f1, support
    assert "| Class | Precision | Recall | F1 | Support |" in md
    assert "| negative | 1.0000 | 0.7500 | 0.8571 | 4 |" in md
    assert "| neutral | 0.5000 | 1.0000 | 0.6667 | 2 |" in md
    assert "| positive | 1.0000 | 0.5000 | 0.6667 | 2 |" in md
    # confusion matrix: true labels as rows, predicted as columns
    assert "| True \\ Predicted | negative | neutral | positive |" in md
    assert "| negative | 3 | 1 | 0 |" in md
    assert "| neutral | 0 | 2 | 0 |" in md
    assert "| positive | 0 | 1 | 1 |" in md


def test_markdown_escapes_pipes_in_label_names(tmp_path):
    m = classification_metrics([0, 1], [0, 1], ["a|b", "c"])
    md = write_eval_report(m, tmp_path)["markdown"].read_text()
    assert "| a\\|b | 1.0000 | 1.0000 | 1.0000 | 1 |" in md


def test_plot_confusion_matrix_writes_png(tmp_path):
    path = plot_confusion_matrix([[5, 1], [0, 0]], ["yes", "no"], tmp_path / "sub" / "cm.png")
    assert path == tmp_path / "sub" / "cm.png"
    _assert_png(path)


def test_plot_confusion_matrix_rejects_wrong_shape(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        plot_confusion_matrix([[1, 0], [0, 1]], ["a", "b", "c"], tmp_path / "cm.png")


def _write_jsonl(path, records, junk=()):
    lines = [json.dumps(r) for r in records] + list(junk)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_plot_loss_curves_writes_png(tmp_path):
    records = [
        {"kind": "train", "step": s, "loss": 1.0 / s, "lr": 1e-4, "epoch": s / 30}
        for s in range(1, 31)
    ] + [
        {"kind": "eval", "step": 10, "loss": 0.5, "accuracy": 0.7, "macro_f1": 0.65},
        {"kind": "eval", "step": 30, "loss": 0.4, "accuracy": 0.8, "macro_f1": 0.78},
    ]
    junk = ["not json", '{"kind": "train", "step": 31, "lo', "[1, 2]", "",
            '{"kind": "train", "step": 32, "loss": NaN}']
    src = _write_jsonl(tmp_path / "metrics.jsonl", records, junk)

    path = plot_loss_curves(src, tmp_path / "plots" / "loss.png")
    assert path == tmp_path / "plots" / "loss.png"
    _assert_png(path)


def test_plot_loss_curves_without_eval_accuracy(tmp_path):
    records = [{"kind": "train", "step": s, "loss": 2.0 - 0.1 * s} for s in range(5)]
    src = _write_jsonl(tmp_path / "metrics.jsonl", records)
    _assert_png(plot_loss_curves(src, tmp_path / "loss.png"))


def test_plot_loss_curves_returns_none_without_train_records(tmp_path):
    src = _write_jsonl(
        tmp_path / "metrics.jsonl",
        [{"kind": "eval", "step": 10, "loss": 0.5, "accuracy": 0.7}],
        junk=["garbage"],
    )
    out = tmp_path / "loss.png"
    assert plot_loss_curves(src, out) is None
    assert not out.exists()


def test_plot_loss_curves_returns_none_for_missing_file(tmp_path):
    assert plot_loss_curves(tmp_path / "absent.jsonl", tmp_path / "loss.png") is None
    assert not (tmp_path / "loss.png").exists()
