"""Exports never delete files they did not write, and `tuneforge evaluate` writes beside an export, not in it."""

import json

from typer.testing import CliRunner

from tuneforge.cli import app

runner = CliRunner()


def _run_with_export(make_recipe):
    from tuneforge.train.run import train

    return train(make_recipe("export.enabled=true", "train.epochs=1"))


def test_evaluate_writes_beside_the_export_and_a_re_export_keeps_working(make_recipe, toy_data):
    result = _run_with_export(make_recipe)
    export = result.export_dir
    before = sorted(p.relative_to(export).as_posix() for p in export.rglob("*"))
    out = runner.invoke(app, ["evaluate", str(export), str(toy_data[1])])
    assert out.exit_code == 0, out.output
    beside = export.parent / "export-evaluations" / "dev"
    assert json.loads((beside / "eval.json").read_text())["num_examples"] == 24
    assert sorted(p.relative_to(export).as_posix() for p in export.rglob("*")) == before  # nothing added inside
    again = runner.invoke(app, ["export", str(result.run_dir)])
    assert again.exit_code == 0, again.output
    assert (beside / "eval.json").is_file()  # the evaluation survived the re-export


def test_re_export_refuses_to_delete_a_file_it_did_not_write(make_recipe):
    result = _run_with_export(make_recipe)
    notes = result.export_dir / "my_notes.txt"
    notes.write_text("keep me")
    out = runner.invoke(app, ["export", str(result.run_dir)])
    assert out.exit_code == 2
    assert "holds 1 file(s) the export did not write (my_notes.txt)" in out.output
    assert "move them elsewhere" in out.output
    assert notes.read_text() == "keep me"
    notes.unlink()
    assert runner.invoke(app, ["export", str(result.run_dir)]).exit_code == 0
    own = json.loads((result.export_dir / "export_files.json").read_text())
    assert "model.safetensors" in own and "README.md" in own and "recipe.yaml" in own


def test_the_smollm2_alias_says_its_weights_are_4_bit(tmp_path, make_recipe):
    """README, doctor and the model card say that smollm2-135m is rebuilt from a Q4_1 GGUF."""
    from tuneforge import doctor
    from tuneforge.recipe import Recipe, resolved_dict
    from tuneforge.export.card import write_model_card
    from tuneforge.models.resolve import weights_note

    assert "4-bit (Q4_1) GGUF" in weights_note("smollm2-135m") and weights_note("minilm-l6") is None
    check = doctor.check_alias("smollm2-135m", doctor.installed_version)
    if check.status == "ok":  # installed (make install does): the line says what the weights are
        assert "Q4_1" in check.detail
    data = resolved_dict(make_recipe())
    data.pop("classification")
    data.update(name="sft", task="causal_lm", method="lora")
    data["model"]["name"] = "smollm2-135m"
    data["train"]["metric_for_best"] = None
    recipe = Recipe.model_validate(data)
    card = write_model_card(tmp_path, recipe_yaml="name: sft\n", recipe=recipe, data_summary={"label_names": None, "train_rows": 8, "validation_rows": 2,
                                                           "validation_source": "v.jsonl", "rejected_rows": 0},
                            manifest={"packages": {}}, metrics={}, verification=None, params="p", export_how="merged",
                            auto_class="AutoModelForCausalLM")
    assert "**Base weights:** `smollm2-135m` is dequantised from a 4-bit (Q4_1) GGUF" in card.read_text()
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "dequantised from a 4-bit Q4_1 GGUF" in readme


def test_a_run_plots_its_selection_metric_over_training(make_recipe):
    """metrics.png: the validation metric that selects the checkpoint, against step (not only the loss)."""
    from tuneforge.evaluate.plots import plot_metric_curves
    from tuneforge.train.run import train

    result = train(make_recipe("train.epochs=2", "train.eval_every_steps=3"))
    png = result.run_dir / "metrics.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = result.run_dir / "none.jsonl"
    empty.write_text('{"kind": "train", "step": 1, "loss": 0.5}\n')
    assert plot_metric_curves(empty, result.run_dir / "none.png") is None  # no evaluation yet: no figure


def test_library_noise_goes_to_the_run_log_not_the_console(tmp_path, capsys):
    import logging
    import warnings

    from tuneforge.train.session import library_log

    before = logging.getLogger("accelerate").handlers[:]
    with library_log(tmp_path):
        logging.getLogger("accelerate.utils.other").warning("Removed shared tensor {'lm_head.weight'} while saving")
        logging.getLogger("transformers.modeling_utils").warning("Some weights were newly initialized")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("`is_gradient_checkpointing` is deprecated", FutureWarning)
    err = capsys.readouterr().err
    log = (tmp_path / "library.log").read_text()
    assert "Removed shared tensor" in log and "newly initialized" in log and "is deprecated" in log
    assert "Removed shared tensor" not in err and "newly initialized" not in err and "is deprecated" not in err
    assert logging.getLogger("accelerate").handlers == before  # restored after the run
    logging.getLogger("accelerate.utils.other").warning("after the run")
    assert "after the run" not in (tmp_path / "library.log").read_text()


def test_generated_outputs_are_saved_per_example_with_their_scores(make_recipe, tiny_llama_dir, tmp_path):
    import random

    from tests.unit.test_task_causal_lm import _alpaca, _recipe
    from tuneforge.train.run import train

    rng = random.Random(0)
    recipe = _recipe(make_recipe, tiny_llama_dir, _alpaca(tmp_path / "t.json", 24, rng),
                     _alpaca(tmp_path / "d.json", 6, rng), "train.epochs=1", "export.enabled=false")
    result = train(recipe)
    rows = [json.loads(line) for line in (result.run_dir / "eval" / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 6  # every validation conversation (eval_examples 8 > 6)
    assert {"prompt", "reference", "prediction", "reference_number", "predicted_number", "correct"} <= set(rows[0])
    accuracy = json.loads((result.run_dir / "eval" / "eval.json").read_text())
    assert "generations" not in accuracy
    assert accuracy["final_number_accuracy"] == 100.0 * sum(r["correct"] for r in rows) / len(rows)
