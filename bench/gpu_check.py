"""One GPU check, in one call, under 8 minutes on one H100: what a session with a GPU runs (bench/gpu_check.sh).

Steps, in order, each recorded in ``$OUT/gpu_check.json`` (or ``--out``) and summed up as a markdown table:

1. ``nvidia-smi`` and ``tuneforge doctor`` (printed as they are);
2. ``tuneforge bench peak --dtype bf16 --device cuda``: the matmul peak the MFU below is measured against;
3. the fast test subset on the GPU (``CUDA_VISIBLE_DEVICES=0 pytest -m "not slow" ...``). Which of them use
   the GPU: the tests that call ``train(recipe)`` (test_train_tiny, and parts of test_checkpointing and
   test_attention_impl) train on CUDA when it is available (``train.run`` picks the device); the others
   (test_methods, test_losses_chunked, most of test_checkpointing) build their models on the CPU by
   construction and check the same code there. The measurements below are ``tuneforge`` runs on the GPU;
4. measurements, one in-process ``train(recipe)`` each, ``torch.cuda.max_memory_allocated`` reset
   before and read at the last evaluation (the end of training, before the final fp32 evaluation):
   (a) ``smollm2-135m`` LoRA on the shipped ``data/alpaca_demo`` (instruction tuning, replies only), 30
       steps, bf16, activation checkpointing off and on, sdpa and (if flash-attn imports) flash_attention_2;
   (b) a Llama-shaped model from scratch with random weights (hidden 2048, 16 layers, 32 heads, 8 key/value
       heads, MLP 5632: about 0.72B parameters with a character vocabulary), on tiny Shakespeare packed into
       1024-character rows, 20 steps, bf16, checkpointing on, sdpa (and flash if installed);
   tokens/s and MFU are the medians of the per-step values the loop logs from step 5 on;
5. ``tuneforge plan RECIPE --device h100 --json`` for each measured recipe (when ``src/tuneforge/plan``
   exists): the planned peak memory next to the measured one.

A time budget (``--budget``, default 440 s) keeps the whole check under 8 minutes: a measurement that would
start after it is recorded as skipped. ``--dry-run`` prints every command and recipe and runs nothing (no
torch import; what the CPU test suite checks).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = REPO / ".venv" / "bin"
TEST_FILES = ["tests/unit/test_methods.py", "tests/unit/test_losses_chunked.py", "tests/unit/test_checkpointing.py",
              "tests/unit/test_attention_impl.py", "tests/unit/test_train_tiny.py"]
#: H100 SXM dense bf16 (datasheet, no sparsity): a second MFU denominator next to the measured matmul peak.
H100_BF16_TFLOPS = 989.4
#: rough seconds each measurement needs on an H100 (model build, data, steps, final evaluation, plan), for the budget
EXPECTED_S = {"smollm2": 40, "llama": 80}


@dataclass
class Bench:
    name: str
    kind: str  # "smollm2" or "llama"
    recipe: dict
    overrides: list[str] = field(default_factory=list)
    needs_flash: bool = False


def smollm2_recipe(work: Path) -> dict:
    """LoRA instruction tuning of SmolLM2-135M on the shipped Alpaca slice (50 rows): the GSM8K recipe's shape
    (recipes/gsm8k-smollm2-lora.yaml) on data every checkout has."""
    return {
        "name": "gpu-smollm2-lora", "seed": 0, "task": "causal_lm", "output_dir": str(work / "runs"),
        "model": {"name": "smollm2-135m", "max_length": 512},
        "data": {"sources": [{"path": str(REPO / "data/alpaca_demo/alpaca_en_demo.head.json"), "format": "alpaca"}],
                 "split": {"validation_fraction": 0.1}, "dedup": {"near": False}, "decontaminate": {"near": False},
                 "formatting": {"template": None, "train_on": "assistant"}},
        "method": "lora", "lora": {"r": 16, "alpha": 32, "include_mlp": True},
        "causal_lm": {"compare_with_base": False},
        "train": {"max_steps": 30, "batch_size": 8, "learning_rate": 2.0e-4, "eval_every_steps": 30,
                  "eval_batch_size": 8, "log_every_steps": 1, "precision": "bf16"},
        "export": {"enabled": False},
    }


def llama_recipe(work: Path) -> dict:
    """A Llama-shaped model from scratch with random weights (``model.architecture``, as in
    recipes/shakespeare-char-gpt.yaml), on tiny Shakespeare with a character vocabulary."""
    return {
        "name": "gpu-llama-scratch", "seed": 0, "task": "causal_lm", "output_dir": str(work / "runs"),
        "model": {"architecture": {"family": "llama", "layers": 16, "heads": 32, "kv_heads": 8, "hidden": 2048,
                                   "intermediate": 5632, "dropout": 0.0},
                  "tokenizer": {"type": "char"}, "max_length": 1024},
        "data": {"sources": [{"path": str(REPO / "data/tinyshakespeare/input.txt"), "format": "text",
                              "text_unit": "paragraph"}],
                 "split": {"validation_fraction": 0.02, "order": "sequential"},
                 "clean": {"fix_unicode": False, "unicode_normalization": "none", "remove_control_chars": False,
                           "fold_whitespace": False},
                 "dedup": {"exact": False, "near": False}, "decontaminate": {"enabled": False},
                 "formatting": {"packing": True, "packing_strategy": "stream", "max_length": 1024, "add_eos": False,
                                "document_separator": "\n\n"}},
        "method": "full",
        "causal_lm": {"compare_with_base": False},
        "train": {"max_steps": 20, "batch_size": 8, "learning_rate": 3.0e-4, "warmup_steps": 2,
                  "eval_every_steps": 20, "eval_rows_during_training": 16, "eval_batch_size": 8,
                  "log_every_steps": 1, "precision": "bf16", "gradient_checkpointing": True,
                  "group_by_length": False},
        "export": {"enabled": False},
    }


def benches(work: Path) -> list[Bench]:
    out = []
    for attention in ("sdpa", "flash_attention_2"):
        flash = attention != "sdpa"
        for ckpt in (False, True):
            name = f"smollm2-lora-{'flash' if flash else 'sdpa'}-ckpt-{'on' if ckpt else 'off'}"
            out.append(Bench(name, "smollm2", smollm2_recipe(work), [f"model.attn_implementation={attention}",
                             f"train.gradient_checkpointing={str(ckpt).lower()}", f"name={name}"], flash))
        name = f"llama-0.7b-scratch-{'flash' if flash else 'sdpa'}-ckpt-on"
        out.append(Bench(name, "llama", llama_recipe(work), [f"model.attn_implementation={attention}", f"name={name}"],
                         flash))
    return sorted(out, key=lambda b: (b.needs_flash, b.kind != "smollm2"))  # sdpa first: the budget cuts flash


def shell_steps(skip_tests: bool) -> list[tuple[str, list[str], dict]]:
    """(name, command, extra environment) of the steps that are plain commands."""
    tf = str(VENV_BIN / "tuneforge")
    steps = [("nvidia-smi", ["nvidia-smi"], {}),
             ("doctor", [tf, "doctor"], {}),
             ("bench-peak", [tf, "bench", "peak", "--dtype", "bf16", "--device", "cuda"], {})]
    if not skip_tests:
        steps.append(("tests", [str(VENV_BIN / "python"), "-m", "pytest", "-q", "-m", "not slow", "-x", "--timeout",
                                "300", "-p", "no:cacheprovider", *TEST_FILES], {"CUDA_VISIBLE_DEVICES": "0"}))
    return steps


def plan_command(recipe_path: Path, overrides: list[str]) -> list[str] | None:
    """``tuneforge plan ... --device h100 --json``, or None where this checkout has no planner."""
    if not (REPO / "src" / "tuneforge" / "plan").is_dir():
        return None
    return [str(VENV_BIN / "tuneforge"), "plan", str(recipe_path), *overrides, "--device", "h100", "--json"]


def write_recipe(bench: Bench, work: Path) -> Path:
    import yaml

    path = work / f"{bench.kind}.yaml"
    path.write_text(yaml.safe_dump(bench.recipe, sort_keys=False))
    return path


# ---------------------------------------------------------------------------------------------- running


def run_step(name: str, cmd: list[str], env: dict, timeout: float) -> dict:
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=REPO, env={**os.environ, **env}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=max(timeout, 1))
        out, rc = done.stdout.decode(errors="replace"), done.returncode
    except subprocess.TimeoutExpired as exc:  # what it printed so far, then the verdict
        out, rc = (exc.stdout or b"").decode(errors="replace") + f"\n(timed out after {timeout:.0f} s)", 124
    except FileNotFoundError as exc:
        out, rc = str(exc), 127
    print(out[-6000:], flush=True)
    tail = [line for line in out.strip().splitlines() if line.strip()][-1:] or [""]
    return {"step": name, "command": cmd, "rc": rc, "seconds": round(time.perf_counter() - start, 1),
            "last_line": tail[0][:300]}


def measure(bench: Bench, work: Path) -> dict:
    """One in-process training run; its throughput, MFU and peak GPU memory."""
    import gc

    import torch

    from tuneforge.recipe import load_recipe
    from tuneforge.train.run import train

    path = write_recipe(bench, work)
    recipe = load_recipe(path, bench.overrides)
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    peaks: list[int] = []
    start = time.perf_counter()
    # Read at each evaluation during training; the last one is at the last step, before the final fp32 evaluation.
    result = train(recipe, overwrite=True, on_evaluate=lambda step, metrics: peaks.append(
        torch.cuda.max_memory_allocated()))
    seconds = time.perf_counter() - start
    records = [json.loads(line) for line in (recipe.run_dir / "metrics.jsonl").read_text().splitlines()]
    steady = [r for r in records if r.get("kind") == "train" and r["step"] >= 5]
    tok_s = statistics.median(r["tokens_per_s"] for r in steady) if steady else None
    mfus = [r["mfu"] for r in steady if r.get("mfu") is not None]
    tflops = statistics.median(r["tflops"] for r in steady) if steady else None
    attention = json.loads((recipe.run_dir / "manifest.json").read_text()).get("attn_implementation")
    out = {"name": bench.name, "model": bench.kind, "params": result.params["total"], "steps": result.global_step,
           "attention": attention, "checkpointing": recipe.train.gradient_checkpointing,
           "tokens_per_s": round(tok_s, 1) if tok_s else None, "tflops": tflops,
           "mfu": round(statistics.median(mfus), 4) if mfus else None,
           "mfu_vs_h100_datasheet": round(tflops / H100_BF16_TFLOPS, 4) if tflops else None,
           "peak_memory_bytes": max(peaks) if peaks else torch.cuda.max_memory_allocated(),
           "seconds": round(seconds, 1)}
    del result
    shutil.rmtree(recipe.run_dir, ignore_errors=True)  # the 0.7B run's checkpoints alone are ~14 GB
    gc.collect()
    torch.cuda.empty_cache()
    return out


def planned_peak(bench: Bench, work: Path, timeout: float) -> dict:
    cmd = plan_command(work / f"{bench.kind}.yaml", bench.overrides)
    if cmd is None:
        return {"plan": "skipped: this checkout has no src/tuneforge/plan"}
    try:
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        plan = json.loads(done.stdout)
        return {"plan_peak_bytes": plan["memory"]["peak_bytes"], "plan_peak_phase": plan["memory"].get("peak_phase")}
    except (subprocess.TimeoutExpired, ValueError, KeyError, TypeError) as exc:
        stderr = getattr(locals().get("done"), "stderr", "") or ""
        return {"plan": f"failed: {type(exc).__name__}: {exc} {stderr[-300:]}".strip()}


def gib(n) -> str:
    return f"{n / 2**30:.2f}" if isinstance(n, (int, float)) else "-"


def table(results: list[dict]) -> str:
    rows = ["| run | params | attention | ckpt | tokens/s | TFLOP/s | MFU (measured peak) | MFU (989 TF) | "
            "peak GiB | plan GiB | plan / measured | s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "params" not in r:  # skipped or failed
            rows.append(f"| {r['name']} | {r.get('skipped') or r.get('error')} |" + " |" * 10)
            continue
        plan = r.get("plan_peak_bytes")
        ratio = f"{plan / r['peak_memory_bytes']:.2f}" if plan else r.get("plan", "-")
        rows.append(f"| {r['name']} | {r['params'] / 1e6:.1f}M | {r['attention']} | {r['checkpointing']} | "
                    f"{r['tokens_per_s']} | {r['tflops']} | {r['mfu']} | {r['mfu_vs_h100_datasheet']} | "
                    f"{gib(r['peak_memory_bytes'])} | {gib(plan)} | {ratio} | {r['seconds']} |")
    return "\n".join(rows)


def dry_run(work: Path, skip_tests: bool, out: Path) -> None:
    print(f"gpu_check dry run (nothing is executed); work dir {work}; results -> {out}")
    for name, cmd, env in shell_steps(skip_tests):
        prefix = " ".join(f"{k}={v}" for k, v in env.items())
        print(f"[{name}] {(prefix + ' ') if prefix else ''}{shlex.join(cmd)}")
    for bench in benches(work):
        flash = " (only if flash-attn imports)" if bench.needs_flash else ""
        print(f"[measure {bench.name}]{flash} train({work / (bench.kind + '.yaml')} {shlex.join(bench.overrides)}) "
              f"in-process; torch.cuda.max_memory_allocated at the last evaluation")
        cmd = plan_command(work / f"{bench.kind}.yaml", bench.overrides)
        print(f"[plan {bench.name}] " + (shlex.join(cmd) if cmd else "skipped: no src/tuneforge/plan in this checkout"))
    for kind, recipe in (("smollm2", smollm2_recipe(work)), ("llama", llama_recipe(work))):
        print(f"[recipe {kind}.yaml] {json.dumps(recipe)}")


def out_path(arg: str | None, work: Path) -> Path:
    """--out, else $OUT (what the GPU runner copies back), else the work folder."""
    folder = arg or os.environ.get("OUT") or work
    return Path(folder) / "gpu_check.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print the commands and recipes; run nothing")
    parser.add_argument("--out", help="folder for gpu_check.json (default: $OUT, else the work folder)")
    parser.add_argument("--work", help="folder for the recipes and run directories (default: a temporary one)")
    parser.add_argument("--budget", type=float, default=440.0, help="seconds after which no measurement starts")
    parser.add_argument("--tests-timeout", type=float, default=180.0, help="wall-clock limit of the test step")
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args(argv)
    work = Path(args.work) if args.work else Path(tempfile.gettempdir()) / "tuneforge-gpu-check"
    if args.dry_run:
        dry_run(work, args.skip_tests, out_path(args.out, work))
        return 0

    start = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "steps": [], "measurements": []}
    out = out_path(args.out, work)

    def save() -> None:
        report["seconds"] = round(time.perf_counter() - start, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, default=str))

    for name, cmd, env in shell_steps(args.skip_tests):
        report["steps"].append(run_step(name, cmd, env, args.tests_timeout if name == "tests" else 120))
        save()

    import torch

    if not torch.cuda.is_available():
        report["error"] = "no CUDA device visible to torch: nothing to measure"
        save()
        print(report["error"])
        return 1
    from tuneforge.models.build import flash_attn_importable

    report["machine"] = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
                         "cuda": torch.version.cuda, "flash_attn": flash_attn_importable()}
    for bench in benches(work):
        elapsed = time.perf_counter() - start
        if bench.needs_flash and not report["machine"]["flash_attn"]:
            report["measurements"].append({"name": bench.name, "skipped": "flash-attn is not installed"})
            continue
        if elapsed + EXPECTED_S[bench.kind] > args.budget:
            report["measurements"].append({"name": bench.name, "skipped": f"time budget ({elapsed:.0f} s used)"})
            continue
        print(f"\n== {bench.name}", flush=True)
        try:
            row = measure(bench, work)
        except Exception as exc:  # noqa: BLE001 - one failed configuration (OOM, kernel) must not end the check
            row = {"name": bench.name, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        else:
            row.update(planned_peak(bench, work, timeout=60))
        report["measurements"].append(row)
        save()
    print("\n" + table(report["measurements"]))
    save()
    print(f"\nresults: {out} ({report['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
