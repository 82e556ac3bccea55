"""Crash-consistent file and directory writes (stdlib only; imports nothing else from tuneforge).

A process can die at any instruction (SIGKILL, OOM killer, power loss). What it was writing must then
be either the old complete version or the new complete version, never a truncated mix, so every
checkpoint, prepared-data folder, export and study file goes through one of these:

* ``atomic_path`` / ``atomic_write_bytes|text|json``: write ``<name>.tmp-<pid>`` next to the target,
  fsync it, ``os.replace`` it over the target (atomic on POSIX and Windows), fsync the directory so
  the rename itself survives a power loss.
* ``staged_dir`` / ``replace_dir``: build a whole folder as ``<name>.tmp-<pid>``, fsync every file in
  it, then swap it in. On Linux the swap is ``renameat2(RENAME_EXCHANGE)``: at every instant the
  target name holds a complete folder. Elsewhere (or on a filesystem without it) the target is first
  renamed to ``<name>.old`` and the new folder renamed into place; a kill between those two renames
  leaves ``<name>.old`` complete, and ``recover_dir`` (called by every later ``staged_dir``) puts it back.

Temporaries of dead processes (their pid no longer runs) are removed by the next write of the same
target. Appends (``metrics.jsonl``) are not routed here: a torn last line is skipped by its readers.

Test hook: ``TUNEFORGE_CRASH_TEST_SLEEP=<seconds>`` makes every atomic write pause that long after
its temporary is complete and before it is renamed into place (and before each folder swap), which
widens these windows so that a SIGKILL at a random moment often lands inside one
(``tests/integration/test_crash_consistency.py``). With ``TUNEFORGE_CRASH_TEST_LOG=<file>`` as well,
each window appends ``begin <what>`` / ``end <what>`` lines to that file, so the test can tell
where its kill landed. Unset (the normal case), the hook costs one environment lookup per write.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterator

SLEEP_ENV = "TUNEFORGE_CRASH_TEST_SLEEP"
LOG_ENV = "TUNEFORGE_CRASH_TEST_LOG"
#: Linux renameat2 exchange; tests turn it off to exercise the two-rename fallback.
USE_EXCHANGE = sys.platform.startswith("linux")


# ----------------------------------------------------------------------------------------- test hook


@contextlib.contextmanager
def crash_window(what: str) -> Iterator[None]:
    """Mark the moment between "new version complete" and "new version in place" (see the module doc)."""
    delay = os.environ.get(SLEEP_ENV)
    if not delay:
        yield
        return
    _log(f"begin {what}")
    time.sleep(float(delay))
    yield
    _log(f"end {what}")


def _log(line: str) -> None:
    path = os.environ.get(LOG_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as fh:  # no fsync: a SIGKILL does not lose the page cache
            fh.write(f"{os.getpid()} {line}\n")


# ----------------------------------------------------------------------------------------------- fsync


def fsync_file(path: Path | str) -> None:
    fd = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)  # Windows flushes writable handles only
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path | str) -> None:
    """Make the entries of directory ``path`` (creations, renames, deletions) durable.

    Windows cannot open a directory for fsync, and a few filesystems refuse it (EINVAL): there the
    rename is as durable as the platform makes it, which is all we can do."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path | str) -> None:
    """fsync every file and directory under ``root`` (libraries such as accelerate or safetensors
    write without fsync; before a folder is declared complete its contents must be on disk)."""
    for dirpath, _, files in os.walk(root, topdown=False):
        for name in files:
            fsync_file(os.path.join(dirpath, name))
        fsync_dir(dirpath)


# ----------------------------------------------------------------------------------------------- files


