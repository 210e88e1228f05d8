"""What the tests' real services (tests/_postgres.py, tests/_slurm.py) share: running their start/stop script."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path


def run_script(script: Path, *args: str, unavailable: type[Exception], env: Mapping[str, str] | None = None,
               timeout: float = 120) -> str:
    """`bash script args...`'s output; `unavailable` (the service's "cannot start here" error) when it fails or
    does not finish within `timeout` seconds, with the end of what it printed."""
    try:
        done = subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        raise unavailable(f"{script.name} {args[0]} did not finish within {timeout:.0f} s") from None
    if done.returncode != 0:
        raise unavailable(f"{script.name} {args[0]} failed (exit {done.returncode}): "
                          f"{(done.stderr or done.stdout).strip()[-1500:]}")
    return done.stdout
