"""scripts/bench_storage.py on a tiny budget: every storage row gets numbers."""

from __future__ import annotations

import re

from _postgres import PASSWORD_SENTINEL
from conftest import load_script

bench = load_script("bench_storage")
NUMBER = r"\d+\.\d"


def _table_rows(out: str) -> dict[str, list[str]]:
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and not line.startswith("| storage"):
            rows[cells[0]] = cells[1:]
    return rows


def test_sqlite_and_journal_rows_have_numbers(capsys, tmp_path):
    rows = bench.main(["--quick", "--storages", "sqlite,journal", "--dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert [r.storage for r in rows] == ["in-memory (sampler + pruner only)", "sqlite (file)", "journal (file)"]
    assert all(len(r.per_trial) == 5 and not r.note for r in rows)
    table = _table_rows(out)
    sqlite, journal = table["sqlite (file)"], table["journal (file)"]
    for cells in (sqlite, journal):
        assert all(re.fullmatch(NUMBER, c) for c in cells[:2]), cells  # mean, p95
        assert re.fullmatch("[+-]" + NUMBER, cells[2]), cells  # minus the in-memory baseline
    assert all(re.fullmatch(NUMBER, c) for c in sqlite[3:5])  # with a heartbeat
    assert journal[3:5] == ["—", "—"]  # the journal storage has no heartbeat
    assert "CPU cores" in out and "optuna" in out
    assert not list(tmp_path.iterdir())  # its files are cleaned up


def test_postgres_row_has_numbers(postgres_db_url, capsys):
    rows = bench.main(["--quick", "--storages", "postgres", "--postgres-url", postgres_db_url])
    out = capsys.readouterr().out
    assert rows[-1].storage.startswith("postgresql") and not rows[-1].note, rows[-1].note
    cells = next(cells for name, cells in _table_rows(out).items() if name.startswith("postgresql"))
    assert all(re.fullmatch(r"[+-]?" + NUMBER, c) for c in cells), cells
    assert "PostgreSQL 1" in out and PASSWORD_SENTINEL not in out


def test_a_storage_that_cannot_be_reached_is_reported_not_raised(capsys):
    rows = bench.main(["--quick", "--storages", "postgres", "--postgres-url",
                       "postgresql+psycopg2://nobody:x@127.0.0.1:9/none"])
    assert rows[-1].note.startswith("not measured") and "OperationalError" in capsys.readouterr().out
