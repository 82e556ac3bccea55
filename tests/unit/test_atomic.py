"""tuneforge.atomic and the checkpoint scheme built on it: a kill at any step leaves a complete version.

A kill is simulated faithfully: the write runs in a forked child that ``os._exit``s (no cleanup, no
``finally``) at its N-th crash window, i.e. after the new version is complete and before it is
renamed into place, exactly where ``TUNEFORGE_CRASH_TEST_SLEEP`` widens the window for the
end-to-end test.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import pytest

from tuneforge import atomic
from tuneforge.errors import TuneforgeError
from tuneforge.train import checkpoint as ckpt

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="simulates kills with fork")


def killed_at(window: int, fn, monkeypatch) -> bool:
    """Run ``fn`` in a forked child killed at its ``window``-th crash window (1-based); True if the kill
    happened (False: ``fn`` has fewer windows and finished)."""
    seen = []

    @contextlib.contextmanager
    def die(what):
        seen.append(what)
        if len(seen) == window:
            os._exit(9)  # like SIGKILL: no exception handler, no cleanup
        yield

    pid = os.fork()
    if pid == 0:
        try:
            monkeypatch.setattr(atomic, "crash_window", die)
            fn()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 9


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ----------------------------------------------------------------------------------------------- files


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "a.json"
    atomic.atomic_write_json(path, {"x": 1})
    atomic.atomic_write_json(path, {"x": 2})
    assert json.loads(path.read_text()) == {"x": 2}
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]


def test_error_while_writing_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.txt"
    atomic.atomic_write_text(path, "old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


@needs_fork
def test_kill_before_rename_keeps_old_content_and_next_write_cleans_up(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    atomic.atomic_write_text(path, "old")
    assert killed_at(1, lambda: atomic.atomic_write_text(path, "new" * 1000), monkeypatch)
    assert path.read_text() == "old"
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith("a.txt.tmp-")]
    assert len(leftovers) == 1 and leftovers[0].read_text() == "new" * 1000  # complete, but never renamed
    atomic.atomic_write_text(path, "newer")  # the writer is dead: its temporary is removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"] and path.read_text() == "newer"


def test_temporaries_of_live_processes_are_kept(tmp_path):
    mine = tmp_path / f"a.txt.tmp-{os.getppid()}"  # the parent runs: perhaps it is writing
    dead = tmp_path / f"a.txt.tmp-{dead_pid()}"
    mine.write_text("x")
    dead.write_text("x")
    atomic.atomic_write_text(tmp_path / "a.txt", "y")
    assert mine.exists() and not dead.exists()


def test_crash_window_sleeps_and_logs_only_when_asked(tmp_path, monkeypatch):
    log = tmp_path / "windows.log"
    monkeypatch.setenv(atomic.LOG_ENV, str(log))
    atomic.atomic_write_text(tmp_path / "a.txt", "1")
    assert not log.exists()  # no sleep variable: no hook at all
    monkeypatch.setenv(atomic.SLEEP_ENV, "0.01")
    atomic.atomic_write_text(tmp_path / "a.txt", "2")
    lines = [line.split(" ", 2)[1:] for line in log.read_text().splitlines()]
    assert lines == [["begin", f"file {tmp_path / 'a.txt'}"], ["end", f"file {tmp_path / 'a.txt'}"]]


# ----------------------------------------------------------------------------------------- directories


def fill(folder, version: str, files: int = 3) -> None:
    for i in range(files):
        (folder / f"f{i}").write_text(version)


def versions(folder) -> set[str]:
    return {p.read_text() for p in folder.iterdir()}


def test_staged_dir_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "export"
    with atomic.staged_dir(target) as stage:
        fill(stage, "v1")
    with pytest.raises(RuntimeError):
        with atomic.staged_dir(target) as stage:
            fill(stage, "v2", files=1)
            raise RuntimeError("bug")
    assert versions(target) == {"v1"} and len(list(target.iterdir())) == 3
    with pytest.raises(ValueError):  # an error whose report is in the folder: swapped in, raised again
        with atomic.staged_dir(target, keep_on=(ValueError,)) as stage:
            fill(stage, "report", files=1)
            raise ValueError("verification failed")
    assert versions(target) == {"report"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


@needs_fork
@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_directory_swap_killed_leaves_exactly_one_complete_version(tmp_path, monkeypatch, exchange):
    monkeypatch.setattr(atomic, "USE_EXCHANGE", exchange)
    target = tmp_path / "data"
    with atomic.staged_dir(target) as stage:
        fill(stage, "v1")

    def swap():
        with atomic.staged_dir(target) as stage:
            fill(stage, "v2")

    if exchange:
        # the exchange is one system call: a kill lands before it (old) or after it (new), nothing between
        assert killed_at(1, swap, monkeypatch)
        assert versions(target) == {"v1"}
    else:
        # kill between the fallback's two renames: the target name is briefly missing
        real_rename, calls = os.rename, []

        def rename(a, b):
            calls.append(b)
            if str(b) == str(target) and len(calls) == 2:
                os._exit(9)
            real_rename(a, b)

        monkeypatch.setattr(os, "rename", rename)
        assert killed_at(99, swap, monkeypatch) is True
        monkeypatch.setattr(os, "rename", real_rename)
        assert not target.exists() and versions(atomic.old_dir(target)) == {"v1"}
        atomic.recover_dir(target)  # what every later write (and load_best) does first
        assert versions(target) == {"v1"}
    swap()  # the next write succeeds and removes the dead writer's folder
    assert versions(target) == {"v2"} and sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_remove_dir_renames_before_deleting_and_cleans_up_after_a_killed_one(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "last").mkdir(parents=True)
    half_deleted = tmp_path / f"run.tmp-{dead_pid()}"  # what a kill during an earlier deletion leaves
    (half_deleted / "x").mkdir(parents=True)
    atomic.remove_dir(run)
    assert list(tmp_path.iterdir()) == []


def test_exchange_swaps_two_folders_in_one_call(tmp_path):
    """Linux with glibc >= 2.28 on ext4/xfs/btrfs/tmpfs: a folder swap is one atomic exchange."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "f").write_text("a")
    (b / "f").write_text("b")
    if not atomic._exchange(a, b):
        pytest.skip("no renameat2 RENAME_EXCHANGE here: folder swaps use the two-rename fallback")
    assert (a / "f").read_text() == "b" and (b / "f").read_text() == "a"

