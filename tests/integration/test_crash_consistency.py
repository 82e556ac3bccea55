"""Crash consistency, tested the way databases are: SIGKILL a run at random moments, resume, compare.

A tiny recipe (random 2-layer BERT, toy data, 12 steps, an evaluation and a checkpoint every 2 steps,
export with verification) runs once uninterrupted. Then one chain of attempts: ``tuneforge run``,
SIGKILLed at a seeded random moment, then ``tuneforge run --resume`` killed again, and so on; after
the last kill a real ``tuneforge run --resume`` subprocess finishes the run. (When an attempt finishes
before its kill moment, a new chain starts with ``--overwrite``.) Every finished run must equal the
uninterrupted one exactly: train and eval losses step by step, eval.json, the best step, the exported
weights and the export verification. After each kill, what is on disk must already be consistent:
a data folder is complete, ``last`` is a complete state, ``best`` pairs weights with their step,
an export is complete.

``TUNEFORGE_CRASH_TEST_SLEEP`` widens every atomic write's window (see ``tuneforge.atomic``), and
``TUNEFORGE_CRASH_TEST_LOG`` records the windows, so the summary (``pytest -s``) can say how many kills
landed inside a write.

Speed (2 cores, < 120 s): starting Python and importing torch + transformers costs about 4 s per
process, more than a tiny run trains. So the killed attempts are forked from a small server process
that has imported them once (``_ForkServer``); each attempt is still a separate process in its own
process group, running the real CLI (``tuneforge.cli.app``) on the same argv, killed with SIGKILL.
The uninterrupted reference and the final resumes are plain ``tuneforge`` subprocesses.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only (fork, killpg)")]

SLEEP = "0.1"  # seconds per atomic write window: some kills land inside writes, the test stays fast
KILLS = 10
PREPARE_KILLS = 5
SEED = 20240614

RECIPE = """\
name: crash
seed: 7
output_dir: {runs}
model: {{name: {model}, max_length: 32}}
data:
  train_file: {train}
  validation_file: {dev}
  text_column: sentence
  label_column: label
  label_names: [negative, positive]
  dedup: {{exact: false, near: false}}
  decontaminate: {{enabled: false}}
method: full
train: {{epochs: 2, batch_size: 16, learning_rate: 3.0e-3, eval_every_steps: 2, log_every_steps: 1,
        precision: fp32, warmup_ratio: 0.0, scheduler: constant, metric_for_best: loss}}
