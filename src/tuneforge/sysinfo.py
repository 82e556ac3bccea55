"""Facts about this machine that several layers read (``tuneforge doctor``, evaluation batch sizing)."""

from __future__ import annotations

import os
from pathlib import Path


def memory_bytes() -> tuple[int | None, int | None]:
    """(total, available) RAM in bytes: /proc/meminfo, else psutil, else sysconf (total only)."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        return int(info["MemTotal"].split()[0]) * 1024, int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        pass
    try:
        import psutil

        vm = psutil.virtual_memory()
        return vm.total, vm.available
    except ImportError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), None
    except (OSError, ValueError, AttributeError):
        return None, None