# ----------------------------------------------------------------------------------------- checkpoints


class FakeAccelerator:
    """What save_last/load_last use of accelerate, on one process, writing small files."""

    is_main_process = True

    def __init__(self):
        self.loaded = None

    def wait_for_everyone(self):
        pass

    def save_state(self, path):
        os.makedirs(path, exist_ok=True)
        for name in ("model.safetensors", "optimizer.bin", "random_states_0.pkl"):
            with open(os.path.join(path, name), "w") as fh:
                fh.write(name * 100)

    def load_state(self, path):
        self.loaded = path


def state(step: int) -> ckpt.TrainState:
    return ckpt.TrainState(global_step=step, recipe_hash="h")


def make_state_dir(folder, step: int, *, marker: bool) -> None:
    folder.mkdir(parents=True)
    (folder / ckpt.STATE_FILE).write_text(json.dumps({"global_step": step, "recipe_hash": "h"}))
    if marker:
        (folder / ckpt.MARKER).write_text(json.dumps({"step": step}))


def test_load_last_falls_back_to_the_older_complete_checkpoint(tmp_path):
    # the newest save was killed before its marker: last.tmp is incomplete, `last` is the state to use
    make_state_dir(tmp_path / "last", 10, marker=True)
    make_state_dir(tmp_path / "last.tmp", 15, marker=False)
    acc = FakeAccelerator()
    assert ckpt.load_last(acc, tmp_path, "h").global_step == 10
    assert acc.loaded == str(tmp_path / "last") and sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_load_last_takes_a_complete_last_tmp_whose_swap_was_killed(tmp_path):
    make_state_dir(tmp_path / "last", 10, marker=True)
    make_state_dir(tmp_path / "last.tmp", 15, marker=True)
    assert ckpt.newest_complete(tmp_path) == tmp_path / "last.tmp"
    assert ckpt.load_last(FakeAccelerator(), tmp_path, "h").global_step == 15
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_load_last_after_a_kill_between_the_fallback_renames(tmp_path):
    make_state_dir(tmp_path / "last.old", 10, marker=True)
    make_state_dir(tmp_path / "last.tmp", 15, marker=False)
    assert ckpt.has_checkpoint(tmp_path)
    assert ckpt.load_last(FakeAccelerator(), tmp_path, "h").global_step == 10


def test_no_complete_checkpoint(tmp_path):
    make_state_dir(tmp_path / "last.tmp", 5, marker=False)
    assert not ckpt.has_checkpoint(tmp_path)
    with pytest.raises(TuneforgeError, match="no complete checkpoint"):
        ckpt.load_last(FakeAccelerator(), tmp_path, "h")


def test_last_written_before_markers_existed_still_resumes(tmp_path):
    make_state_dir(tmp_path / "last", 7, marker=False)
    assert ckpt.load_last(FakeAccelerator(), tmp_path, "h").global_step == 7


@needs_fork
@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_save_last_killed_in_every_window_resumes_from_a_complete_state(tmp_path, monkeypatch, exchange):
    monkeypatch.setattr(atomic, "USE_EXCHANGE", exchange)
    acc = FakeAccelerator()
    window = 0
    while True:
        window += 1
        ckpt_dir = tmp_path / f"w{window}"
        ckpt.save_last(acc, state(10), ckpt_dir)
        if not killed_at(window, lambda: ckpt.save_last(acc, state(20), ckpt_dir), monkeypatch):
            break  # the save has fewer windows than this: every one was tried
        step = ckpt.load_last(acc, ckpt_dir, "h").global_step
        # before the marker's rename: the old state; from the marker on: the new one
        assert step in (10, 20)
        assert sorted(p.name for p in ckpt_dir.iterdir()) == ["last"]
        assert sorted(p.name for p in (ckpt_dir / "last").iterdir()) == [
            ckpt.MARKER, "model.safetensors", "optimizer.bin", "random_states_0.pkl", ckpt.STATE_FILE]
        ckpt.save_last(acc, state(30), ckpt_dir)  # and saving goes on from there
        assert ckpt.load_last(acc, ckpt_dir, "h").global_step == 30
    assert window - 1 == 3  # killed in each window: train_state.json, COMPLETE, the folder swap
