"""Cache tokenised datasets on disk under a key that changes whenever their result could change.

Tokenising and masking a large chat corpus takes minutes, and ``prepare``, ``train`` and a resumed
``train`` all need the same result. The danger of caching is a *stale* hit: a tokenizer with one
more added token, or a different chat template, produces different ids and masks, and training on
the old ones fails silently. So the key hashes everything the result depends on:

* the bytes of every data file (not its name or timestamp; see ``file_digest``),
* the recipe's data section (canonical JSON: key order and formatting do not matter),
* a tokenizer fingerprint (vocabulary, merges, added and special tokens, normaliser, chat template,
  behaviour-changing init options; not the directory it was loaded from),
* the chat template text actually used, any ``extra`` settings the caller adds (e.g. max_length),
* ``FORMAT_VERSION``, bumped whenever tuneforge changes how it tokenises, to drop every old entry.

A miss only costs time; a wrong hit costs a training run, so when in doubt an input goes in the key.

Entries are written atomically (a temporary directory, fsynced, with ``meta.json`` written last, then
renamed into place) so an interrupted ``prepare`` or two processes preparing at once never leave a
half-written entry that looks valid; temporaries of killed processes are removed by later saves.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tuneforge.atomic import crash_window, fsync_dir, fsync_tree, pid_alive
from tuneforge.errors import DataError

log = logging.getLogger(__name__)

#: Bump to invalidate every cached entry after a change in how examples are tokenised or masked.
FORMAT_VERSION = 1

_CHUNK = 1 << 20
#: A file modified this recently may change again within the filesystem's timestamp resolution
#: without its (size, mtime) moving, so its digest is not memoised ("racy git" problem).
_RACY_NS = 2_000_000_000
_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}
#: Tokenizer init options that name where files were, not how text is tokenised.
_LOCATION_KWARGS = frozenset({"name_or_path", "is_local", "local_files_only", "cache_dir", "token", "revision"})
_KEY_RE = re.compile(r"^[0-9A-Za-z_-]{8,128}$")


def default_token_cache_dir() -> Path:
    """``$TUNEFORGE_CACHE/tokenized``, else ``~/.cache/tuneforge/tokenized``."""
    env = os.environ.get("TUNEFORGE_CACHE")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "tuneforge"
    return base / "tokenized"


def _canonical(value: Any) -> str:
    if hasattr(value, "model_dump"):  # a pydantic section: hash what it validated to
        value = value.model_dump(mode="json")
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, streamed; memoised per process by (path, size, mtime_ns)."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DataError(f"data file not found: {path}") from None
    memo_key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo_key in _FILE_DIGESTS:
        return _FILE_DIGESTS[memo_key]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    if time.time_ns() - st.st_mtime_ns > _RACY_NS:
        _FILE_DIGESTS[memo_key] = digest
    return digest


def _backend_json(backend: Any) -> dict[str, Any]:
    """The fast tokenizer's JSON without its call-time state: ``tokenizer(..., truncation=True,
    max_length=n)`` writes truncation/padding settings into the backend, which must not change the
    key (max_length, where it matters, goes into the key's ``extra``)."""
    state = json.loads(backend.to_str())
    state.pop("truncation", None)
    state.pop("padding", None)
    return state


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """SHA-256 over everything about ``tokenizer`` that changes the ids it produces."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    parts: dict[str, Any] = {
        "class": type(tokenizer).__name__,
        # A fast tokenizer's JSON holds model, vocab, merges, added tokens, normaliser, pre-tokeniser
        # and post-processor; for a slow one the vocabulary stands in for it.
        "backend": _backend_json(backend) if backend is not None else sorted(tokenizer.get_vocab().items()),
        "added_tokens": {int(i): repr(t) for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()},
        "special_tokens": getattr(tokenizer, "special_tokens_map", {}),
        "chat_template": getattr(tokenizer, "chat_template", None),
        "init_kwargs": {
            k: v for k, v in getattr(tokenizer, "init_kwargs", {}).items()
            if k not in _LOCATION_KWARGS and not k.endswith("_file")
        },
    }
    return _sha256(_canonical(parts))


def cache_key_inputs(
    *,
    data_files: Sequence[Path],
    data_section: Mapping[str, Any] | Any,
    tokenizer: Any,
    template: str | None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The hashed inputs of a cache key, as JSON; written to each entry's meta.json for debugging."""
    return {
        "format_version": FORMAT_VERSION,
        "data_files": [{"path": str(p), "sha256": file_digest(Path(p))} for p in data_files],
        "data_section_sha256": _sha256(_canonical(data_section)),
        "tokenizer": {"class": type(tokenizer).__name__, "sha256": tokenizer_fingerprint(tokenizer)},
        "template_sha256": None if template is None else _sha256(template),
        "extra": json.loads(_canonical(extra or {})),
    }


def cache_key(
    *,
    data_files: Sequence[Path],
    data_section: Mapping[str, Any] | Any,
    tokenizer: Any,
    template: str | None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """A 64-hex-digit key for the tokenised form of ``data_files`` (see the module docstring)."""
    inputs = cache_key_inputs(
        data_files=data_files, data_section=data_section, tokenizer=tokenizer, template=template, extra=extra
    )
    return _sha256(_canonical(inputs))


def _quietly(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn`` with datasets' progress bars off: a cache write is an implementation detail, its
    "Saving the dataset" bars are noise in a training log."""
    from datasets.utils.tqdm import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        return fn(*args)
    finally:
        if not was_disabled:
            enable_progress_bars()


class TokenCache:
    """Tokenised datasets on disk: ``<root>/<key>/data`` (Arrow, via ``datasets``) plus ``meta.json``."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_token_cache_dir()

    def path(self, key: str) -> Path:
        if not _KEY_RE.match(key):
            raise ValueError(f"invalid cache key {key!r}")
        return self.root / key

    def load(self, key: str):
        """The cached dataset for ``key`` (memory-mapped ``datasets.Dataset``), or ``None``."""
        entry = self.path(key)
        # meta.json is written last, inside the temporary directory: if it exists the entry is whole.
        if not (entry / "meta.json").is_file():
            return None
        from datasets import load_from_disk

        try:
            return load_from_disk(str(entry / "data"))
        except (OSError, ValueError) as exc:
            # A damaged entry (disk full, files deleted by hand) is rebuilt rather than trusted.
            log.warning("token cache entry %s is unreadable (%s); rebuilding it", entry, exc)
            self._discard(entry)
            return None

    def save(self, key: str, dataset: Any, meta: Mapping[str, Any] | None = None) -> Path:
        """Write ``dataset`` under ``key`` atomically; returns the entry directory."""
        entry = self.path(key)
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_dead_temporaries()
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:12]}-{os.getpid()}-", dir=self.root))
        try:
            _quietly(dataset.save_to_disk, str(tmp / "data"))
            info = {
                "key": key,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "rows": len(dataset),
                "columns": list(dataset.column_names),
                "inputs": dict(meta or {}),
            }
            (tmp / "meta.json").write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
            fsync_tree(tmp)  # datasets writes without fsync: all of it on disk before the rename publishes it
            with crash_window(f"dir {entry}"):
                try:
                    os.rename(tmp, entry)
                except OSError:
                    # Another process stored the same key first; same key, same content: keep theirs.
                    # A directory there without meta.json is debris (not written by save): replace it.
                    if (entry / "meta.json").is_file():
                        return entry
                    self._discard(entry)
                    os.rename(tmp, entry)
                fsync_dir(self.root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return entry

    def get_or_build(
        self, key: str, build: Callable[[], dict[str, list]], meta: Mapping[str, Any] | None = None
    ):
        """The cached dataset for ``key``; on a miss, ``build()`` the columns, store them, and load them back.

        Loading back after a miss means a hit and a miss hand the caller the same memory-mapped kind
        of dataset.
        """
        cached = self.load(key)
        if cached is not None:
            log.info("token cache hit: %s", self.path(key))
            return cached
        from datasets import Dataset

        self.save(key, Dataset.from_dict(build()), meta)
        loaded = self.load(key)
        assert loaded is not None  # just written
        return loaded

    def _remove_dead_temporaries(self) -> None:
        """``.tmp-<key>-<pid>-<random>`` folders of processes that were killed mid-save."""
        for path in self.root.glob(".tmp-*"):
            parts = path.name.rsplit("-", 2)
            if len(parts) == 3 and parts[1].isdigit() and not pid_alive(int(parts[1])):
                shutil.rmtree(path, ignore_errors=True)

    def _discard(self, entry: Path) -> None:
        trash = entry.with_name(f".trash-{entry.name}-{os.getpid()}")
        try:
            os.rename(entry, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)

