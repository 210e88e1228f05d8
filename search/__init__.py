"""The sweep engine: sweep files, the study store, backends, tracking, results, the CLI.

Layers, each importing only from those below it (import-linter checks it: `lint-imports`):
`cli` > `aftersweep` > `backends` > `observers` > `results` > `sweep` > `store` > `components` >
`settings`, `secrets`; below them the `objectives` package and, at the bottom, `spaces`.
docs/ARCHITECTURE.md follows a sweep file through them.

Example:
    >>> from search import load_sweep
    >>> load_sweep("demo").spec.objective.name
    'causal_lm'
"""

from .settings import SweepSpec
from .sweep import Sweep, load_sweep

__all__ = ["Sweep", "SweepSpec", "load_sweep"]
