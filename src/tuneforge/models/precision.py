"""Choosing and applying the autocast dtype.

We autocast explicitly (``autocast(precision, device)``) instead of letting ``Accelerator.prepare``
patch ``model.forward``: evaluation, the best-checkpoint pick and export verification must be able
to run the very same module in fp32, and a patched forward cannot be switched off per call.
"""

from __future__ import annotations

import contextlib

from tuneforge.errors import TuneforgeError


def cpu_has_native_bf16() -> bool:
    """True on CPUs with AVX512-BF16 or AMX, where bf16 matmuls are about 2x faster than fp32."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(requested: str, device_type: str) -> str:
    """'auto' -> the fastest safe dtype for the device; explicit choices are checked against it."""
    import torch

    if device_type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if requested == "auto":
            return "bf16" if bf16_ok else "fp16"
        if requested == "bf16" and not bf16_ok:
            raise TuneforgeError("train.precision: bf16 is not supported by this GPU; use fp16 or fp32")
        return requested
    if requested == "fp16":
        raise TuneforgeError(
            f"train.precision: fp16 autocast needs a CUDA GPU (this run is on {device_type}); use bf16, fp32 or auto"
        )
    if requested == "auto":
        return "bf16" if device_type == "cpu" and cpu_has_native_bf16() else "fp32"
    return requested


def autocast(precision: str, device_type: str):
    """Context manager: autocast to bf16/fp16, or nothing for fp32."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device_type, dtype=dtype)
