"""Print a pip constraints file of every package in the running environment (`make lock` calls it).

The lock pins what the suite passed with; `make install`, `make test` and CI install through it with
``pip install -c requirements.lock``. Local version labels are dropped (``torch==2.13.0+cpu`` becomes
``torch==2.13.0``) so the same lock serves a CUDA build of the same release.
"""

from __future__ import annotations

import platform
import subprocess
import sys

SKIP = {"tuneforge"}  # the project itself, installed editable


def main() -> int:
    frozen = subprocess.run([sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable"],
                            check=True, capture_output=True, text=True).stdout.splitlines()
    pins = []
    for line in frozen:
        if "==" not in line:  # a direct URL or path install: not reproducible from a registry
            raise SystemExit(f"cannot lock {line!r}: install it from a registry")
        name, version = line.split("==", 1)
        if name.lower() not in SKIP:
            pins.append(f"{name.lower()}=={version.split('+', 1)[0]}")
    print("# tuneforge's lock: the exact versions `make test` passed with (pip constraints file).")
    print("# Regenerate with `make lock` (after changing a dependency in pyproject.toml, or to take new")
    print("# upstream releases once `make test-latest` passes); never edit by hand.")
    print(f"# Made with Python {platform.python_version()} on {platform.system()} {platform.machine()}.")
    print("\n".join(sorted(pins)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
