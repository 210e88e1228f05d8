"""The trial lifecycle every backend and the pack loop share: how a trial's end is decided and recorded.

Example:
    >>> decide(["eval_loss"], {"eval_loss": 1.5}).state
    'complete'
"""

from .ending import Ending, decide, exception_text, failed, from_exception, last_metrics, settle

__all__ = ["Ending", "decide", "exception_text", "failed", "from_exception", "last_metrics", "settle"]
