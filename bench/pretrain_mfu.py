"""MFU in causal-LM pretraining, and a profiler-backed account of where a training step's time goes.

The model and its training are tuneforge's own: ``recipes/shakespeare-char-10m.yaml`` (a GPT-2 built
from scratch, 6 layers, 6 heads, 384 wide, 10.7M parameters, a 69-token character vocabulary,
blocks of 129 tokens, batch 16, fused AdamW, gradient clipping), per precision (bf16 autocast, fp32):

1. **tuneforge's figures.** ``tuneforge.train.run.train(recipe)`` runs ``--steps`` optimizer steps
   (overrides: ``train.max_steps``, no time budget, no sampling, no export, a 2% validation split so
   the evaluations at the end stay short: none of that changes a training step). tokens/s, model
   TFLOP/s and MFU are read from the run's ``metrics.jsonl``: the last train record, i.e. the loop's own
   meter over the last 20 steps (``Throughput``), collation included, evaluations excluded. MFU is
   against the cached peak of the run's precision (``tuneforge bench peak``); the bf16 peak is the
   issue's yardstick, so it is shown for both.
2. **The same steps, profiled.** The same model (built by ``tuneforge.models.build.build_model`` from
   the run's tokenizer and prepared data), optimizer, scheduler and Accelerator (``_make_accelerator``:
   bf16 autocast or fp32), and the loop's step body (``collate``, ``forward_loss_sum``,
   ``accelerator.backward``, ``clip_grad_norm_``, ``optimizer.step``, ``scheduler.step``,
   ``zero_grad``), on the epoch's real batches. After ``WARMUP_STEPS`` steps, ``--profile-steps`` steps
   are timed plainly (perf_counter; tokens/s and MFU with tuneforge's FLOPs per token, to check the
   harness runs as fast as the loop), then as many again under ``torch.profiler`` (CPU activities,
   ``record_shapes``). Every profiler event's *self* CPU time is put in one category: by its own name
   first (``aten::addmm`` is a matmul, ``aten::_to_copy`` a cast), else by the nearest ancestor that has
   one (an ``aten::empty`` inside ``aten::addmm`` is the matmul's), else "views and allocation" (an
   aten op nothing claims) or "Python and framework" (the self time of the step's own
   ``record_function`` markers, autograd engine wrappers and Accelerate: time not spent in any aten
   op). Self times partition each step exactly, so the shares add up to 100% of the profiled step.
   On CPU the autograd engine runs backward on the calling thread, so backward ops are in the same tree.
3. **Matmuls only.** The FLOPs of every recorded ``aten::mm/addmm/bmm/baddbmm`` (2*M*K*N from its
   input shapes) over the time spent in them (inclusive CPU time of those events): the achieved
   TFLOP/s inside the matmuls, which separates "the GEMMs are slow at these shapes" from "time goes
   elsewhere". Every distinct shape is then timed alone, bf16 and fp32, with
   ``tuneforge.train.peak._time_matmul`` (the method behind the cached peak: warm-up, ~0.1 s runs,
   best of 3; contiguous operands, whereas the backward GEMMs read transposed views), next to the
   square-matrix peak.
4. **What would raise it** (``--what-if``, on by default; bf16): the plain-timed harness on variants of
   the recipe: ``model.config.use_cache=False`` (transformers' GPT-2 fills a key/value cache in every
   training forward unless told not to: ``aten::cat`` copies per layer that training never reads); eager
   attention (``model.set_attn_implementation("eager")``: explicit matmuls + softmax instead of
   ``scaled_dot_product_attention``); batch 64; width 768 (12 heads), also with eager attention; with
   ``--compile`` also ``torch.compile`` of the model (inductor, needs a C++ compiler; the warm-up, which
   includes compiling, is reported); last, the recipe again, to show the drift of this machine's speed
   over the run. Same data, no profiler; MFU from the median step of ``--what-if-steps``.

The profiled steps are slower than the plain ones (both medians reported, with the minor page faults per
step: under the profiler the process faults in far more fresh memory, and the ops that write the largest
new tensors slow down most), so the shares are of the profiled step and over-weight those ops a little;
the what-if timings, which carry the conclusions about what to change, run without the profiler.

Run from the repository root on a quiet machine (``torch`` uses every core it is given):

    .venv/bin/python bench/pretrain_mfu.py                       # both precisions, ~5 minutes on 2 cores
    .venv/bin/python bench/pretrain_mfu.py --write-docs          # + docs/benchmarks.md, docs/bench/pretrain_mfu.json
    .venv/bin/python bench/pretrain_mfu.py --steps 3 --profile-steps 2 --precision bf16 --no-what-if \\
        --override model.architecture.layers=1 --override model.architecture.hidden=64   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "shakespeare-char-10m.yaml"
WARMUP_STEPS = 3
# Overrides that keep the train() part short without changing a training step.
BASE_OVERRIDES = ["train.max_minutes=null", "causal_lm.sample_prompts=[]", "causal_lm.compare_with_base=false",
                  "export.enabled=false", "data.split.validation_fraction=0.02", "train.eval_rows_during_training=64"]

# ------------------------------------------------------------------------------------ categories
CATEGORIES = [  # (key, label), in report order
    ("matmul", "matmuls (mm/addmm/bmm, forward + backward)"),
    ("attention", "attention (scaled_dot_product_attention, forward + backward)"),
    ("cast", "dtype casts and copies (to/_to_copy/copy_/clone)"),
    ("elementwise", "elementwise and normalisation (gelu, layer_norm, add, mul, softmax, dropout, ...)"),
    ("embedding", "embedding (lookup + backward)"),
    ("cross_entropy", "cross-entropy (log_softmax + nll_loss, forward + backward)"),
    ("optimizer", "optimizer (fused AdamW, grad-norm clipping, zero_grad, scheduler)"),
    ("views", "views, their backward copies, allocation (view/slice/transpose/empty/zeros/...)"),
    ("python", "Python and framework (the loop, autograd engine, Accelerate, collate)"),
]
LABELS = dict(CATEGORIES)
# Matched against the lower-cased event name, in this order (log_softmax before softmax, ...).
RULES = [
    ("python", r"^autograd::engine::evaluate_function"),
    ("attention", r"scaled_dot_product|flash_attention|efficient_attention|sdpa"),
    ("cross_entropy", r"cross_entropy|log_softmax|logsoftmax|nll_loss|nllloss"),
    ("embedding", r"embedding"),
    ("optimizer", r"fused_adam|_foreach_|^optimizer\.|zero_grad|clip_grad|^tf::(clip|optimizer)$|lr_scheduler"),
    ("matmul", r"^aten::(mm|addmm|bmm|baddbmm|matmul|linear|addmv|mv|dot|_addmm_activation)$"
               r"|^(mm|addmm|bmm|baddbmm|mv)backward|mkldnn_(matmul|linear)"),
    ("cast", r"^aten::(to|_to_copy|clone|contiguous)$|^(tocopy|clone)backward"),
    ("views", r"^aten::(view|_unsafe_view|reshape|_reshape_alias|t|transpose|permute|expand|as_strided|slice|select|"
              r"narrow|split|split_with_sizes|chunk|unbind|unsqueeze|squeeze|detach|detach_|alias|lift_fresh|"
              r"resolve_conj|resolve_neg|flatten|unflatten|(slice|select|as_strided|unfold)_backward)$"
              r"|^(view|unsafeview|t|transpose|permute|split|splitwithsizes|expand|alias|slice|select|unsqueeze|"
              r"squeeze|reshapealias|unbind|asstrided)backward\d*$"),
    ("elementwise", r"gelu|layer_norm|layernorm|softmax|dropout|^aten::(add|add_|mul|mul_|div|div_|sub|sub_|rsub|"
                    r"neg|pow|tanh|where|masked_fill|masked_fill_|sum|mean|sqrt|rsqrt|exp|cat|addcmul_|addcdiv_|"
                    r"lerp_|eq|ne|lt|gt|ge|le|bitwise_\w+|arange|cumsum|triu|tril|clamp|clamp_min|maximum|minimum|"
                    r"abs|sign|threshold_backward|all|any|is_nonzero|item|_local_scalar_dense)$"
                    r"|^(add|mul|div|sub|neg|pow|tanh|where|sum|mean|cat|masked_fill|native_layer_norm|"
                    r"nativelayernorm|gelu|softmax|dropout|native_dropout)backward|accumulategrad"),
]
RULES = [(cat, re.compile(rx)) for cat, rx in RULES]
# Ops with no category of their own: they take their caller's (the bias copy inside addmm is the matmul's,
# the zeros inside nll_loss_backward the loss's); at the top of a phase, this one.
GENERIC = {"aten::copy_": "cast", "aten::copy": "cast"}
GENERIC.update({f"aten::{n}": "views" for n in ("empty", "empty_like", "empty_strided", "zeros", "zeros_like",
                                                "zero_", "fill_", "ones", "ones_like", "full", "full_like",
                                                "resize_", "new_zeros", "new_empty", "new_empty_strided")})
MATMUL_KERNELS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}
PHASES = [("tf::batch", "collate + copy to device"), ("tf::forward", "forward + loss"),
          ("tf::backward", "backward"), ("tf::clip", "gradient clipping"),
          ("tf::optimizer", "optimizer step + scheduler + zero_grad")]


def own_category(name: str) -> str | None:
    low = name.lower()
    for cat, rx in RULES:
        if rx.search(low):
            return cat
    return None


def event_category(ev) -> str:
    """Own name, else the nearest ancestor's category; ops that name no category are views/allocation (or,
    for a bare copy_, a cast); markers and wrappers are Python/framework time."""
    if ev.name not in GENERIC:
        cat = own_category(ev.name)
        if cat is not None:
            return cat
    node = ev.cpu_parent
    while node is not None:
        cat = own_category(node.name) if node.name not in GENERIC else None
        if cat is not None:
            return cat
        node = node.cpu_parent
    if ev.name in GENERIC:
        return GENERIC[ev.name]
    return "views" if ev.name.startswith("aten::") else "python"


def event_phase(ev) -> str | None:
    node = ev
    while node is not None:
        if node.name.startswith("tf::") and node.name != "tf::step":
            return node.name
        node = node.cpu_parent
    return None


def matmul_flops(name: str, shapes) -> tuple[float, tuple] | None:
    """FLOPs and (M, K, N) or (B, M, K, N) of a leaf matmul from its recorded input shapes."""
    try:
        if name == "aten::mm":
            (m, k), (_, n) = shapes[0], shapes[1]
            return 2.0 * m * k * n, (m, k, n)
        if name == "aten::addmm":
            (m, k), (_, n) = shapes[1], shapes[2]
            return 2.0 * m * k * n, (m, k, n)
        if name == "aten::bmm":
            (b, m, k), (_, _, n) = shapes[0], shapes[1]
            return 2.0 * b * m * k * n, (b, m, k, n)
        if name == "aten::baddbmm":
            (b, m, k), (_, _, n) = shapes[1], shapes[2]
            return 2.0 * b * m * k * n, (b, m, k, n)
    except (ValueError, TypeError, IndexError):
        return None
    return None


# ------------------------------------------------------------------------------------ helpers
def machine_info() -> dict:
    import torch
    import transformers

    from tuneforge.train.manifest import cpu_model
    from tuneforge.models.precision import cpu_has_native_bf16

    flags = ""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f" {f}" in flags]
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(), "isa": isa,
            "cpu_native_bf16": cpu_has_native_bf16(), "torch": torch.__version__,
            "transformers": transformers.__version__, "onednn": torch.backends.mkldnn.is_available(),
            "load_average": os.getloadavg()}


def peaks() -> dict:
    from tuneforge.train.peak import cached_entry

    out = {}
    for dtype in ("bf16", "fp32"):
        entry = cached_entry("cpu", dtype)
        out[dtype] = {"flops": float(entry["flops"]), "by_size": entry["by_size"],
                      "measured_at": entry["measured_at"]} if entry else None
    return out


def make_recipe(args, precision: str, workdir: Path, extra: list[str] = ()):
    from tuneforge.recipe import load_recipe

    return load_recipe(RECIPE, [*BASE_OVERRIDES, f"train.precision={precision}", f"name=pretrain-mfu-{precision}",
                                f"output_dir={workdir}", f"train.max_steps={args.steps}",
                                f"train.eval_every_steps={args.steps}", f"train.log_every_steps={args.log_every}",
                                *args.override, *extra])


# ------------------------------------------------------------------------------------ 1. train()
def run_train(args, precision: str, workdir: Path) -> dict:
    from tuneforge.train.run import train

    recipe = make_recipe(args, precision, workdir)
    t0 = time.perf_counter()
    result = train(recipe, overwrite=True)
    seconds = time.perf_counter() - t0
    records = [json.loads(line) for line in (recipe.run_dir / "metrics.jsonl").read_text().splitlines() if line]
    train_records = [r for r in records if r.get("kind") == "train"]
    if not train_records:
        raise SystemExit(f"{recipe.run_dir}/metrics.jsonl has no train record: use --steps >= --log-every")
    last = train_records[-1]
    manifest = json.loads((recipe.run_dir / "manifest.json").read_text())
    return {"precision": manifest.get("precision"), "steps": result.global_step, "record": last,
            "records": train_records, "loop_seconds": result.train_seconds, "train_call_seconds": seconds,
            "params": result.params, "run_dir": str(recipe.run_dir)}


# ------------------------------------------------------------------------------------ 2. harness
class Harness:
    """The loop's step body on tuneforge's model, optimizer, scheduler and Accelerator."""

    def __init__(self, recipe, run_dir: Path, *, use_cache: bool | None = None, attn: str | None = None,
                 compile: bool = False):
        import torch

        from tuneforge.data.batching import length_grouped_batches
        from tuneforge.data.prepare import encode_cached, load_prepared
        from tuneforge.models.build import build_model, load_tokenizer, resolve_recipe_model
        from tuneforge.tasks import spec_for
        from tuneforge.train.flops import model_flops_per_token, tokens_per_example
        from tuneforge.train.optim import build_optimizer, build_scheduler
        from tuneforge.train.session import _make_accelerator

        torch.manual_seed(recipe.seed)
        self.acc, self.precision = _make_accelerator(recipe.train.precision)
        spec = spec_for(recipe)
        data = load_prepared(run_dir / "data")
        resolved = resolve_recipe_model(recipe.model, run_dir=run_dir)
        tokenizer = load_tokenizer(resolved)
        self.enc = encode_cached(tokenizer, data, "train", recipe, spec)
        self.pad_id = tokenizer.pad_token_id
        model, self.params = build_model(recipe, resolved, spec, data.label_names, tokenizer.pad_token_id, tokenizer)
        if use_cache is not None:
            model.config.use_cache = use_cache
        if attn is not None:
            model.set_attn_implementation(attn)
        self.cfg = cfg = recipe.train
        optimizer = build_optimizer(model, cfg)
        self.scheduler = build_scheduler(optimizer, cfg, 10_000)
        self.model, self.optimizer = self.acc.prepare(model, optimizer)
        self.model.train()
        if compile:
            self.model = torch.compile(self.model)
        self.config = self.acc.unwrap_model(self.model).config
        self.attn_impl = getattr(self.config, "_attn_implementation", None)
        self.lengths = tokens_per_example(self.enc)
        self.weights = self.enc.weights
        self.batches = length_grouped_batches(self.enc.lengths, cfg.batch_size, seed=recipe.seed, epoch=0,
                                              group_by_length=cfg.group_by_length)
        self.flops_per_token = model_flops_per_token(self.acc.unwrap_model(self.model), self.enc)
        self.next = 0

    def step(self) -> int:
        """One optimizer step exactly as train/loop.py runs it (no accumulation, one process); tokens."""
        from torch.profiler import record_function

        from tuneforge.data.batching import collate
        from tuneforge.tasks.losses import forward_loss_sum
        from tuneforge.train.steps import step_loss_scale

        acc, idx = self.acc, self.batches[self.next % len(self.batches)]
        self.next += 1
        with record_function("tf::step"):
            with record_function("tf::batch"):
                scale = step_loss_scale(sum(self.weights[j] for j in idx), 1)
                batch = collate(self.enc, idx, self.pad_id, epoch=0)
                batch = {k: v.to(acc.device, non_blocking=True) for k, v in batch.items()}
            with record_function("tf::forward"):
                loss_sum, _ = forward_loss_sum(self.model, batch, self.enc.label_kind)
                loss = loss_sum * scale
            with record_function("tf::backward"):
                acc.backward(loss)
            float(loss.detach())
            with record_function("tf::clip"):
                if self.cfg.max_grad_norm is not None:
                    acc.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
            with record_function("tf::optimizer"):
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
        return sum(self.lengths[j] for j in idx)

    def timed(self, n: int) -> dict:
        """``n`` steps; tokens/s over all of them, and the median step (this VM's step times wander by
        +-10% from one second to the next, so the median is the steadier figure)."""
        import resource

        tokens, times = 0, []
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(n):
            t0 = time.perf_counter()
            tokens += self.step()
            times.append(time.perf_counter() - t0)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        seconds = sum(times)
        median = sorted(times)[n // 2] if n % 2 else sum(sorted(times)[n // 2 - 1:n // 2 + 1]) / 2
        return {"steps": n, "seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
                "step_s": seconds / n, "median_step_s": median, "min_step_s": min(times), "max_step_s": max(times),
                "median_tokens_per_s": tokens / n / median, "minor_page_faults_per_step": faults / n}


def efficiency(tokens_per_s: float, flops_per_token: float, pk: dict) -> dict:
    flops = tokens_per_s * flops_per_token
    return {"tflops": flops / 1e12,
            **{f"mfu_{d}": (flops / pk[d]["flops"] if pk.get(d) else None) for d in ("bf16", "fp32")}}


def profile_precision(args, precision: str, workdir: Path, run_dir: Path, pk: dict) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    recipe = make_recipe(args, precision, workdir)
    h = Harness(recipe, run_dir)
    h.timed(WARMUP_STEPS)
    plain = h.timed(args.profile_steps)
    plain.update(efficiency(plain["tokens_per_s"], h.flops_per_token, pk))
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        profiled = h.timed(args.profile_steps)
    profiled.update(efficiency(profiled["tokens_per_s"], h.flops_per_token, pk))
    events = list(prof.events())
    steps = [e for e in events if e.name == "tf::step"]
    step_us = sum(e.cpu_time_total for e in steps)
    main_thread = steps[0].thread if steps else None
    by_cat, by_phase = defaultdict(float), defaultdict(float)
    other_threads_us = 0.0
    ops = defaultdict(lambda: [0, 0.0, ""])  # name -> calls, self us, category
    mm = defaultdict(lambda: {"calls": 0, "us": 0.0, "flops": 0.0})  # (phase, op, shape) -> ...
    for e in events:
        if e.thread != main_thread:
            other_threads_us += e.self_cpu_time_total
            continue
        if e.name == "ProfilerStep*" or not _under(e, "tf::step"):
            continue
        cat = event_category(e)
        by_cat[cat] += e.self_cpu_time_total
        o = ops[e.name]
        o[0] += 1
        o[1] += e.self_cpu_time_total
        o[2] = cat
        if e.name in MATMUL_KERNELS and not any(c.name in MATMUL_KERNELS for c in e.cpu_children):
            # leaf kernels only: under autocast the dispatcher records aten::addmm twice, nested
            fl = matmul_flops(e.name, e.input_shapes)
            if fl is not None:
                m = mm[(event_phase(e), e.name, fl[1])]
                m["calls"] += 1
                m["us"] += e.cpu_time_total
                m["flops"] += fl[0]
    for e in events:
        if e.name in dict(PHASES) and e.thread == main_thread:
            by_phase[e.name] += e.cpu_time_total
    n = args.profile_steps
    categorised = sum(by_cat.values())
    mm_us = sum(v["us"] for v in mm.values())
    mm_flops = sum(v["flops"] for v in mm.values())
    sdpa = _attention_kernel_rate(events, main_thread, h)
    shapes = [{"phase": ph, "op": op, "shape": list(shape), "role": _role(ph, shape, h.config),
               "calls_per_step": v["calls"] / n, "ms_per_step": v["us"] / 1e3 / n,
               "tflops": v["flops"] / (v["us"] * 1e-6) / 1e12 if v["us"] else None,
               "gflop_per_step": v["flops"] / 1e9 / n}
              for (ph, op, shape), v in sorted(mm.items(), key=lambda kv: -kv[1]["us"])]
    top_ops = sorted(({"op": k, "calls_per_step": c / n, "ms_per_step": us / 1e3 / n, "category": cat}
                      for k, (c, us, cat) in ops.items()), key=lambda r: -r["ms_per_step"])[:25]
    return {
        "precision": h.precision, "attn_implementation": h.attn_impl, "flops_per_token": h.flops_per_token,
        "params": str(h.params), "threads": torch.get_num_threads(), "tokens_per_step": profiled["tokens"] / n,
        "plain": plain, "profiled": profiled,
        "profiled_step_ms": step_us / 1e3 / n, "categorised_ms_per_step": categorised / 1e3 / n,
        "other_threads_ms_per_step": other_threads_us / 1e3 / n,
        "categories": {k: {"ms_per_step": by_cat.get(k, 0.0) / 1e3 / n,
                           "share": by_cat.get(k, 0.0) / step_us if step_us else None} for k, _ in CATEGORIES},
        "phases": {k: {"ms_per_step": by_phase.get(k, 0.0) / 1e3 / n,
                       "share": by_phase.get(k, 0.0) / step_us if step_us else None} for k, _ in PHASES},
        "matmul_kernels": {"ms_per_step": mm_us / 1e3 / n, "gflop_per_step": mm_flops / 1e9 / n,
                           "tflops": mm_flops / (mm_us * 1e-6) / 1e12 if mm_us else None,
                           "share_of_step": mm_us / step_us if step_us else None},
        "attention_kernels": sdpa,
        "model_gflop_per_step": h.flops_per_token * profiled["tokens"] / n / 1e9,
        "matmul_shapes": shapes, "top_ops": top_ops,
    }


def _under(ev, name: str) -> bool:
    node = ev
    while node is not None:
        if node.name == name:
            return True
        node = node.cpu_parent
    return False


def _attention_kernel_rate(events, main_thread, h) -> dict:
    """Inclusive time of the SDPA kernels, forward and backward, and their FLOPs at the model convention
    (QK^T and AV: 4*B*heads*L*L*head_dim forward, twice that backward; the causal mask not subtracted)."""
    fwd_us = bwd_us = 0.0
    fwd_flops = 0.0
    for e in events:
        if e.thread != main_thread:
            continue
        low = e.name.lower()
        if not low.startswith("aten::") or not re.search(r"flash_attention|efficient_attention|_scaled_dot_product_"
                                                           r"(attention_math|fused)", low):
            continue
        if "backward" in low:
            bwd_us += e.cpu_time_total
        else:
            fwd_us += e.cpu_time_total
            try:
                b, heads, length, dim = e.input_shapes[0]
                fwd_flops += 4.0 * b * heads * length * e.input_shapes[1][2] * dim
            except (ValueError, TypeError, IndexError):
                pass
    us, flops = fwd_us + bwd_us, 3.0 * fwd_flops
    return {"forward_ms_total": fwd_us / 1e3, "backward_ms_total": bwd_us / 1e3,
            "tflops": flops / (us * 1e-6) / 1e12 if us and flops else None}


def _role(phase: str | None, shape: tuple, config) -> str:
    """Which weight a GEMM belongs to, from its shape (GPT-2 names)."""
    h = getattr(config, "n_embd", None) or getattr(config, "hidden_size", 0)
    inner = getattr(config, "n_inner", None) or 4 * h
    vocab = getattr(config, "vocab_size", 0)
    weights = {(h, 3 * h): "c_attn (QKV)", (h, h): "attn c_proj", (h, inner): "mlp c_fc",
               (inner, h): "mlp c_proj", (h, vocab): "lm_head (tied)"}
    if len(shape) != 3:
        return "batched"
    m, k, n = shape
    if phase == "tf::forward" and (k, n) in weights:
        return weights[(k, n)]
    names = []
    if (n, k) in weights:
        names.append(f"d input of {weights[(n, k)]}")
    if (m, n) in weights or (n, m) in weights:
        names.append(f"d weight of {weights.get((m, n)) or weights[(n, m)]}")
    return " / ".join(names) or "?"


# ------------------------------------------------------------------------------------ 3. shapes alone
def time_shapes(shapes: list[tuple], pk: dict) -> list[dict]:
    import torch

    from tuneforge.train.peak import _time_matmul

    out = []
    for shape in shapes:
        row = {"shape": list(shape)}
        for dtype, tdt in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            gen = torch.Generator().manual_seed(0)
            if len(shape) == 3:
                m, k, n = shape
                a, b = torch.randn(m, k, generator=gen).to(tdt), torch.randn(k, n, generator=gen).to(tdt)
                flops = 2.0 * m * k * n
            else:
                bb, m, k, n = shape
                a, b = (torch.randn(bb, m, k, generator=gen).to(tdt), torch.randn(bb, k, n, generator=gen).to(tdt))
                flops = 2.0 * bb * m * k * n
            seconds = _time_matmul(a, b, lambda: None, 0.1, 3)
            row[f"{dtype}_tflops"] = flops / seconds / 1e12
            row[f"{dtype}_of_peak"] = flops / seconds / pk[dtype]["flops"] if pk.get(dtype) else None
        out.append(row)
    return out


# ------------------------------------------------------------------------------------ 4. what-if
WIDE = ["model.architecture.hidden=768", "model.architecture.heads=12"]
WHAT_IF = [  # (label, recipe overrides, harness options)
    ("recipe (batch 16, width 384, sdpa attention)", [], {}),
    ("recipe, model.config.use_cache=False", [], {"use_cache": False}),
    ("recipe, eager attention (matmul + softmax)", [], {"attn": "eager"}),
    ("batch 64", ["train.batch_size=64"], {}),
    ("width 768, 12 heads", WIDE, {}),
    ("width 768, 12 heads, eager attention", WIDE, {"attn": "eager"}),
]
COMPILED = ("recipe + torch.compile", [], {"compile": True})
AGAIN = ("recipe again (drift check)", [], {})


def what_if(args, workdir: Path, run_dir: Path, pk: dict) -> list[dict]:
    rows = []
    for label, extra, options in [*WHAT_IF, *([COMPILED] if args.compile else []), AGAIN]:
        recipe = make_recipe(args, "bf16", workdir, extra)
        h = Harness(recipe, run_dir, **options)
        warm = h.timed(2 if options.get("compile") else 1)
        r = h.timed(args.what_if_steps)
        r.update(efficiency(r["median_tokens_per_s"], h.flops_per_token, pk))
        r.update({"variant": label, "overrides": extra, "options": options, "params": str(h.params),
                  "flops_per_token": h.flops_per_token, "warmup_seconds": warm["seconds"]})
        rows.append(r)
        print(f"what-if {label}: median step {r['median_step_s']:.3f} s ({r['min_step_s']:.3f}-{r['max_step_s']:.3f}), "
              f"{r['median_tokens_per_s']:.0f} tokens/s, {r['tflops']:.4f} TFLOP/s, MFU(bf16) {_pct(r['mfu_bf16'])} "
              f"(warm-up {warm['seconds']:.1f} s)", flush=True)
        del h
    return rows


# ------------------------------------------------------------------------------------ report
def _pct(x, digits=1) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def _steps(r: dict) -> str:
    return f"{r['median_step_s']:.3f} ({r['min_step_s']:.3f}-{r['max_step_s']:.3f})"


def _f(x, fmt=".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def tables(report: dict) -> list[str]:
    pk = report["peaks"]
    precisions = [p for p in ("bf16", "fp32") if p in report["results"]]
    res = report["results"]
    lines = ["**MFU as tuneforge reports it** (`train()`, last `metrics.jsonl` record: the loop's meter over "
             f"steps {max(1, report['config']['steps'] - 20)}-{report['config']['steps']}) and in the plain-timed "
             "harness (the same step body, no profiler):", "",
             "| precision | train(): tokens/s | train(): model TFLOP/s | train(): MFU vs own-precision peak | "
             "train(): MFU vs bf16 peak | harness: tokens/s | harness: s/step, median (min-max) | "
             "harness: MFU vs bf16 peak |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for p in precisions:
        t, pl = res[p]["train"]["record"], res[p]["profile"]["plain"]
        own = t.get("mfu")
        vs_bf16 = t["tflops"] * 1e12 / pk["bf16"]["flops"] if pk.get("bf16") else None
        lines.append(f"| {p} | {t['tokens_per_s']:,.0f} | {t['tflops']:.4f} | {_pct(own)} | {_pct(vs_bf16)} | "
                     f"{pl['tokens_per_s']:,.0f} | {_steps(pl)} | {_pct(pl['mfu_bf16'])} |")
    lines += ["", "**Where a step's time goes** (self CPU time per category, `torch.profiler`, "
              f"{report['config']['profile_steps']} steps; shares of the profiled step):", "",
              "| category | " + " | ".join(f"{p} ms/step | {p} share" for p in precisions) + " |",
              "| --- |" + " ---: | ---: |" * len(precisions)]
    for key, label in CATEGORIES:
        cells = []
        for p in precisions:
            c = res[p]["profile"]["categories"][key]
            cells.append(f"{c['ms_per_step']:.1f} | {_pct(c['share'])}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| **profiled step** | " + " | ".join(
        f"**{res[p]['profile']['profiled_step_ms']:.1f}** | 100%" for p in precisions) + " |")
    lines.append("| plain step (no profiler), mean | " + " | ".join(
        f"{1e3 * res[p]['profile']['plain']['step_s']:.1f} | " for p in precisions) + " |")
    lines.append("| median step: profiled / plain (ms) | " + " | ".join(
        f"{1e3 * res[p]['profile']['profiled']['median_step_s']:.0f} / "
        f"{1e3 * res[p]['profile']['plain']['median_step_s']:.0f} | " for p in precisions) + " |")
    if "minor_page_faults_per_step" in res[precisions[0]]["profile"]["plain"]:
        lines.append("| minor page faults per step: profiled / plain | " + " | ".join(
            f"{res[p]['profile']['profiled']['minor_page_faults_per_step']:,.0f} / "
            f"{res[p]['profile']['plain']['minor_page_faults_per_step']:,.0f} | " for p in precisions) + " |")
    lines += ["", "By phase (inclusive time of the step's markers):", "",
              "| phase | " + " | ".join(f"{p} ms/step | {p} share" for p in precisions) + " |",
              "| --- |" + " ---: | ---: |" * len(precisions)]
    for key, label in PHASES:
        lines.append(f"| {label} | " + " | ".join(
            f"{res[p]['profile']['phases'][key]['ms_per_step']:.1f} | {_pct(res[p]['profile']['phases'][key]['share'])}"
            for p in precisions) + " |")
    lines += ["", "**Inside the matmuls** (FLOPs of every recorded mm/addmm from its shapes over the time spent "
              "in those ops) against the measured peaks:", "",
              "| precision | matmul GFLOP/step | matmul ms/step | share of step | TFLOP/s inside matmuls | "
              "of bf16 peak | of own-precision peak | attention kernels TFLOP/s |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for p in precisions:
        mk = res[p]["profile"]["matmul_kernels"]
        own = pk.get(p)
        lines.append(f"| {p} | {mk['gflop_per_step']:.1f} | {mk['ms_per_step']:.1f} | {_pct(mk['share_of_step'])} | "
                     f"{_f(mk['tflops'], '.4f')} | {_pct(mk['tflops'] * 1e12 / pk['bf16']['flops'])} | "
                     f"{_pct(mk['tflops'] * 1e12 / own['flops']) if own else 'n/a'} | "
                     f"{_f(res[p]['profile']['attention_kernels']['tflops'], '.4f')} |")
    lines += ["", "**The model's GEMM shapes**, in the model (bf16 run: inclusive time of those calls) and timed "
              "alone with `tuneforge.train.peak`'s method (contiguous operands), against the square-matrix "
              f"peaks (bf16 {pk['bf16']['flops'] / 1e12:.3f}, fp32 {pk['fp32']['flops'] / 1e12:.3f} TFLOP/s):", "",
              "| phase | GEMM [M,K] x [K,N] | role | calls/step | in model: ms/step | in model: TFLOP/s | "
              "alone bf16 TFLOP/s (of peak) | alone fp32 TFLOP/s (of peak) |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    alone = {tuple(r["shape"]): r for r in report["shapes_alone"]}
    ref = "bf16" if "bf16" in precisions else precisions[0]
    for s in res[ref]["profile"]["matmul_shapes"]:
        a = alone.get(tuple(s["shape"]), {})
        shape = s["shape"]
        dims = (f"[{shape[0]},{shape[1]}] x [{shape[1]},{shape[2]}]" if len(shape) == 3
                else f"{shape[0]} x [{shape[1]},{shape[2]}] x [{shape[2]},{shape[3]}]")
        lines.append(f"| {(s['phase'] or '').replace('tf::', '')} | {dims} | {s['role']} | {s['calls_per_step']:g} | "
                     f"{s['ms_per_step']:.1f} | {_f(s['tflops'], '.3f')} | "
                     f"{_f(a.get('bf16_tflops'), '.3f')} ({_pct(a.get('bf16_of_peak'), 0)}) | "
                     f"{_f(a.get('fp32_tflops'), '.3f')} ({_pct(a.get('fp32_of_peak'), 0)}) |")
    for n, v in pk["bf16"]["by_size"].items():
        f32 = (pk.get("fp32") or {}).get("by_size", {}).get(n)
        lines.append(f"| peak | [{n},{n}] x [{n},{n}] | `tuneforge bench peak` | | | | {float(v) / 1e12:.3f} | "
                     f"{_f(float(f32) / 1e12 if f32 else None, '.3f')} |")
    if report.get("what_if"):
        lines += ["", "**What raises it** (bf16, plain-timed harness, "
                  f"{report['config']['what_if_steps']} steps after 1 warm-up step (2 with torch.compile), same data; "
                  "MFU from the median step):", "",
                  "| variant | parameters | model MFLOP/token | s/step, median (min-max) | tokens/s (median step) | "
                  "model TFLOP/s | MFU vs bf16 peak |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in report["what_if"]:
            n_params = re.search(r"/ ([\d,]+)", r["params"])
            lines.append(f"| {r['variant']} | {n_params.group(1) if n_params else r['params']} | "
                         f"{r['flops_per_token'] / 1e6:.1f} | {_steps(r)} | {r['median_tokens_per_s']:,.0f} | "
                         f"{r['tflops']:.4f} | {_pct(r['mfu_bf16'])} |")
    return lines


def machine_line(report: dict) -> str:
    m = report["machine"]
    return (f"{m['cpu']}, {m['cores']} cores, torch threads {m['threads']}, ISA {'/'.join(m['isa'])}, "
            f"torch {m['torch']}, transformers {m['transformers']}; load average before the run "
            f"{m['load_average'][0]:.2f}")


def write_docs(report: dict, account: list[str]) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _docs import write_section

    pk = report["peaks"]
    found = re.search(r"/ ([\d,]+)", report["params"])
    n_params = found.group(1) if found else report["params"]
    write_section("pretrain_mfu", [
        "## MFU in causal-LM pretraining (profile)",
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}  ",
        f"Machine: {machine_line(report)}  ",
        f"Peaks (`tuneforge bench peak`, square matmuls 1024-4096): bf16 {pk['bf16']['flops'] / 1e12:.3f} TFLOP/s, "
        f"fp32 {pk['fp32']['flops'] / 1e12:.3f} TFLOP/s",
        "",
        "`recipes/shakespeare-char-10m.yaml` (GPT-2 from scratch: 6 layers, 6 heads, 384 wide, "
        f"{n_params} parameters; 69-token character vocabulary; blocks of 129 tokens; batch 16; fused AdamW; "
        "clipping at 1.0), trained through `tuneforge.train.run.train` and then profiled with the loop's own "
        "step body on the same model, batches and precision. `bench/pretrain_mfu.py`'s docstring says how "
        "each figure is measured; raw numbers, the costliest ops per step and "
        "the what-if runs' step times: `docs/bench/pretrain_mfu.json`.",
        "",
        *tables(report),
        "",
        "### What holds MFU back, and what would raise it",
        "",
        *account,
    ], report)


def _top_ms(profile: dict, *names: str) -> float:
    return sum(o["ms_per_step"] for o in profile["top_ops"] if o["op"] in names)


def account_lines(report: dict) -> list[str]:
    """The plain-language account, written from the measured numbers (re-rendered with --from-json)."""
    res, pk = report["results"], report["peaks"]
    wi = {r["variant"].split(" (")[0] if r["variant"].startswith("recipe (") else r["variant"]: r
          for r in (report.get("what_if") or [])}
    b, f = res.get("bf16"), res.get("fp32")
    out = []
    if not b:
        return ["- Run with `--precision bf16` (or both) for the account against the bf16 peak."]
    bp, rec = b["profile"], b["train"]["record"]
    mfu, peak = rec.get("mfu"), pk["bf16"]["flops"] / 1e12
    line = (f"- **MFU: {_pct(mfu)} of the measured bf16 peak in bf16** as `train()` logs it ({rec['tflops']:.3f} of "
            f"{peak:.3f} TFLOP/s; {'above' if (mfu or 0) >= 0.4 else 'below'} the issue's 40%), "
            f"{_pct(bp['plain']['mfu_bf16'])} in the plain-timed harness.")
    if f:
        frec = f["train"]["record"]
        speedup = bp["plain"]["tokens_per_s"] / f["profile"]["plain"]["tokens_per_s"]
        line += (f" fp32 training reaches {_pct(frec.get('mfu'))} of the fp32 peak "
                 f"({_pct(frec['tflops'] * 1e12 / pk['bf16']['flops'])} of the bf16 one); bf16 trains "
                 f"{speedup:.2f}x as fast.")
    line += (" On this VM step times wander by about +-5-10% between runs (compare the first and last what-if rows), "
             "so differences below that are noise.")
    out.append(line)
    mk, cats = bp["matmul_kernels"], bp["categories"]
    attn_flops_share = 1 - mk["gflop_per_step"] / bp["model_gflop_per_step"]
    fast = mk["tflops"] * 1e12 / pk["bf16"]["flops"] >= 0.6
    gemm = (f"- **The GEMMs are {'fast' if fast else 'slow'}.** They carry {_pct(1 - attn_flops_share)} of the "
            f"model FLOPs, take "
            f"{_pct(mk['share_of_step'])} of the profiled bf16 step and run at {mk['tflops']:.3f} TFLOP/s inside the "
            f"model ({_pct(mk['tflops'] * 1e12 / pk['bf16']['flops'])} of the peak).")
    alone = [r for r in report.get("shapes_alone") or [] if r.get("bf16_of_peak") is not None]
    if alone:
        big = [r for r in alone if min(r["shape"]) > 100] or alone
        small = [r for r in alone if r not in big]
        lo, hi = min(r["bf16_of_peak"] for r in big), max(r["bf16_of_peak"] for r in big)
        width = min(min(r["shape"]) for r in big)
        txt = (f" Timed alone, the model's shapes reach {_pct(lo, 0)}-{_pct(hi, 0)} of the square-matrix bf16 peak"
               + (f": at M = {bp.get('tokens_per_step', 0):,.0f} tokens per step and widths >= {width}, oneDNN's "
                  "bf16 kernels are as fast as on 2048x2048 matrices, so the matrices are not too small here"
                  if lo >= 0.85 else ": some of these matrices are too small for the kernels to reach the peak"))
        if small:
            s_lo, s_hi = min(r["bf16_of_peak"] for r in small), max(r["bf16_of_peak"] for r in small)
            txt += (f" (the narrow lm_head, one column per vocabulary entry: {_pct(s_lo, 0)}-{_pct(s_hi, 0)}, "
                    "under 1% of the FLOPs)")
        slow = [s for s in bp["matmul_shapes"] if s["tflops"] and s["ms_per_step"] > 5
                and s["tflops"] < 0.7 * next((a["bf16_tflops"] for a in alone if a["shape"] == s["shape"]), 0)]
        if slow:
            lost = sum(s["ms_per_step"] - s["gflop_per_step"] / next(a["bf16_tflops"] for a in alone
                                                                    if a["shape"] == s["shape"]) for s in slow)
            pl, pr = bp["plain"], bp["profiled"]
            ratio = sum(s["gflop_per_step"] for s in slow) / sum(s["ms_per_step"] for s in slow) / sum(
                next(a["bf16_tflops"] for a in alone if a["shape"] == s["shape"]) for s in slow) * len(slow)
            txt += (f". In the model, the GEMMs that write the largest fresh tensor, [{slow[0]['shape'][0]},"
                    f"{slow[0]['shape'][2]}] (" + ", ".join(sorted({s['role'] for s in slow})) + f"), run at "
                    f"{_pct(ratio, 0)} of their stand-alone speed ({lost:.0f} ms per step lost). That is partly the "
                    f"profiler's doing: the profiled step takes {1e3 * pr['median_step_s']:.0f} ms against "
                    f"{1e3 * pl['median_step_s']:.0f} ms "
                    "plain (median)")
            if "minor_page_faults_per_step" in pl:
                txt += (f", and {pr['minor_page_faults_per_step']:,.0f} minor page faults per step against "
                        f"{pl['minor_page_faults_per_step']:,.0f}: under the profiler the process faults in fresh "
                        "pages far more often, and the ops that write the largest new tensors are the likeliest to "
                        "pay for it, so those ops (and GELU on the same tensors) are probably over-weighted in the "
                        "profile")
        gemm += txt + "."
    out.append(gemm)
    a = cats["attention"]
    sdpa_bwd = _top_ms(bp, "aten::_scaled_dot_product_flash_attention_for_cpu_backward")
    largest = max((k for k in cats if k != "matmul"), key=lambda k: cats[k]["share"] or 0) == "attention"
    txt = (f"- **Attention{' is the largest loss' if largest else ''}.** `scaled_dot_product_attention` "
           f"(transformers' default `sdpa`, here PyTorch's CPU flash-attention kernel) takes {_pct(a['share'])} of the "
           f"bf16 step ({a['ms_per_step']:.0f} ms; "
           f"the backward kernel alone {sdpa_bwd:.0f} ms) for {_pct(attn_flops_share)} of the model FLOPs: "
           f"{_f(bp['attention_kernels']['tflops'], '.3f')} TFLOP/s")
    if f:
        fa = f["profile"]["categories"]["attention"]
        txt += (f", and in bf16 it is {'slower' if a['ms_per_step'] > fa['ms_per_step'] else 'no faster'} than the "
                f"same kernel in fp32 ({a['ms_per_step']:.0f} against {fa['ms_per_step']:.0f} ms per step)")
    eager, base = wi.get("recipe, eager attention"), wi.get("recipe")
    if eager is None:
        eager = next((r for k, r in wi.items() if k.startswith("recipe, eager attention")), None)
    if eager and base:
        txt += (f". With transformers' eager attention (explicit matmuls + softmax: "
                f"`model.set_attn_implementation(\"eager\")`), the same training step takes "
                f"{eager['median_step_s']:.3f} s instead of {base['median_step_s']:.3f} s: MFU "
                f"{_pct(eager['mfu_bf16'])} instead of {_pct(base['mfu_bf16'])}")
    out.append(txt + ".")
    e = cats["elementwise"]
    gelu = _top_ms(bp, "aten::gelu", "aten::gelu_backward")
    out.append(f"- **Elementwise and normalisation: {_pct(e['share'])}** ({e['ms_per_step']:.0f} ms), of which exact "
               f"GELU and its backward on the 4x-wide MLP activations {gelu:.0f} ms (over-weighted by the profiler, as "
               f"above); layer norms, residual adds and the rest are small. dtype casts under autocast take "
               f"{_pct(cats['cast']['share'])}, the fused AdamW step with clipping {_pct(cats['optimizer']['share'])}, "
               f"views/allocation {_pct(cats['views']['share'])}, the loop's Python, the autograd engine and "
               f"Accelerate {_pct(cats['python']['share'])}: per-op overhead does not hold this model back.")
    levers = []
    b64 = wi.get("batch 64")
    if b64 and base:
        gain = b64["mfu_bf16"] > base["mfu_bf16"] * 1.05
        levers.append(f"batch 64 instead of 16: {_pct(b64['mfu_bf16'])}"
                      + ("" if gain else " (no gain: the step is not bound by per-op overhead)"))
    wide = wi.get("width 768, 12 heads")
    if wide:
        levers.append(f"width 768: {_pct(wide['mfu_bf16'])} (GEMM FLOPs grow with width squared, attention and "
                      "elementwise work with width)")
    wide_e = wi.get("width 768, 12 heads, eager attention")
    if wide_e:
        levers.append(f"width 768 with eager attention: {_pct(wide_e['mfu_bf16'])}")
    nc = wi.get("recipe, model.config.use_cache=False")
    if nc and base:
        cat_ms = _top_ms(bp, "aten::cat")
        gain = nc["mfu_bf16"] > base["mfu_bf16"] * 1.05
        levers.append(f"`use_cache=False` (transformers' GPT-2 otherwise fills a key/value cache in every training "
                      f"forward: the `aten::cat` copies, {cat_ms:.1f} ms per step): {_pct(nc['mfu_bf16'])}"
                      + ("" if gain else " (within the noise: those copies are too small to matter)"))
    comp = wi.get("recipe + torch.compile")
    if comp and base:
        levers.append(f"`torch.compile` (inductor): {_pct(comp['mfu_bf16'])} after a {comp['warmup_seconds']:.0f} s "
                      "warm-up (compiling is cached between runs), i.e. "
                      + ("no gain worth its compile time" if comp["mfu_bf16"] < base["mfu_bf16"] * 1.1
                         else "a gain"))
    if levers:
        out.append(f"- **What raises it** (what-if table, recipe {_pct(base['mfu_bf16']) if base else ''}): "
                   + "; ".join(levers) + ".")
    others = sorted(((k, v["share"] or 0) for k, v in cats.items() if k != "matmul"), key=lambda kv: -kv[1])
    named = ", ".join(f"{LABELS[k].split(' (')[0]} {_pct(v)}" for k, v in others[:2])
    small_share = sum(cats[k]["share"] or 0 for k in ("cast", "optimizer", "embedding", "cross_entropy", "views",
                                                       "python"))
    no_help = [name for name, key in (("`torch.compile`", "recipe + torch.compile"), ("a larger batch", "batch 64"))
               if key in wi and base and wi[key]["mfu_bf16"] <= base["mfu_bf16"] * 1.05]
    out.append(f"- **So**: at this size on this CPU, the {_pct(mk['share_of_step'])} of the step spent in GEMMs "
               f"runs near the peak, and what holds MFU back is the rest: {named} of the profiled step; casts, the "
               f"optimizer, embedding, loss, allocation and Python together {_pct(small_share)}. The change that pays "
               "is the attention implementation for bf16 training on CPU (eager instead of sdpa, measured above); a "
               "wider model raises MFU further." + (f" {' and '.join(no_help)} did not help here." if no_help else "")
               + " A GPU was not measured.")
    return out


# ------------------------------------------------------------------------------------ main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30, help="train() optimizer steps per precision (default 30)")
    p.add_argument("--log-every", type=int, default=10, help="train.log_every_steps (default 10)")
    p.add_argument("--profile-steps", type=int, default=10, help="steps timed plainly, then profiled (default 10)")
    p.add_argument("--precision", choices=["bf16", "fp32", "both"], default="both")
    p.add_argument("--what-if", dest="what_if", action=argparse.BooleanOptionalAction, default=True,
                   help="time bigger variants in bf16 (default on)")
    p.add_argument("--what-if-steps", type=int, default=5, help="timed steps per what-if variant (default 5)")
    p.add_argument("--compile", action="store_true",
                   help="add a torch.compile what-if variant (compiling takes a few minutes on 2 cores)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra recipe override, repeatable (e.g. for a smoke test on a tiny model)")
    p.add_argument("--workdir", type=Path, default=None, help="run directories (default: a temp dir, removed after)")
    p.add_argument("--from-json", type=Path, default=None, metavar="REPORT",
                   help="measure nothing: print (and with --write-docs write) the tables of a saved report, e.g. "
                        "docs/bench/pretrain_mfu.json")
    p.add_argument("--write-docs", action="store_true",
                   help="write docs/benchmarks.md (pretrain_mfu section) and docs/bench/pretrain_mfu.json")
    args = p.parse_args(argv)
    if min(args.steps, args.profile_steps, args.log_every, args.what_if_steps) < 1:
        p.error("step counts must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.from_json is not None:
        report = json.loads(args.from_json.read_text())
        account = account_lines(report)
        print("\n".join([*tables(report), "", *account]))
        if args.write_docs:
            write_docs(report, account)
        return 0
    os.chdir(REPO)  # the recipe's data path is relative to the repository root
    pk = peaks()
    if not pk.get("bf16") or not pk.get("fp32"):
        raise SystemExit("no cached matmul peak: run `tuneforge bench peak --dtype bf16` and `--dtype fp32` first")
    machine = machine_info()
    own_tmp = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="tf-mfu-")) if own_tmp else args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    precisions = ["bf16", "fp32"] if args.precision == "both" else [args.precision]
    command = "python bench/pretrain_mfu.py" + ("" if len(sys.argv) < 2 else " " + shlex.join(sys.argv[1:]))
    results, what = {}, None
    try:
        for p in precisions:
            print(f"== {p}: train() for {args.steps} steps", flush=True)
            tr = run_train(args, p, workdir)
            print(f"== {p}: profiling", flush=True)
            prof = profile_precision(args, p, workdir, Path(tr["run_dir"]), pk)
            results[p] = {"train": tr, "profile": prof}
            rec = tr["record"]
            print(f"{p}: train {rec['tokens_per_s']:.0f} tokens/s, {rec['tflops']} TFLOP/s, MFU {rec.get('mfu')}; "
                  f"harness {prof['plain']['tokens_per_s']:.0f} tokens/s; matmuls "
                  f"{_pct(prof['matmul_kernels']['share_of_step'])} of the step at "
                  f"{_f(prof['matmul_kernels']['tflops'], '.4f')} TFLOP/s", flush=True)
        ref = "bf16" if "bf16" in results else precisions[0]
        shapes = sorted({tuple(s["shape"]) for p in results for s in results[p]["profile"]["matmul_shapes"]})
        print(f"== timing {len(shapes)} GEMM shapes alone", flush=True)
        alone = time_shapes(shapes, pk)
        if args.what_if:
            print("== what-if variants (bf16)", flush=True)
            what = what_if(args, workdir, Path(results[ref]["train"]["run_dir"]), pk)
    finally:
        if own_tmp:
            shutil.rmtree(workdir, ignore_errors=True)
    report = {"command": command, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": machine, "peaks": pk, "recipe": str(RECIPE.relative_to(REPO)),
              "overrides": [*BASE_OVERRIDES, *args.override],
              "params": results[ref]["profile"]["params"],
              "config": {"steps": args.steps, "log_every": args.log_every, "profile_steps": args.profile_steps,
                         "warmup_steps": WARMUP_STEPS, "what_if_steps": args.what_if_steps,
                         "compile": args.compile},
              "results": results, "shapes_alone": alone, "what_if": what}
    for r in results.values():
        r["train"].pop("run_dir", None)
    account = account_lines(report)
    print()
    print("\n".join(tables(report)))
    print()
    print("\n".join(account))
    if args.write_docs:
        write_docs(report, account)
    return 0


if __name__ == "__main__":
    sys.exit(main())
