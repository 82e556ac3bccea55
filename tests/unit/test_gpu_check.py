"""bench/gpu_check.sh (the one-call GPU check) cannot run here: what can is checked without a GPU. The shell
script parses, its dry run prints every step without running any, and the recipes it measures validate."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_check.sh"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_check", None)


def test_shell_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


def test_dry_run_prints_every_step_and_runs_nothing(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--work", str(tmp_path / "work")], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "OUT": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"results -> {tmp_path / 'gpu_check.json'}" in out  # $OUT is where the runner looks
    for expected in ("[nvidia-smi] nvidia-smi", "tuneforge doctor", "bench peak --dtype bf16 --device cuda",
                     "CUDA_VISIBLE_DEVICES=0", "-m 'not slow' -x --timeout 300", "tests/unit/test_train_tiny.py",
                     "[measure smollm2-lora-sdpa-ckpt-off]", "[measure smollm2-lora-sdpa-ckpt-on]",
                     "[measure llama-0.7b-scratch-sdpa-ckpt-on]", "(only if flash-attn imports)",
                     "model.attn_implementation=flash_attention_2"):
        assert expected in out, expected
    has_planner = (REPO / "src" / "tuneforge" / "plan").is_dir()
    assert ("--device h100 --json" if has_planner else "skipped: no src/tuneforge/plan") in out
    assert not (tmp_path / "gpu_check.json").exists() and not (tmp_path / "work").exists()


def test_measured_recipes_validate(gpu_check, tmp_path):
    from tuneforge.recipe import load_recipe

    benches = gpu_check.benches(tmp_path)
    assert {b.kind for b in benches} == {"smollm2", "llama"}
    for bench in benches:
        recipe = load_recipe(gpu_check.write_recipe(bench, tmp_path), bench.overrides)
        assert recipe.train.precision == "bf16" and recipe.export.enabled is False
        if bench.kind == "smollm2":
            assert (recipe.model.name, recipe.method, recipe.train.max_steps) == ("smollm2-135m", "lora", 30)
        else:
            arch = recipe.model.architecture
            assert (arch.hidden, arch.layers, arch.heads, arch.kv_heads, arch.intermediate) == (2048, 16, 32, 8, 5632)
            assert recipe.model.max_length == 1024 and recipe.train.max_steps == 20
            assert recipe.train.gradient_checkpointing is True


def test_table_lists_measured_and_skipped_runs(gpu_check):
    row = {"name": "smollm2-lora-sdpa-ckpt-off", "params": 136_000_000, "attention": "sdpa", "checkpointing": False,
           "tokens_per_s": 50000.0, "tflops": 60.1, "mfu": 0.09, "mfu_vs_h100_datasheet": 0.061,
           "peak_memory_bytes": 3 * 2**30, "plan_peak_bytes": 3.3 * 2**30, "seconds": 20.0}
    table = gpu_check.table([row, {"name": "flash", "skipped": "flash-attn is not installed"}])
    lines = table.splitlines()
    assert lines[2].startswith("| smollm2-lora-sdpa-ckpt-off | 136.0M | sdpa | False | 50000.0 |")
    assert "| 3.00 | 3.30 | 1.10 |" in lines[2]
    assert lines[3].startswith("| flash | flash-attn is not installed |")
    assert {len(line.split("|")) for line in lines} == {14}
