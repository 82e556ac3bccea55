"""``tuneforge export --format onnx``: the merged export as ONNX (+ int8), with a parity report.

The ONNX graph is made from the plain ``transformers`` model in the export folder (the one users load,
not the training-time PEFT wrapper) and written to ``<export>/onnx/`` with the tokenizer and
``config.json``, so that folder is usable on its own. It is then checked the way ``verify_export``
checks the safetensors: onnxruntime and the PyTorch model (fp32) run the run's whole validation set
in the same padded batches, and their outputs are compared. ``parity.json`` / ``parity.md`` always
get written, also when a threshold is missed, so a failed export can be inspected.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path

from tuneforge.console import progress_bar, status
from tuneforge.errors import TuneforgeError

#: Label kinds whose model returns one ``logits`` tensor (per example or per token), with the task
#: each one is; generative, span and masked-LM models have other outputs (or a decoding loop).
ONNX_LABEL_KINDS = {"class": "classification", "multi": "classification (multi_label)", "value": "regression",
                    "tokens": "token_classification"}
#: Methods whose export is a plain transformers model. A prefix, a soft prompt and bottleneck adapters
#: are exported as base model + method files, which no plain graph holds.
ONNX_METHODS = ("full", "head_only", "lora", "dora", "ia3")
#: One protobuf file holds at most 2 GiB; bigger models keep their weights in ``model.onnx.data``.
_SINGLE_FILE_BYTES = 1_800_000_000
#: Regression has no argmax: two outputs "agree" when they differ by at most this fraction of the
#: validation labels' range (0.01 = 1% of the scale, far below what a user would read as different).
REGRESSION_AGREEMENT_FRACTION = 0.01
AGREEMENT_RULES = {
    "class": "same argmax class per example",
    "multi": "same predicted label set per example (sigmoid >= 0.5 per label)",
    "value": f"|difference| <= {REGRESSION_AGREEMENT_FRACTION:g} x the validation labels' range, per example",
    "tokens": "same argmax tag per real (unpadded) token",
}


def check_onnx_supported(spec, method: str) -> None:
    """Refuse a task or method the ONNX export cannot do, before any work starts."""
    if spec.label_kind not in ONNX_LABEL_KINDS:
        raise TuneforgeError(f"format onnx: task {spec.name} is not supported; ONNX export supports the tasks whose "
                             f"model outputs logits: {', '.join(ONNX_LABEL_KINDS.values())}")
    if method not in ONNX_METHODS:
        raise TuneforgeError(f"format onnx: method {method} is exported as a base model plus method files, not a "
                             f"plain transformers model; ONNX export supports methods: {', '.join(ONNX_METHODS)}")


def input_names(model, tokenizer) -> list[str]:
    """The graph's inputs: ``token_type_ids`` only when the model takes it and the tokenizer produces it,
    so the tokenizer's output feeds the ONNX session as is (onnxruntime refuses missing inputs)."""
    import inspect

    takes = "token_type_ids" in inspect.signature(model.forward).parameters
    return ["input_ids", "attention_mask"] + (["token_type_ids"] if takes and "token_type_ids" in
                                              tokenizer.model_input_names else [])


def _logits_only(model, names: list[str]):
    """A module with the graph's positional inputs and one output, ``logits``."""
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            return self.model(**dict(zip(names, inputs))).logits

    return LogitsOnly().eval()


