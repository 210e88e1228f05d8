"""The sweep engine: sweep files, backends, the study store, the CLI.

Example:
    >>> from search import load_sweep
    >>> load_sweep("demo").spec.objective.name
    'causal_lm'
"""

from .spec import Sweep, SweepSpec, load_sweep

__all__ = ["Sweep", "SweepSpec", "load_sweep"]
