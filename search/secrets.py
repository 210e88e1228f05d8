"""The one password scrubber: storage URLs and messages made safe to print, log, store or track.

A storage URL may hold a database password (`postgresql://user:PASSWORD@host/db`). Everything ftsweep
prints, writes into a study, an export or a W&B run goes through `redact_url` or `scrub_secrets`.

Example:
    >>> redact_url("postgresql://sweeper:s3cret@db:5432/optuna")
    'postgresql://sweeper:***@db:5432/optuna'
    >>> scrub_secrets("could not connect to postgresql://u:p@ss@db:bad/x")
    'could not connect to postgresql://u:***@db:bad/x'
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

# user:password@ after a URL scheme. Greedy up to the last '@' before whitespace: an unescaped '@' in
# the password (which fools URL parsers into taking the rest for the host) is hidden too.
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)([^\s]+)@", re.I)


def password_of(url: str) -> str | None:
    """The password a URL carries, or None (parsed by SQLAlchemy, else by pattern)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).password
    except Exception:  # not parseable by SQLAlchemy (a bad port, an unescaped '@'): look for user:password@
        match = _URL_PASSWORD.search(url)
        return match.group(2) if match else None


def redact_url(url: str) -> str:
    """A URL with its password replaced by ***, safe to print or store."""
    from sqlalchemy.engine import make_url

    try:
        # The pattern runs too: an unescaped '@' in a password fools the URL parser into a host.
        return scrub_secrets(make_url(url).render_as_string(hide_password=True))
    except Exception:  # not something SQLAlchemy parses (bad port, unescaped '@'...): hide by pattern
        return scrub_secrets(url)


def scrub_secrets(text: str, *, urls: Iterable[str] = ()) -> str:
    """`text` with the password of any URL in it hidden, and, for each of `urls` (e.g. the storage
    in use), the URL itself and its password wherever they appear (driver errors may quote either).
    """
    for url in urls:
        text = text.replace(url, redact_url(url))
        password = password_of(url)
        if password:
            text = text.replace(password, "***")
    return _URL_PASSWORD.sub(r"\1***@", text)


class ScrubbingFilter(logging.Filter):
    """A logging filter that hides passwords in a record's message and traceback before any handler writes it
    (Optuna logs a failed trial's exception with its traceback; a driver error may quote the storage URL).

    Example:
        >>> record = logging.LogRecord("optuna", logging.WARNING, __file__, 1, "lost %s", ("postgresql://u:pw@db/x",), None)
        >>> ScrubbingFilter().filter(record) and record.getMessage()
        'lost postgresql://u:***@db/x'
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        scrubbed = scrub_secrets(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        if record.exc_info and not record.exc_text:
            # Formatter.format uses exc_text when set: the traceback is formatted once, here, scrubbed.
            record.exc_text = scrub_secrets(logging.Formatter().formatException(record.exc_info))
        return True


def scrub_logs(*logger_names: str) -> None:
    """Hide passwords in what the handlers of these loggers (and of the root logger) write; idempotent.

    Example:
        >>> scrub_logs("optuna")
    """
    for name in (*logger_names, None):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, ScrubbingFilter) for f in handler.filters):
                handler.addFilter(ScrubbingFilter())


def without_secrets(exc: BaseException) -> BaseException:
    """`exc` itself, or, when its text holds a password, an exception of the same type (RuntimeError if that
    type cannot be built from a message) with the text scrubbed: raise it `from None` where an error leaves
    the process (Ray writes a trial's error and traceback to its own files and log).

    Example:
        >>> without_secrets(ValueError("no route to postgresql://u:pw@db/x"))
        ValueError('no route to postgresql://u:***@db/x')
    """
    text = str(exc)
    scrubbed = scrub_secrets(text)
    if scrubbed == text:
        return exc
    fallback = RuntimeError(f"{type(exc).__name__}: {scrubbed}")
    try:
        clean = type(exc)(scrubbed)
    except Exception:  # a type whose constructor takes other arguments
        return fallback
    return clean if str(clean) == scrubbed else fallback