def export_graph(model, names: list[str], path: Path) -> dict:
    """Write ``model`` (fp32, eval) to ``path`` with dynamic batch and sequence axes.

    The default (dynamo, ``torch.export``) exporter is used: the TorchScript one (``dynamo=False``)
    traces transformers' attention-mask code into constants and gave logits off by 0.09-0.16 on
    padded batches of MiniLM (torch 2.13, transformers 5.23), while dynamo matched to 1e-6.
    """
    import torch

    sample = torch.ones(2, 16, dtype=torch.long)  # batch 2, length 16: neither specialises to a constant
    mask = sample.clone()
    mask[1, 12:] = 0  # a padded row, so the traced graph is the general (masked) path
    args = tuple({"input_ids": sample, "attention_mask": mask}.get(n, torch.zeros_like(sample)) for n in names)
    batch, length = torch.export.Dim("batch"), torch.export.Dim("sequence")
    external = sum(p.numel() * p.element_size() for p in model.parameters()) > _SINGLE_FILE_BYTES
    try:
        with _quiet():
            torch.onnx.export(_logits_only(model, names), args, str(path), input_names=names,
                              output_names=["logits"], external_data=external, dynamo=True, verbose=False,
                              dynamic_shapes=(tuple({0: batch, 1: length} for _ in names),))  # one *inputs tuple
    except Exception as exc:  # an architecture torch.export cannot trace: say which, keep the cause chained
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TuneforgeError(f"format onnx: torch.onnx.export could not export {type(model).__name__}: {first}") \
            from exc
    return {"exporter": f"torch.onnx.export (dynamo), torch {torch.__version__}", "opset": _opset(path),
            "inputs": names, "output": "logits", "external_data": external}


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's progress prints and internal deprecation warnings (torch internals, not
    the user's model); the parity check afterwards is what tells whether the graph is right."""
    import io
    import logging
    import warnings

    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def quantize_int8(src: Path, dst: Path, external: bool) -> None:
    """Dynamic quantization: int8 weights (QInt8), activations quantized per batch at run time; no
    calibration data needed, which suits encoders on CPU."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    # quantize_dynamic logs a hint to run its pre-processing (shape inference) on the root logger; the
    # parity check measures the quantized model as it is, so the hint is noise here.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, use_external_data_format=external)
    finally:
        root.setLevel(level)


def _ort_forward(path: Path, threads: int):
    """``inputs -> logits`` through an onnxruntime CPU session with as many threads as PyTorch uses."""
    import numpy as np
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def forward(inputs: dict):
        feed = {name: tensor.numpy().astype(np.int64, copy=False) for name, tensor in inputs.items()}
        return torch.from_numpy(session.run(["logits"], feed)[0])

    return forward


def _torch_forward(model):
    def forward(inputs: dict):
        return model(**inputs).logits

    return forward


def batched_outputs(forward, encoded, names: list[str], *, batch_size: int, pad_id: int, advance=None):
    """Per-example fp32 outputs in input order (padding removed, as ``predict`` returns them) and the
    seconds spent in ``forward``: the same length-sorted, padded batches for every model compared."""
    import torch

    from tuneforge.data.batching import collate, sorted_batches
    from tuneforge.evaluate.predict import per_example

    rows, seconds = [], 0.0
    with torch.inference_mode():
        for idx in sorted_batches(encoded.lengths, batch_size):
            batch = collate(encoded, idx, pad_id)
            inputs = {n: batch[n] if n in batch else torch.zeros_like(batch["input_ids"]) for n in names}
            start = time.perf_counter()
            logits = forward(inputs)
            seconds += time.perf_counter() - start
            rows.extend(zip(idx, per_example(_Out(logits), encoded, idx)))
            if advance is not None:
                advance(len(idx))
    rows.sort(key=lambda r: r[0])
    return [r[1] for r in rows], seconds


class _Out:
    """What ``per_example`` reads from a transformers output."""

    def __init__(self, logits):
        self.logits = logits


def compare(reference: list, outputs: list, encoded) -> dict:
    """Max |logit difference| (real tokens only for token tasks: outputs are trimmed) and agreement
    by the label kind's rule (``AGREEMENT_RULES``)."""
    import torch

    if not reference:
        return {"max_abs_logit_diff": 0.0, "agreement": 1.0}
    ref = torch.cat([r.reshape(-1, r.size(-1) if r.dim() else 1) for r in reference]).float()
    new = torch.cat([o.reshape(-1, o.size(-1) if o.dim() else 1) for o in outputs]).float()
    kind = encoded.label_kind
    if kind == "multi":
        same = ((new >= 0) == (ref >= 0)).all(dim=-1)
    elif kind == "value":
        labels = torch.tensor(encoded.labels, dtype=torch.float32)
        spread = float(labels.max() - labels.min()) or 1.0
        same = ((new - ref).abs() <= REGRESSION_AGREEMENT_FRACTION * spread).all(dim=-1)
    else:
        same = new.argmax(-1) == ref.argmax(-1)
    return {"max_abs_logit_diff": (new - ref).abs().max().item(), "agreement": same.float().mean().item()}