export: {{enabled: true}}
"""

# The server imports what a run imports, and never runs torch itself: forking a process whose
# OpenMP/intra-op thread pools were started is unsafe, forking one that only imported torch is fine.
_SERVER = r"""
import json, os, sys, traceback
import torch, transformers, accelerate, datasets, safetensors.torch  # noqa: F401  (preloaded)
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: F401
import tuneforge.cli, tuneforge.train.run, tuneforge.train.loop, tuneforge.data.pipeline  # noqa: F401
import tuneforge.export.merge, tuneforge.evaluate.report, tuneforge.evaluate.plots  # noqa: F401
print("ready", flush=True)
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)
        fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1); os.dup2(fd, 2)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.environ.update(req["env"])
        os.chdir(req["cwd"])
        code = 0
        try:
            tuneforge.cli.app(req["argv"], prog_name="tuneforge")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass  # the child did it first
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"exit": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class _ForkServer:
    def __init__(self, env: dict):
        self.proc = subprocess.Popen([sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env, bufsize=0)
        assert self._line(timeout=120) == "ready"

    def _line(self, timeout: float | None) -> str | None:
        """One line from the server, or None if none came within ``timeout`` seconds."""
        out = b""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not out.endswith(b"\n"):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not out and not select.select([self.proc.stdout], [], [], left)[0]:
                return None
            byte = self.proc.stdout.read(1)
            assert byte, "the fork server died"
            out += byte
        return out.decode().strip()

    def run(self, argv: list[str], *, env: dict, log: Path, cwd: Path, kill_after: float | None) -> dict:
        """Run the CLI in a forked process; SIGKILL its process group after ``kill_after`` seconds
        unless it finished first. Returns pid, exit code, whether it was killed, and the wall time."""
        request = {"argv": argv, "env": env, "log": str(log), "cwd": str(cwd)}
        start = time.monotonic()
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        pid = json.loads(self._line(timeout=60))["pid"]
        line = self._line(timeout=kill_after if kill_after is not None else 300)
        killed = line is None
        if killed:
            os.killpg(pid, signal.SIGKILL)
            line = self._line(timeout=60)
        return {"pid": pid, "exit": json.loads(line)["exit"], "killed": killed, "seconds": time.monotonic() - start}

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _cli(argv: list[str], *, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    """A plain ``tuneforge`` subprocess (the console entry point, as a user runs it)."""
    proc = subprocess.run([sys.executable, "-m", "tuneforge.cli", *argv], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _outcome(run_dir: Path) -> dict:
    """What must not depend on how often the run was killed."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    verification = json.loads((run_dir / "export" / "verification.json").read_text())
    return {
        "losses": [(r["kind"], r["step"], r["loss"]) for r in records],
        "evals": [r for r in records if r["kind"] == "eval"],
        "eval.json": json.loads((run_dir / "eval" / "eval.json").read_text()),
        "best": json.loads((run_dir / "checkpoints" / "best" / "best.json").read_text()),
        "best_weights": _sha(run_dir / "checkpoints" / "best" / "trainable.safetensors"),
        "export_weights": _sha(run_dir / "export" / "model.safetensors"),
        "verification": {k: verification[k] for k in ("prediction_agreement", "max_abs_logit_diff", "passed")},
        "result": {k: json.loads((run_dir / "result.json").read_text())[k] for k in ("best_step", "global_step")},
    }


def _open_window(log: Path, pid: int) -> str | None:
    """The write window the process was inside when it was killed (its last 'begin' without an 'end')."""
    if not log.exists():
        return None
    state = None
    for line in log.read_text().splitlines():
        who, what, where = line.split(" ", 2)
        if int(who) == pid:
            state = where if what == "begin" else None
    return state


def _leftovers(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
                  if ".tmp" in p.name or p.name.endswith(".old"))


def _check_consistent(run_dir: Path, reference: Path) -> None:
    """What a kill may leave: old or new versions, never a torn one."""
    from tuneforge.train.checkpoint import LAST, MARKER, STATE_FILE

    data = run_dir / "data"
    if data.exists():  # swapped in whole: every split complete (each prepare writes the same rows)
        for name in ("train.jsonl", "validation.jsonl", "test.jsonl", "rejected.jsonl"):
            assert _sha(data / name) == _sha(reference / "data" / name), name
    last = run_dir / "checkpoints" / LAST
    if last.exists():
        assert (last / MARKER).is_file() and (last / STATE_FILE).is_file()
        assert json.loads((last / MARKER).read_text())["step"] == json.loads((last / STATE_FILE).read_text())[
            "global_step"]
    best = run_dir / "checkpoints" / "best"
    if best.exists():
        assert (best / "best.json").is_file() and (best / "trainable.safetensors").is_file()
        from safetensors.torch import load_file

        load_file(str(best / "trainable.safetensors"))  # not truncated
    export = run_dir / "export"
    if export.exists():
        assert {"model.safetensors", "config.json", "verification.json", "README.md"} <= {p.name for p in
                                                                                        export.iterdir()}


def _check_resume_message(output: str, fresh: bool) -> None:
    if "training:" not in output:
        return  # killed before it got that far
    if fresh:
        assert "no complete checkpoint yet; starting the run from scratch" in output, output
    else:
        assert "resumed from step" in output, output


def _base_env() -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}
    for name in ("TUNEFORGE_CRASH_TEST_SLEEP", "TUNEFORGE_CRASH_TEST_LOG"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def fork_server():
    server = _ForkServer(_base_env())
    yield server
    server.close()


@pytest.fixture
def crash_env(tmp_path, tiny_model_dir, toy_data):
    train, dev = toy_data
    runs = tmp_path / "runs"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(runs=runs, model=tiny_model_dir, train=train, dev=dev))
    # a token cache of the test's own: kills land in its writes too, and the user's cache stays out of it
    return recipe, runs, {**_base_env(), "TUNEFORGE_CACHE": str(tmp_path / "cache")}


def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_result(crash_env, fork_server, tmp_path):
    from tuneforge.train.checkpoint import has_checkpoint

    recipe, runs, env = crash_env
    started = time.monotonic()
    _cli(["run", str(recipe), "name=reference"], env=env, cwd=tmp_path)
    reference = runs / "reference"
    expected = _outcome(reference)
    assert expected["verification"]["passed"] and expected["result"]["global_step"] == 12

    server = fork_server
    slow_env = {"TUNEFORGE_CACHE": env["TUNEFORGE_CACHE"], "TUNEFORGE_CRASH_TEST_SLEEP": SLEEP}
    # the wall time of one uninterrupted forked run, with the widened windows: the kill moments' range
    log = tmp_path / "timing.log"
    timing = server.run(["run", str(recipe), "name=timing"], env=slow_env, log=log, cwd=tmp_path, kill_after=None)
    assert timing["exit"] == 0, log.read_text()
    assert _outcome(runs / "timing") == expected
    wall = timing["seconds"]

    rng = random.Random(SEED)
    run_dir = runs / "crash"
    summary = {"kills": 0, "inside_write": [], "leftovers": 0, "no_checkpoint_yet": 0, "finished_early": 0,
               "chains_compared": 0}
    resume, fresh = False, None  # fresh: whether the last kill left no complete checkpoint
    for i in range(3 * KILLS):
        if summary["kills"] == KILLS:
            break
        delay = rng.uniform(0.0, wall)
        log = tmp_path / f"attempt{i}.log"
        windows = tmp_path / f"attempt{i}.windows"
        argv = ["run", str(recipe), "--resume" if resume else "--overwrite"]
        attempt = server.run(argv, env={**slow_env, "TUNEFORGE_CRASH_TEST_LOG": str(windows)}, log=log,
                             cwd=tmp_path, kill_after=delay)
        output = log.read_text()
        if resume:  # --resume says which it does: continue a complete checkpoint, or start over
            _check_resume_message(output, fresh)
        if not attempt["killed"]:  # finished before its kill moment: compare, then start a new chain
            assert attempt["exit"] == 0, output
            assert _outcome(run_dir) == expected
            summary["finished_early"] += 1
            summary["chains_compared"] += 1
            resume = False
            continue
        summary["kills"] += 1
        window = _open_window(windows, attempt["pid"])
        if window:
            kind, path = window.split(" ", 1)
            summary["inside_write"].append(f"{kind} {Path(path).parent.name}/{Path(path).name}")
        summary["leftovers"] += bool(_leftovers(run_dir))
        _check_consistent(run_dir, reference)
        fresh = not has_checkpoint(run_dir / "checkpoints")
        summary["no_checkpoint_yet"] += fresh
        resume = True
    # the last chain is finished by a plain `tuneforge run --resume` subprocess
    done = _cli(["run", str(recipe), "--resume"], env={**env, **slow_env}, cwd=tmp_path)
    _check_resume_message(done.stdout + done.stderr, fresh)
    assert _outcome(run_dir) == expected
    assert _leftovers(run_dir) == []
    summary["chains_compared"] += 1
    seconds = time.monotonic() - started
    inside = summary["inside_write"]
    print(f"\ncrash consistency: {summary['kills']} SIGKILLs at seeded random moments over {wall:.1f} s runs "
          f"(seed {SEED}, TUNEFORGE_CRASH_TEST_SLEEP={SLEEP}); {len(inside)} landed inside an atomic write "
          f"({', '.join(inside) or 'none'}); {summary['leftovers']} left temporaries behind; "
          f"{summary['no_checkpoint_yet']} before any complete checkpoint (--resume started over); "
          f"{summary['finished_early']} attempts finished before their kill; "
          f"{summary['chains_compared']} finished runs, all identical to the uninterrupted one; {seconds:.0f} s")
    assert summary["kills"] == KILLS


def test_prepare_killed_midway_is_redone_never_read_half_written(crash_env, fork_server, tmp_path):
    """``tuneforge prepare`` SIGKILLed at random moments: the data folder is always the previous complete
    one or none, and the next run prepares again and trains on exactly the uninterrupted rows."""
    recipe, runs, env = crash_env
    # 4,000 training rows: the data stage takes long enough for kills to land inside it
    rng = random.Random(1)
    words = ["good", "bad", "fine", "dull", "bright", "slow", "warm", "flat", "sharp", "odd"]
    big = tmp_path / "big.tsv"
    big.write_text("sentence\tlabel\n" + "".join(
        f"{' '.join(rng.choice(words) for _ in range(rng.randint(3, 12)))}\t{i % 2}\n" for i in range(4000)))
    # `prepare` has one atomic write (the folder swap): a longer window, so that some kills land in it
    slow_env = {"TUNEFORGE_CACHE": env["TUNEFORGE_CACHE"], "TUNEFORGE_CRASH_TEST_SLEEP": "0.4"}
    argv = ["prepare", str(recipe), f"data.train_file={big}"]
    log = tmp_path / "prepare.log"
    first = fork_server.run([*argv, "name=uninterrupted"], env=slow_env, log=log, cwd=tmp_path, kill_after=None)
    assert first["exit"] == 0, log.read_text()
    expected = {name: _sha(runs / "uninterrupted" / "data" / name)
                for name in ("train.jsonl", "validation.jsonl", "test.jsonl", "rejected.jsonl")}

    kills = inside = 0
    moments = random.Random(SEED)
    for i, delay in enumerate(sorted(moments.uniform(0.0, first["seconds"]) for _ in range(PREPARE_KILLS))):
        windows = tmp_path / f"prepare{i}.windows"
        attempt = fork_server.run([*argv, "name=killed"], env={**slow_env, "TUNEFORGE_CRASH_TEST_LOG": str(windows)},
                                  log=log, cwd=tmp_path, kill_after=delay)
        kills += attempt["killed"]
        inside += bool(_open_window(windows, attempt["pid"]))
        data = runs / "killed" / "data"
        if data.exists():  # complete, from this attempt or an earlier one
            assert {name: _sha(data / name) for name in expected} == expected
        assert not (data / ".kept.jsonl").exists()  # the pipeline's scratch file never shows up in place
    # the next run (--resume: no checkpoint, so from scratch) prepares again and trains on the same rows
    log = tmp_path / "train.log"
    done = fork_server.run(["train", str(recipe), f"data.train_file={big}", "name=killed", "train.max_steps=1",
                            "--resume"], env={**slow_env, "TUNEFORGE_CRASH_TEST_SLEEP": SLEEP}, log=log,
                           cwd=tmp_path, kill_after=None)
    assert done["exit"] == 0, log.read_text()
    assert "no complete checkpoint yet; starting the run from scratch" in log.read_text()
    from tuneforge.data.prepare import load_prepared

    data = runs / "killed" / "data"
    assert {name: _sha(data / name) for name in expected} == expected
    rows = (runs / "uninterrupted" / "data" / "train.jsonl").read_text().splitlines()
    assert load_prepared(data).records["train"] == [json.loads(line) for line in rows]
    print(f"\nprepare ({first['seconds']:.1f} s): {kills} of {PREPARE_KILLS} SIGKILLs landed before the end ({inside} inside an atomic write); "
          "the next run prepared again, rows identical")