def _tmp_for(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (a temporary of a dead one is debris)."""
    if os.name == "nt":
        return True  # os.kill(pid, 0) would terminate it there; leftovers then stay until removed by hand
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's), or we cannot tell: keep its files
    return True


def remove_stale(path: Path | str) -> None:
    """Delete ``<name>.tmp-<pid>`` leftovers of ``path`` whose writer is no longer running."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    prefix = f"{path.name}.tmp-"
    for entry in path.parent.iterdir():
        pid = entry.name[len(prefix):]
        if entry.name.startswith(prefix) and pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            _remove(entry)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to (for libraries that take a path,
    e.g. safetensors ``save_file`` or matplotlib ``savefig``); on a normal exit it is fsynced and
    renamed over ``path``. On an exception the temporary is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    tmp = _tmp_for(path)
    try:
        yield tmp
        fsync_file(tmp)
        with crash_window(f"file {path}"):
            os.replace(tmp, path)
            fsync_dir(path.parent)
    except BaseException:
        _remove(tmp)
        raise


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
    return Path(path)


def atomic_write_text(path: Path | str, text: str, encoding: str = "utf-8", errors: str = "strict") -> Path:
    return atomic_write_bytes(path, text.encode(encoding, errors))


def atomic_write_json(path: Path | str, value: Any, *, indent: int | None = 2, **dumps: Any) -> Path:
    return atomic_write_text(path, json.dumps(value, indent=indent, **dumps) + "\n")


# ----------------------------------------------------------------------------------------- directories


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap the names ``a`` and ``b`` (Linux renameat2 RENAME_EXCHANGE); False where the
    C library or the filesystem does not offer it."""
    if not USE_EXCHANGE:
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc < 2.28, musl, ...
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def old_dir(path: Path) -> Path:
    """Where the two-rename fallback parks the previous version of ``path`` during a swap."""
    return path.with_name(path.name + ".old")


def replace_dir(src: Path | str, dst: Path | str) -> Path:
    """Put the complete folder ``src`` at ``dst``, replacing (and then deleting) what was there.

    ``src`` is fsynced first, so the swap never publishes a folder whose files are not on disk."""
    src, dst = Path(src), Path(dst)
    fsync_tree(src)
    recover_dir(dst)
    with crash_window(f"dir {dst}"):
        old = None
        if not dst.exists():
            os.rename(src, dst)
        elif _exchange(src, dst):
            old = src  # now holds the previous version
        else:
            old = old_dir(dst)
            _remove(old)
            os.rename(dst, old)
            # Killed here: dst is missing, old is complete; recover_dir renames it back.
            os.rename(src, dst)
        fsync_dir(dst.parent)
    if old is not None:
        _remove(old)
    return dst


def recover_dir(path: Path | str) -> None:
    """Undo a two-rename swap that was killed halfway (``path`` missing, ``path.old`` complete);
    otherwise drop a leftover ``path.old``."""
    path = Path(path)
    old = old_dir(path)
    if not old.exists():
        return
    if path.exists():
        _remove(old)
    else:
        os.rename(old, path)
        fsync_dir(path.parent)


def remove_dir(path: Path | str) -> None:
    """Delete folder ``path`` so that a kill never leaves it half-deleted under its own name (where a
    half-deleted checkpoint could still look complete): renamed to ``<name>.tmp-<pid>`` first, then
    deleted; a leftover of a killed deletion is removed by the next write of ``path``."""
    path = Path(path)
    remove_stale(path)
    if not path.exists():
        return
    doomed = _tmp_for(path)
    _remove(doomed)
    os.rename(path, doomed)
    fsync_dir(path.parent)
    _remove(doomed)


@contextlib.contextmanager
def staged_dir(path: Path | str, *, keep_on: tuple[type[BaseException], ...] = ()) -> Iterator[Path]:
    """Yield an empty temporary folder; when the block ends normally it replaces ``path`` whole.

    An exception leaves ``path`` as it was and deletes the temporary folder, except one of
    ``keep_on``: an error whose explanation was written into the folder (a failed export
    verification, rejected data rows) swaps the folder in anyway, so the user can read why, and is
    raised again."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(path)
    remove_stale(path)
    tmp = _tmp_for(path)
    _remove(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except keep_on:
        replace_dir(tmp, path)
        raise
    except BaseException:
        _remove(tmp)
        raise
    replace_dir(tmp, path)
