"""``make_plan(recipe, ...)``: from a recipe (and, when prepared, its data) to an ``Estimate``.

The steps: resolve the device (this machine's CPU or GPU, or a named GPU from ``GPUS``) and the
precision the run would use; read the model config and build the task model on ``meta`` with the
recipe's method; take the sequence lengths from the prepared data if ``tuneforge prepare`` (or an
earlier run) wrote it, else assume every example is ``model.max_length`` long; then fill a ``Setup``
and do the arithmetic of ``tuneforge.plan.estimate``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from tuneforge.errors import TuneforgeError
from tuneforge.plan.estimate import Calibration, Estimate, Setup, estimate
from tuneforge.plan.model import (Arch, ParamStats, arch_from_config, build_meta_model, model_config, param_stats,
                                  planned_attention)

GIB = 2 ** 30


@dataclass(frozen=True)
class Device:
    """Where the plan runs: this machine's CPU or GPU, or a GPU from the table."""

    name: str  # cpu | cuda | a key of GPUS
    kind: str  # cpu | cuda
    memory_bytes: float | None  # what the process may use (None: unknown)
    peak_flops: dict[str, float] = field(default_factory=dict)  # precision -> dense matmul FLOP/s
    description: str = ""


#: Named GPUs: dense bf16 tensor-core FLOP/s (fp16 the same, TF32 half of it for fp32 matmuls: what
#: PyTorch uses for fp32 training with TF32 allowed) and memory, from the vendors' data sheets.
GPUS = {
    "h100": (989e12, 80 * GIB, "NVIDIA H100 SXM 80 GB"),
    "a100-80gb": (312e12, 80 * GIB, "NVIDIA A100 80 GB"),
    "l4": (121e12, 24 * GIB, "NVIDIA L4 24 GB"),
    "rtx4090": (165e12, 24 * GIB, "NVIDIA GeForce RTX 4090 24 GB"),
}
DEVICE_NAMES = ("cpu", "cuda", *GPUS)

#: The plan's measured constants per device kind (docs/plan.md: how each was measured).
#: CPU, fitted on runs of recipes that are *not* in the accuracy table (bench/plan_accuracy.py --set
#: calibration): ``framework_bytes`` is the process before the model (Python, torch, transformers,
#: accelerate, peft, the data stage, the tokenizer: 0.61-0.72 GB of peak RSS measured just before the
#: model is built; 0.43 GB for the imports alone); ``allocator_retention`` what glibc keeps on top once
#: steps repeat (``estimate.allocator_bytes``); the step time's ``mfu``, ``bandwidth`` and
#: ``step_overhead_s`` (``estimate.step_seconds``). CUDA: not measured here (the development machine has no
#: GPU): the CUDA context and cuBLAS workspace (~0.6 GB) and the issue's 40% MFU.
CALIBRATION = {
    "cpu": Calibration(framework_bytes=0.634e9, workspace_factor=1.0, allocator_retention=0.60, mfu=0.66,
                       mfu_fp32=0.89, bandwidth=22e9, step_overhead_s=0.023, dropout_s_per_element=6.8e-9,
                       logit_s_per_element=17.6e-9, chunked_logit_s_per_element=12.6e-9,
                       source="CPU constants fitted on the 2-core development machine (docs/plan.md)"),
    "cuda": Calibration(framework_bytes=0.6 * GIB, workspace_factor=1.0, mfu=0.40,
                        source="assumed: CUDA context ~0.6 GB, 40% MFU (not measured)"),
}
#: Whether the chunked vocabulary loss (``tuneforge.tasks.losses``) takes effect under bf16/fp16 autocast.
#: Until 2026-12-06 it did not (the loss's probe compared Accelerate's autocast logits with an fp32
#: projection at fp32 tolerance and fell back to the full logits); the accuracy table in docs/plan.md was
#: measured then, with this set to False. The probe now uses the half-precision tolerance under autocast.
CHUNKED_LOSS_UNDER_AUTOCAST = True
#: Mean padded length over the longest one from which the steps count as repeating at the peak's size.
STEADY_LENGTH_SHARE = 0.9