def task_score(spec, records: list[dict], encoded, label_names, metric: str):
    """``outputs -> the run's metric_for_best`` against the gold labels, computed by the task's own metrics."""
    from tuneforge.evaluate.predict import Predictions

    def score(outputs: list) -> float:
        return float(spec.metrics(Predictions(outputs=outputs, loss=float("nan")), records, encoded,
                                  label_names)[metric])

    return score


def _file_bytes(path: Path) -> int:
    data = path.with_name(path.name + ".data")  # external weights of a > 2 GiB model
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def export_with_parity(export_dir: Path, cfg, *, model, tokenizer, encoded, score, metric: str,
                       batch_size: int) -> dict:
    """Export ``model`` (the reloaded plain export) to ``<export_dir>/onnx``, quantize if asked, measure
    parity on ``encoded`` and write ``parity.json`` / ``parity.md``; returns the report (not raising:
    see ``raise_if_failed``)."""
    import torch

    onnx_dir = export_dir / "onnx"
    graph, files = write_onnx_folder(export_dir, onnx_dir, model, tokenizer, int8=cfg.quantize == "int8")
    threads = torch.get_num_threads()
    run = dict(encoded=encoded, names=graph["inputs"], batch_size=batch_size, pad_id=tokenizer.pad_token_id)
    reference, torch_s = _measured("PyTorch fp32", _torch_forward(model), **run)
    models = {"torch_fp32": {"metric_value": score(reference), "seconds": torch_s}}
    for key, filename in (("onnx_fp32", "model.onnx"), ("onnx_int8", "model.int8.onnx")):
        if filename in files:
            outputs, seconds = _measured(key.replace("_", " "), _ort_forward(onnx_dir / filename, threads), **run)
            models[key] = {**compare(reference, outputs, encoded), "metric_value": score(outputs), "seconds": seconds}
    if "onnx_int8" in models:  # against PyTorch fp32: the model a user would otherwise run
        models["onnx_int8"]["metric_change_points"] = 100 * (models["onnx_int8"]["metric_value"]
                                                             - models["torch_fp32"]["metric_value"])
    report = {"examples": len(encoded), "label_kind": encoded.label_kind, **graph, "files_bytes": files,
              "batch_size": batch_size, "threads": threads, "metric": metric,
              "agreement_rule": AGREEMENT_RULES[encoded.label_kind], **models,
              "thresholds": {"max_logit_diff": cfg.max_logit_diff, "min_agreement": cfg.min_agreement,
                             "int8_min_agreement": cfg.int8_min_agreement}}
    report["failures"] = parity_failures(report)
    report["passed"] = not report["failures"]
    write_parity(onnx_dir, report)
    return report


def write_onnx_folder(export_dir: Path, onnx_dir: Path, model, tokenizer, *, int8: bool) -> tuple[dict, dict]:
    """``model.onnx`` (+ ``model.int8.onnx``), the tokenizer and ``config.json`` (labels) in one folder a
    user can ship alone; returns what the graph is and each model file's size in bytes."""
    onnx_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(onnx_dir)
    shutil.copy(export_dir / "config.json", onnx_dir / "config.json")
    with status(f"onnx: exporting {type(model).__name__} with torch.onnx (dynamo)"):
        graph = export_graph(model, input_names(model, tokenizer), onnx_dir / "model.onnx")
    files = {"model.safetensors": _file_bytes(export_dir / "model.safetensors"),
             "model.onnx": _file_bytes(onnx_dir / "model.onnx")}
    if int8:
        with status("onnx: quantizing to int8 (onnxruntime quantize_dynamic, QInt8 weights)"):
            quantize_int8(onnx_dir / "model.onnx", onnx_dir / "model.int8.onnx", graph["external_data"])
        files["model.int8.onnx"] = _file_bytes(onnx_dir / "model.int8.onnx")
    return graph, files


def _measured(what: str, forward, *, encoded, **run):
    with progress_bar(f"parity: {what}", len(encoded), unit="validation examples", transient=True) as advance:
        return batched_outputs(forward, encoded, advance=advance, **run)


