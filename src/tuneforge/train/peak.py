"""The matmul peak of this machine: the denominator of MFU, measured once and cached.

``measure_peak`` times square matmuls of a few sizes in one dtype (after a warm-up; best of a few
timed runs; torch's current thread count, which it does not change) and keeps the fastest size. The
result is cached as JSON in ``peak.json`` beside the model cache (``$TUNEFORGE_CACHE``, else
``~/.cache/tuneforge``), keyed by a machine fingerprint and the dtype: CPU model name, torch thread
count and torch version on CPU; GPU name, torch version and (fp32) whether TF32 matmuls are allowed
on CUDA. Training reads the cached value only (``get_peak(..., measure_if_missing=False)``);
``tuneforge bench peak`` measures it.
"""

from __future__ import annotations

import json
import math
import os
import time
from datetime import datetime, timezone
from pathlib import Path

from tuneforge.errors import TuneforgeError

DTYPES = ("bf16", "fp16", "fp32")
DEFAULT_SIZES = {"cpu": (1024, 2048, 4096), "cuda": (4096, 8192)}


def peak_file() -> Path:
    """``$TUNEFORGE_CACHE/peak.json``, else ``~/.cache/tuneforge/peak.json``: the root the model cache
    (``models.resolve.default_cache_dir``) lives in."""
    from tuneforge.models.resolve import default_cache_dir

    models = default_cache_dir()  # $TUNEFORGE_CACHE itself, or ~/.cache/tuneforge/models
    return (models if os.environ.get("TUNEFORGE_CACHE") else models.parent) / "peak.json"


def cpu_name() -> str:
    from tuneforge.train.manifest import cpu_model  # the run manifest names the CPU the same way

    return cpu_model() or "unknown cpu"


def fingerprint(device: str, dtype: str) -> dict:
    """What the peak depends on, besides the dtype."""
    import torch

    if device == "cuda":
        fp = {"device": "cuda", "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
        if dtype == "fp32":
            fp["tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
        return fp
    return {"device": "cpu", "cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__}


def cache_key(device: str, dtype: str) -> str:
    fp = fingerprint(device, dtype)
    return "|".join(f"{k}={v}" for k, v in fp.items()) + f"|dtype={dtype}"


def _check(device: str, dtype: str) -> None:
    if dtype not in DTYPES:
        raise TuneforgeError(f"dtype {dtype!r}: allowed are {', '.join(DTYPES)}")
    if device not in DEFAULT_SIZES:
        raise TuneforgeError(f"device {device!r}: allowed are cpu, cuda")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise TuneforgeError("device cuda: no CUDA GPU is available here; use --device cpu")
    elif dtype == "fp16":
        raise TuneforgeError("fp16 is measured on CUDA only (training never uses fp16 on a CPU); use bf16 or fp32")


def _time_matmul(a, b, sync, run_seconds: float, repeats: int) -> float:
    """Best seconds per matmul: warm-up, calibration, then ``repeats`` runs of about ``run_seconds``."""
    import torch

    with torch.no_grad():
        torch.matmul(a, b)  # warm-up: kernels chosen, memory allocated
        sync()
        t0 = time.perf_counter()
        torch.matmul(a, b)
        sync()
        one = max(time.perf_counter() - t0, 1e-7)
        inner = max(1, math.ceil(run_seconds / one))
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(inner):
                torch.matmul(a, b)
            sync()
            best = min(best, (time.perf_counter() - t0) / inner)
    return best


def measure_peak(device: str = "cpu", dtype: str = "bf16", sizes=None, *, run_seconds: float = 0.1,
                 repeats: int = 3) -> dict:
    """Measure FLOP/s of square ``n x n @ n x n`` matmuls for each size; ``flops`` is the best."""
    import torch

    _check(device, dtype)
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    by_size = {}
    for n in sizes or DEFAULT_SIZES[device]:
        gen = torch.Generator(device="cpu").manual_seed(n)
        a = torch.randn(n, n, generator=gen).to(device=device, dtype=torch_dtype)
        b = torch.randn(n, n, generator=gen).to(device=device, dtype=torch_dtype)
        seconds = _time_matmul(a, b, sync, run_seconds, repeats)
        by_size[str(n)] = 2.0 * n ** 3 / seconds
        del a, b
    return {"device": device, "dtype": dtype, "flops": max(by_size.values()), "by_size": by_size,
            "fingerprint": fingerprint(device, dtype),
            "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def load_cache(path: Path | None = None) -> dict:
    path = path or peak_file()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def cached_entry(device: str, dtype: str) -> dict | None:
    return load_cache().get(cache_key(device, dtype))


def store(entry: dict) -> Path:
    """Add ``entry`` (from ``measure_peak``) to the cache file; returns its path."""
    path = peak_file()
    data = load_cache(path)
    data[cache_key(entry["device"], entry["dtype"])] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    return path


def get_peak(device: str, dtype: str, measure_if_missing: bool = False) -> float | None:
    """Peak matmul FLOP/s of this machine for ``dtype`` (bf16/fp16/fp32): cached, or measured and
    cached when ``measure_if_missing``; None when not cached and not measured."""
    if device not in DEFAULT_SIZES:  # mps, xpu, ...: not measured
        return None
    entry = cached_entry(device, dtype)
    if entry is None and measure_if_missing:
        entry = measure_peak(device, dtype)
        store(entry)
    return float(entry["flops"]) if entry else None