def default_device() -> str:
    """This machine: ``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_parallelism() -> tuple[int, str]:
    """(processes, sharding) of the launch this process is part of: ``WORLD_SIZE`` processes, sharded
    when ``accelerate launch`` asked for FSDP (``ACCELERATE_USE_FSDP``); else one process."""
    processes = int(os.environ.get("WORLD_SIZE", "1") or 1)
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    return processes, ("fsdp" if fsdp and processes > 1 else "none")


def resolve_device(name: str) -> Device:
    """``cpu``/``cuda`` (this machine's, with its cached matmul peak and free memory) or a named GPU."""
    name = name.lower()
    if name in GPUS:
        flops, memory, description = GPUS[name]
        return Device(name, "cuda", memory, {"bf16": flops, "fp16": flops, "fp32": flops / 2}, description)
    if name not in ("cpu", "cuda"):
        raise TuneforgeError(f"--device {name!r}: allowed are {', '.join(DEVICE_NAMES)}")
    from tuneforge.train.peak import get_peak

    peaks = {}
    for dtype in ("bf16", "fp16", "fp32"):
        if name == "cpu" and dtype == "fp16":
            continue
        try:
            value = get_peak(name, dtype, measure_if_missing=False) if _local(name) else None
        except Exception:  # noqa: BLE001 - a cache we cannot read only costs the time estimate
            value = None
        if value:
            peaks[dtype] = value
    memory, description = _local_memory(name)
    return Device(name, name, memory, peaks, description)


def _local(name: str) -> bool:
    if name == "cpu":
        return True
    import torch

    return torch.cuda.is_available()


def _local_memory(name: str) -> tuple[float | None, str]:
    """(memory the process can use, description) of this machine's CPU RAM or GPU."""
    if name == "cuda":
        import torch

        if not torch.cuda.is_available():
            return None, "CUDA GPU (none on this machine: no memory or peak known; use a named GPU)"
        free, total = torch.cuda.mem_get_info()
        return float(total), torch.cuda.get_device_name()
    from tuneforge.train.peak import cpu_name

    return available_ram(), f"{cpu_name()}, {_threads()} thread(s)"


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def available_ram() -> float | None:
    """MemAvailable (what can be allocated without swapping), or None where /proc/meminfo is missing."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024.0
    except OSError:
        pass
    try:
        import psutil

        return float(psutil.virtual_memory().available)
    except ImportError:
        return None


def resolve_plan_precision(requested: str, device: Device) -> str:
    """The autocast dtype the run would use on ``device`` (``train.precision``, auto resolved)."""
    if device.name in GPUS or (device.kind == "cuda" and not _local("cuda")):
        if requested == "auto":
            return "bf16"
        return requested
    from tuneforge.models.precision import resolve_precision

    return resolve_precision(requested, device.kind)


# ------------------------------------------------------------------------------------------------ data

@dataclass(frozen=True)
class DataStats:
    """Lengths of the prepared training split, as the loop will batch them."""

    examples: int
    peak_tokens: int  # padded tokens of the largest micro-batch of one process
    peak_length: int  # its padded length
    mean_length: float  # mean padded length of a micro-batch
    labelled_fraction: float  # labelled positions / positions (vocabulary-wide label kinds)
    source: str


def data_stats(recipe, spec, data_dir: Path, processes: int) -> DataStats | None:
    """Length statistics of ``data_dir`` (a prepared split folder), or None when it is not prepared."""
    from tuneforge.data.prepare import PREPARED_FILE

    if not (Path(data_dir) / PREPARED_FILE).is_file():
        return None
    from tuneforge.data.batching import length_grouped_batches, shard
    from tuneforge.data.prepare import encode_cached, load_prepared
    from tuneforge.models.build import load_tokenizer, resolve_recipe_model
    from tuneforge.train.flops import tokens_per_example

    data = load_prepared(data_dir)
    run_dir = Path(data_dir).parent
    tokenizer = load_tokenizer(resolve_recipe_model(recipe.model, run_dir=run_dir), recipe.model.trust_remote_code)
    encoded = encode_cached(tokenizer, data, "train", recipe, spec)
    if len(encoded) == 0:
        return None
    lengths = tokens_per_example(encoded)
    cfg = recipe.train
    batches = length_grouped_batches(encoded.lengths, cfg.batch_size, seed=recipe.seed, epoch=0,
                                     group_by_length=cfg.group_by_length)
    padded = []  # (examples of this process, padded length) per micro-batch of process 0
    for batch in batches:
        mine = shard(batch, 0, processes)
        if mine:
            padded.append((len(mine), max(lengths[i] for i in mine)))
    peak = max(padded, key=lambda p: p[0] * p[1])
    weights = encoded.weights
    fraction = sum(weights) / max(sum(lengths), 1) if encoded.label_kind in ("causal", "mlm", "target") else 1.0
    if encoded.label_kind == "mlm":
        fraction = recipe.masked_lm.mask_probability
    return DataStats(examples=len(encoded), peak_tokens=peak[0] * peak[1], peak_length=peak[1],
                     mean_length=sum(n for _, n in padded) / len(padded), labelled_fraction=min(fraction, 1.0),
                     source=str(data_dir))


# ------------------------------------------------------------------------------------------------ plan

@dataclass
class Plan:
    """A recipe's plan: what it was computed from and the ``Estimate``."""

    recipe_name: str
    device: Device
    precision: str
    attention: str
    arch: Arch
    params: ParamStats
    setup: Setup
    estimate: Estimate
    calibration: Calibration
    config_source: str
    data: DataStats | None
    peak_flops: float | None
    notes: list[str] = field(default_factory=list)
    memory_budget: float | None = None
    suggestions: list = field(default_factory=list)  # tuneforge.plan.fit.Suggestion, when over budget
    facts: "ModelFacts | None" = None

    @property
    def config(self):
        return self.facts.config if self.facts else None

    @property
    def budget(self) -> float | None:
        """The memory to fit in: --memory, else the device's."""
        return self.memory_budget if self.memory_budget is not None else self.device.memory_bytes

    @property
    def fits(self) -> bool | None:
        budget = self.budget
        return None if budget is None else self.estimate.peak <= budget


def _loss_chunk_rows(recipe, vocab: int, precision: str) -> int | None:
    """Rows per chunk of the chunked vocabulary loss (``tuneforge.tasks.losses``: ``loss_chunk_rows(vocab)``, or a
    fixed ``LOSS_CHUNK_ROWS``), None when this version computes the whole logits. The chunks also apply when
    the model cannot be split at its output layer (prompt-learning methods): the model's full logits then
    exist as well, which the plan does not add."""
    from tuneforge.tasks import losses

    if precision != "fp32" and not CHUNKED_LOSS_UNDER_AUTOCAST:
        return None
    by_vocab = getattr(losses, "loss_chunk_rows", None)
    if callable(by_vocab):
        return int(by_vocab(vocab))
    return getattr(losses, "LOSS_CHUNK_ROWS", None)


def _quantize(recipe) -> tuple[int | None, bool]:
    """(bits, double quantisation) of ``model.quantize`` where the recipe has that key."""
    q = getattr(recipe.model, "quantize", None)
    if q is None:
        return None, False
    if isinstance(q, dict):
        bits, double = q.get("bits"), q.get("double_quant", q.get("double_quantization", False))
    else:
        bits = getattr(q, "bits", None)
        double = getattr(q, "double_quant", getattr(q, "double_quantization", False))
    return (int(bits) if bits else None), bool(double)


def _generation(recipe, seq: int) -> tuple[int, int, int] | None:
    from tuneforge.tasks import spec_for

    batches = spec_for(recipe).final_generation(recipe)
    return None if batches is None else (batches[0], seq, batches[1])


def build_setup(recipe, *, precision: str, device: Device, processes: int, shard: str, label_kind: str,
                num_labels: int, data: DataStats | None, arch_vocab: int) -> Setup:
    cfg = recipe.train
    micro = math.ceil(cfg.batch_size / processes)
    bits, double = _quantize(recipe)
    max_len = recipe.model.max_length
    label_fraction = 1.0 if label_kind != "mlm" else recipe.masked_lm.mask_probability
    eval_batch = cfg.eval_batch_size if isinstance(cfg.eval_batch_size, int) else 64
    return Setup(
        precision=precision, device=device.kind, micro_batch=micro,
        seq_peak=data.peak_length if data else max_len,
        seq_mean=data.mean_length if data else float(max_len),
        accumulation=cfg.gradient_accumulation_steps, label_kind=label_kind,
        labelled_fraction=data.labelled_fraction if data else label_fraction, num_labels=num_labels,
        checkpointing=bool(getattr(cfg, "gradient_checkpointing", False)), optimizer=cfg.optimizer,
        momentum=cfg.momentum, quantize_bits=bits, double_quant=double, processes=processes, shard=shard,
        loss_chunk_rows=_loss_chunk_rows(recipe, arch_vocab, precision),
        steady_at_peak=data is None or data.mean_length >= STEADY_LENGTH_SHARE * data.peak_length,
        eval_batch=math.ceil(eval_batch / processes),
        eval_auto=not isinstance(cfg.eval_batch_size, int), threads=_threads() if device.kind == "cpu" else 1,
        eval_seq=data.peak_length if data else max_len,
        generation=_generation(recipe, data.peak_length if data else max_len))


@dataclass(frozen=True)
class ModelFacts:
    """What ``make_plan`` learns about the model once (rebuilding it per suggestion is not needed)."""

    config: object
    config_source: str
    arch: Arch
    params: ParamStats
    attention: str
    label_kind: str
    num_labels: int


def model_facts(recipe, device: Device, precision: str, label_names: list[str] | None) -> ModelFacts:
    from tuneforge.tasks import spec_for

    spec = spec_for(recipe)
    config, source = model_config(recipe)
    attention = planned_attention(recipe, config, spec, device.kind, precision)
    arch = arch_from_config(config, attention)
    names = label_names or recipe.data.label_names or ["0", "1"]
    model = build_meta_model(recipe, config, spec, names, attention)
    return ModelFacts(config, source, arch, param_stats(model, arch), attention, spec.label_kind, len(names))


def make_plan(recipe, *, device: str = "cpu", processes: int = 1, shard: str = "none",
              memory: float | None = None, data_dir: Path | None = None, calibration: Calibration | None = None,
              facts: ModelFacts | None = None) -> Plan:
    """Plan ``recipe`` on ``device`` (see the module docstring); ``memory`` (bytes) is the budget to fit in
    (default: the device's memory), ``data_dir`` the prepared data (default ``<run_dir>/data``)."""
    from tuneforge.tasks import spec_for
    from tuneforge.train.fit import schedule_steps

    if processes < 1:
        raise TuneforgeError(f"--processes: must be at least 1 (got {processes})")
    if shard not in ("none", "zero2", "zero3", "fsdp"):
        raise TuneforgeError(f"--shard {shard!r}: allowed are none, zero2, zero3, fsdp")
    dev = resolve_device(device)
    if dev.kind == "cpu" and processes > 1 and dev.memory_bytes is not None:
        # CPU processes share one machine's memory; GPUs have their own each
        dev = replace(dev, memory_bytes=dev.memory_bytes / processes,
                      description=f"{dev.description}, its memory shared by {processes} processes")
    precision = resolve_plan_precision(recipe.train.precision, dev)
    spec = spec_for(recipe)
    notes: list[str] = []
    data = data_stats(recipe, spec, Path(data_dir) if data_dir else recipe.run_dir / "data", processes)
    if data is None:
        notes.append(f"no prepared data in {data_dir or recipe.run_dir / 'data'}: every example assumed "
                     f"model.max_length ({recipe.model.max_length}) tokens long, an upper bound; run "
                     "`tuneforge prepare` first for the real lengths and the number of steps")
    label_names = None
    if data is not None:
        from tuneforge.data.prepare import load_prepared

        label_names = load_prepared(Path(data.source)).label_names
    facts = facts or model_facts(recipe, dev, precision, label_names)
    setup = build_setup(recipe, precision=precision, device=dev, processes=processes, shard=shard,
                        label_kind=facts.label_kind, num_labels=facts.num_labels, data=data,
                        arch_vocab=facts.arch.vocab)
    cal = calibration or CALIBRATION[dev.kind]
    peak = dev.peak_flops.get(precision)  # per process: the cache holds one process at its thread count
    if dev.name == "cuda" and not _local("cuda"):
        notes.append("no CUDA GPU on this machine: for the memory budget and the step time name one "
                     f"(--device {', '.join(GPUS)})")
    elif peak is None:
        notes.append(f"no {precision} matmul peak for {dev.name}: run `tuneforge bench peak --dtype {precision}` "
                     "for the step time")
    steps = None
    if data is not None:
        steps = schedule_steps(data.examples, recipe.train)[1]
    elif recipe.train.max_steps:
        steps = recipe.train.max_steps
    est = estimate(facts.arch, facts.params, setup, cal, facts.config, peak, steps)
    if os.environ.get("TUNEFORGE_PLAN_DEBUG"):
        notes.append(f"setup: {setup}")
    return Plan(recipe_name=recipe.name, device=dev, precision=precision, attention=facts.attention,
                arch=facts.arch, params=facts.params, setup=setup, estimate=est, calibration=cal,
                config_source=facts.config_source, data=data, peak_flops=peak, notes=notes, memory_budget=memory,
                facts=facts)