def parity_failures(report: dict) -> list[str]:
    """Each missed threshold as "<what> <measured> ... <threshold>"."""
    t, out = report["thresholds"], []
    fp32, int8 = report["onnx_fp32"], report.get("onnx_int8")
    if fp32["max_abs_logit_diff"] > t["max_logit_diff"]:
        out.append(f"onnx fp32 max |logit difference| {fp32['max_abs_logit_diff']:.3g} exceeds max_logit_diff "
                   f"{t['max_logit_diff']:g}")
    if fp32["agreement"] < t["min_agreement"]:
        out.append(f"onnx fp32 agreement {fp32['agreement']:.4f} is below min_agreement {t['min_agreement']:g}")
    if int8 is not None and int8["agreement"] < t["int8_min_agreement"]:
        out.append(f"onnx int8 agreement {int8['agreement']:.4f} is below int8_min_agreement "
                   f"{t['int8_min_agreement']:g}")
    return out


def raise_if_failed(report: dict, onnx_dir: Path) -> None:
    if report["failures"]:
        raise TuneforgeError(f"ONNX parity check failed on {report['examples']} validation examples: "
                             f"{'; '.join(report['failures'])}. Report: {onnx_dir / 'parity.json'}")


def write_parity(onnx_dir: Path, report: dict) -> None:
    (onnx_dir / "parity.json").write_text(json.dumps(report, indent=2) + "\n")
    (onnx_dir / "parity.md").write_text(parity_markdown(report), encoding="utf-8")


def parity_markdown(r: dict) -> str:
    """The report as a table: one column per model, what was measured and the bound it had to meet."""
    t, cols = r["thresholds"], [k for k in ("torch_fp32", "onnx_fp32", "onnx_int8") if k in r]
    bounds = {"onnx_fp32": (f" (≤ {t['max_logit_diff']:g})", f" (≥ {100 * t['min_agreement']:.2f}%)"),
              "onnx_int8": (" (reported)", f" (≥ {100 * t['int8_min_agreement']:.2f}%)")}
    files = {"torch_fp32": "model.safetensors", "onnx_fp32": "model.onnx", "onnx_int8": "model.int8.onnx"}
    titles = {"torch_fp32": "PyTorch fp32", "onnx_fp32": "ONNX fp32", "onnx_int8": "ONNX int8"}

    def cells(fn):
        return " | ".join(fn(k, r[k]) for k in cols)

    change = r.get("onnx_int8", {}).get("metric_change_points")
    rows = [
        "| | " + " | ".join(titles[k] for k in cols) + " |", "|---|" + "---|" * len(cols),
        "| file | " + cells(lambda k, m: f"`{files[k]}` {r['files_bytes'][files[k]] / 1e6:.1f} MB") + " |",
        "| max abs logit diff vs PyTorch | " + cells(
            lambda k, m: "-" if k == "torch_fp32" else f"{m['max_abs_logit_diff']:.2e}{bounds[k][0]}") + " |",
        "| agreement with PyTorch | " + cells(
            lambda k, m: "-" if k == "torch_fp32" else f"{100 * m['agreement']:.2f}%{bounds[k][1]}") + " |",
        f"| {r['metric']} (gold labels) | " + cells(lambda k, m: f"{m['metric_value']:.4f}" + (
            f" ({change:+.2f} points)" if k == "onnx_int8" else "")) + " |",
        f"| seconds for the {r['examples']} examples | " + cells(lambda k, m: f"{m['seconds']:.3g}") + " |",
        "| speed vs PyTorch | " + cells(lambda k, m: f"{r['torch_fp32']['seconds'] / max(m['seconds'], 1e-9):.2f}x")
        + " |",
    ]
    verdict = "passed" if r["passed"] else "FAILED: " + "; ".join(r["failures"])
    return (f"# ONNX parity: {verdict}\n\n"
            f"- {r['examples']} validation examples, batch size {r['batch_size']} (length-sorted, padded with the "
            f"attention mask), {r['threads']} CPU thread(s) for PyTorch and onnxruntime (CPUExecutionProvider)\n"
            f"- exporter: {r['exporter']}; opset {r['opset']}; inputs {', '.join(r['inputs'])}; output logits\n"
            f"- agreement: {r['agreement_rule']}\n\n" + "\n".join(rows) + "\n")
