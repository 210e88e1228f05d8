"""optuna-dashboard over a sweep's storage: every trial, curve and importance, live in a browser.

    run_dashboard("journal:///runs/demo/demo.journal")        # prints the URL, serves until Ctrl-C
    run_dashboard("journal:///runs/demo/demo.journal")  # Optuna's journal file storage too
    app = dashboard_app("journal:///runs/demo/demo.journal")  # the WSGI app, for gunicorn or tests

Needs the `dashboard` extra: ``pip install 'ftsweep[dashboard]'``.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

from spaces import ConfigError

from ..secrets import redact_url, scrub_secrets
from ..store.storage import JOURNAL, open_storage

INSTALL_HINT = "Fix: pip install 'ftsweep[dashboard]'"


def _optuna_dashboard():
    try:
        import optuna_dashboard
    except ImportError as exc:
        raise ConfigError("the dashboard needs optuna-dashboard, which is not installed", hint=INSTALL_HINT) from exc
    return optuna_dashboard


def shown_storage(storage: str) -> str:
    """The storage URL as it may be printed, its password hidden.

    Example:
        >>> shown_storage("postgresql://sweeper:s3cret@db:bad-port/optuna")
        'postgresql://sweeper:***@db:bad-port/optuna'
    """
    return redact_url(storage)


def _scrub(text: str, storage: str) -> str:
    """``text`` with the storage URL and its password hidden (driver errors may quote either)."""
    return scrub_secrets(text, urls=[storage])


def _check_study_file(storage: str) -> None:
    # Opening a missing SQLite or journal file would create an empty one there: say so instead.
    if storage.startswith(JOURNAL):
        if not Path(storage.removeprefix(JOURNAL)).expanduser().exists():
            raise ConfigError("no journal file at this path", key="storage", value=storage,
                              hint="Fix: pass the storage a sweep wrote (default journal:///runs/<name>/<study>.journal).")
        return
    if not storage.startswith("sqlite:///"):
        return
    from sqlalchemy.engine import make_url

    try:
        database = make_url(storage).database
    except Exception:  # unparseable: study_names reports it, with the password hidden
        return
    if database and database != ":memory:" and not Path(database).expanduser().exists():
        raise ConfigError("no database file at this path", key="storage", value=shown_storage(storage),
                          hint="Fix: pass the storage a sweep wrote (default journal:///runs/<name>/<study>.journal).")


def study_names(storage: str) -> list[str]:
    """Names of the studies in ``storage``; a ConfigError (password hidden) when it cannot be opened.

    Example:
        >>> study_names(sweep.storage_url)
        ['tiny']
    """
    import optuna

    _check_study_file(storage)
    try:
        return optuna.study.get_all_study_names(storage=open_storage(storage))
    except ConfigError:  # already says what is wrong, password hidden (a missing database driver)
        raise
    except Exception as exc:
        detail = " ".join(_scrub(str(exc), storage).split())  # SQLAlchemy's messages span lines; errors are one
        raise ConfigError(f"cannot open the storage ({type(exc).__name__}: {detail})",
                          key="storage", value=shown_storage(storage)) from None  # the cause may quote the password


def dashboard_url(host: str, port: int) -> str:
    """The address to open in a browser for a server bound to ``host``:``port``.

    Example:
        >>> dashboard_url("127.0.0.1", 8080), dashboard_url("0.0.0.0", 8080)
        ('http://127.0.0.1:8080/', 'http://localhost:8080/')
    """
    if host in ("0.0.0.0", "::", ""):
        host = "localhost"  # bound to every interface: this machine's own name works
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


def dashboard_app(storage: str) -> Any:
    """The optuna-dashboard WSGI app over ``storage`` (serve it with any WSGI server).

    Example:
        >>> callable(dashboard_app(sweep.storage_url))
        True

    e.g. `gunicorn 'search.results.dashboard:dashboard_app("journal:///runs/demo/demo.journal")'`.
    """
    optuna_dashboard = _optuna_dashboard()
    _check_study_file(storage)
    return optuna_dashboard.wsgi(open_storage(storage))  # a journal:/// URL becomes a JournalStorage


def run_dashboard(storage: str, *, host: str = "127.0.0.1", port: int = 8080, console=None) -> None:
    """Serve optuna-dashboard over ``storage`` until Ctrl-C, after checking it holds a study.

    Binds to 127.0.0.1 by default: the dashboard can rename and delete studies, so exposing it
    (host="0.0.0.0") is a deliberate choice. The storage is printed with its password hidden.

    Example (serves until Ctrl-C; `ftsweep dashboard demo --port 8081` does the same):

        .. code-block:: text

            run_dashboard("journal:///runs/demo/demo.journal", port=8081)   # prints:
            Dashboard for journal:///runs/demo/demo.journal (1 study: demo)
            Open http://127.0.0.1:8081/ (Ctrl-C to stop)
    """
    from rich.console import Console

    console = console or Console(highlight=False)
    optuna_dashboard = _optuna_dashboard()
    names = study_names(storage)
    if not names:
        raise ConfigError("the storage holds no study", key="storage", value=shown_storage(storage),
                          hint="Fix: run a sweep first (ftsweep launch SWEEP), or pass the storage it wrote.")
    shown = ", ".join(names[:5]) + (f", … ({len(names) - 5} more)" if len(names) > 5 else "")
    console.print(f"Dashboard for {shown_storage(storage)} "
                  f"({len(names)} {'study' if len(names) == 1 else 'studies'}: {shown})", markup=False)
    console.print(f"Open [bold cyan]{dashboard_url(host, port)}[/] (Ctrl-C to stop)")
    try:
        optuna_dashboard.run_server(open_storage(storage), host=host, port=port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError("the port is already in use", key="port", value=port,
                              hint="Fix: pick another one (--port).") from None
        raise
