"""The command line: fast help, exit code 2 with one clear message for every kind of bad input."""

import subprocess
import sys
import time
from pathlib import Path

import yaml
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.recipe import resolved_dict

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def recipe_file(tmp_path, recipe, **changes) -> Path:
    data = resolved_dict(recipe)
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            data[section][field] = value
        else:
            data[section] = value
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_help_is_fast_and_imports_no_torch():
    exe = Path(sys.executable).with_name("tuneforge")
    best = min(_timed([str(exe), "--help"]) for _ in range(3))
    assert best < 1.0, f"tuneforge --help took {best:.2f}s"
    out = subprocess.run([sys.executable, "-c", "import sys, tuneforge.cli; print(sorted({'torch', 'transformers', "
                          "'peft'} & set(sys.modules)))"], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _timed(cmd):
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0 and "validate" in proc.stdout
    return time.perf_counter() - start


def test_validate_shipped_recipe():
    result = invoke("validate", REPO / "recipes" / "sst2-minilm-lora.yaml")
    assert result.exit_code == 0, result.output
    assert "valid (run directory runs/sst2-minilm-lora)" in result.output


def test_unknown_recipe_key(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: t\ndata:\n  train_file: x.tsv\nmodel:\n  nmae: minilm-l6\n")
    result = invoke("run", path)
    assert result.exit_code == 2
    assert "model.nmae: unknown key (did you mean 'name'?); allowed keys here: allow_pickle, architecture, " \
           "attn_implementation, max_length, name, " in result.output
    assert "Traceback" not in result.output


def test_wrong_type_via_override(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: t\ndata:\n  train_file: x.tsv\n")
    result = invoke("validate", path, "train.epochs=many")
    assert result.exit_code == 2
    assert "train.epochs: got 'many': Input should be a valid number, unable to parse string as a number" \
        in result.output


def test_missing_data_file(tmp_path, make_recipe):
    path = recipe_file(tmp_path, make_recipe(), data__train_file=str(tmp_path / "absent.tsv"))
    result = invoke("validate", path)
    assert result.exit_code == 2
    assert f"data.train_file: data file not found: {tmp_path / 'absent.tsv'}" in result.output
    result = invoke("run", path)
    assert result.exit_code == 2 and f"data file not found: {tmp_path / 'absent.tsv'}" in result.output


def test_malformed_rows_fail_the_run_over_the_threshold(tmp_path, make_recipe, toy_data):
    with toy_data[0].open("a") as fh:
        fh.write("only one field\n\t0\n")
    result = invoke("run", recipe_file(tmp_path, make_recipe()))
    assert result.exit_code == 2
    assert "2 of 98 rows rejected (2.0% > data.max_rejected_fraction 1%)" in result.output
    assert "See rejected.jsonl for every row and reason." in result.output


def test_unknown_model_alias(tmp_path, make_recipe):
    path = recipe_file(tmp_path, make_recipe(), model__name="minilm-l7")
    result = invoke("run", path)
    assert result.exit_code == 2
    assert "did you mean 'minilm-l6'?" in result.output and "minilm-l7" in result.output
    assert "Traceback" not in result.output


def test_directory_with_only_pickle_weights(tmp_path, make_recipe):
    model_dir = tmp_path / "pickled"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"model_type": "bert"}')
    (model_dir / "pytorch_model.bin").write_bytes(b"not really a pickle")
    result = invoke("run", recipe_file(tmp_path, make_recipe(), model__name=str(model_dir)))
    assert result.exit_code == 2
    assert "pytorch_model.bin" in result.output and "allow_pickle: true" in result.output


def test_run_then_evaluate_and_export_commands(tmp_path, make_recipe, toy_data, monkeypatch):
    import json

    monkeypatch.setenv("TUNEFORGE_PLAN_MEMORY", "1MB")  # the plan says it does not fit: warned, and the run goes on
    path = recipe_file(tmp_path, make_recipe("method=lora", "train.learning_rate=1e-2", "export.enabled=true"))
    result = invoke("run", path)
    assert result.exit_code == 0, result.output
    assert "warning: the plan puts this run's peak memory at" in result.output
    assert "more than the 1.00 MB available" in result.output, result.output
    run_dir = tmp_path / "runs" / "tiny"
    trained = json.loads((run_dir / "eval" / "eval.json").read_text())
    result = invoke("evaluate", run_dir / "export", toy_data[1], f"output_dir={tmp_path / 'ev'}")
    assert result.exit_code == 0, result.output
    evaluated = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert evaluated["accuracy"] == trained["accuracy"]
    assert evaluated["confusion_matrix"] == trained["confusion_matrix"]
    assert (tmp_path / "ev" / "confusion_matrix.png").exists() and (tmp_path / "ev" / "eval.md").exists()
    result = invoke("export", run_dir, f"output_dir={tmp_path / 'again'}")
    assert result.exit_code == 0, result.output
    verification = json.loads((tmp_path / "again" / "verification.json").read_text())
    assert verification["prediction_agreement"] == 1.0


def test_evaluate_bad_column(tmp_path, make_recipe, toy_data):
    result = invoke("evaluate", tmp_path, toy_data[1])
    assert result.exit_code == 2  # not a model directory
    assert "config.json" in result.output


def test_prepare_writes_summary(tmp_path, make_recipe):
    result = invoke("prepare", recipe_file(tmp_path, make_recipe()))
    assert result.exit_code == 0, result.output
    data = tmp_path / "runs" / "tiny" / "data"
    for name in ("data_report.json", "data_report.md", "train.jsonl", "validation.jsonl", "rejected.jsonl",
                 "length_distribution.png", "label_distribution.png"):
        assert (data / name).exists(), name
    assert "splits: train 96, validation 24, test 0" in result.output
    assert "labels: ['negative', 'positive']" in result.output
