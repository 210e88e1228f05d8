"""Storage URLs as users write them: `postgresql://`, `postgres://`, `mysql://` get the driver that is installed
(search/store/storage.py `with_driver`); a missing driver is an error that says what to install, password hidden.
The real PostgreSQL runs in test_postgres_storage.py."""

from __future__ import annotations

import importlib.util

import pytest
import sqlalchemy

from search.cli import main
from search.store.storage import open_storage, with_driver
from spaces import ConfigError

SECRET = "pw-s3cret"


@pytest.mark.parametrize(("url", "importable", "expected"), [
    ("postgresql://u:pw@db/x", {"psycopg2"}, "postgresql+psycopg2://u:pw@db/x"),
    ("postgresql://u:pw@db/x", {"psycopg", "psycopg2"}, "postgresql+psycopg://u:pw@db/x"),  # psycopg 3 first
    ("postgres://u:pw@db:5432/x", {"psycopg2"}, "postgresql+psycopg2://u:pw@db:5432/x"),  # SQLAlchemy refuses postgres://
    ("postgres+psycopg2://u:pw@db/x", {"psycopg2"}, "postgresql+psycopg2://u:pw@db/x"),  # named driver kept, scheme fixed
    ("mysql://u:pw@db/x", {"pymysql"}, "mysql+pymysql://u:pw@db/x"),
    ("mysql://u:pw@db/x", {"MySQLdb", "pymysql"}, "mysql+mysqldb://u:pw@db/x"),  # SQLAlchemy's own default first
    ("mariadb://u:pw@db/x", {"pymysql"}, "mariadb+pymysql://u:pw@db/x"),
    ("postgresql+asyncpg://u:pw@db/x", set(), "postgresql+asyncpg://u:pw@db/x"),  # a driver we do not know: as given
    ("mysql+pymysql://u:p%40ss@db/x?charset=utf8mb4", {"pymysql"}, "mysql+pymysql://u:p%40ss@db/x?charset=utf8mb4"),
    ("sqlite:///runs/x/x.db", set(), "sqlite:///runs/x/x.db"),
    ("journal:///runs/x/x.journal", set(), "journal:///runs/x/x.journal"),
])
def test_a_url_without_a_driver_gets_the_installed_one(url, importable, expected):
    assert with_driver(url, importable=importable) == expected


def test_the_rest_of_the_url_is_kept_byte_for_byte():
    # An escaped '@' and query options survive: only the scheme is rewritten.
    url = f"postgresql://sweeper:{SECRET}%40x@db.example:6543/optuna?sslmode=require&application_name=ftsweep"
    assert with_driver(url, importable={"psycopg2"}) == url.replace("postgresql://", "postgresql+psycopg2://")


@pytest.mark.parametrize(("url", "wanted", "install"), [
    (f"postgresql://sweeper:{SECRET}@db:5432/optuna", "psycopg", "pip install 'ftsweep[postgres]'"),
    (f"postgres://sweeper:{SECRET}@db/optuna", "psycopg", "pip install 'ftsweep[postgres]'"),
    (f"mysql://sweeper:{SECRET}@db/optuna", "mysqldb", "pip install 'ftsweep[mysql]'"),
])
def test_no_driver_installed_is_an_error_that_says_what_to_install(url, wanted, install):
    with pytest.raises(ConfigError) as error:
        with_driver(url, importable=set())
    text = str(error.value)
    scheme = url.split("://")[0]
    assert f"this {scheme}:// URL" in text
    assert f"SQLAlchemy's own choice for {'postgresql' if scheme == 'postgres' else scheme}:// is {wanted}" in text
    assert f"Fix: {install}." in text
    assert SECRET not in text and "sweeper:***@db" in text


def test_a_named_driver_that_is_missing_says_how_to_install_it():
    with pytest.raises(ConfigError) as error:
        with_driver(f"postgresql+psycopg://sweeper:{SECRET}@db/optuna", importable={"psycopg2"})
    text = str(error.value)
    assert "the psycopg driver this postgresql+psycopg:// URL names is not installed" in text
    assert "pip install 'psycopg[binary]'" in text and "postgresql://" in text
    assert SECRET not in text


def test_with_this_installation_the_urls_users_write_open_with_its_drivers():
    # The drivers ftsweep[postgres] and ftsweep[mysql] installed here: SQLAlchemy loads the dialect and the DB-API
    # module for the URL open_storage returns (create_engine connects only on first use).
    for url, driver in (("postgresql://u:pw@127.0.0.1:1/x", "psycopg2"), ("postgres://u:pw@127.0.0.1:1/x", "psycopg2"),
                        ("mysql://u:pw@127.0.0.1:1/x", "pymysql")):
        if driver == "psycopg2" and importlib.util.find_spec("psycopg") is not None:
            driver = "psycopg"
        engine = sqlalchemy.create_engine(open_storage(url))
        assert engine.dialect.driver == driver, url
        engine.dispose()


@pytest.mark.skipif(importlib.util.find_spec("psycopg") is not None, reason="psycopg 3 is installed here")
def test_the_cli_says_what_to_install_for_a_missing_driver(capsys):
    url = f"postgresql+psycopg://sweeper:{SECRET}@127.0.0.1:1/optuna"
    assert main(["status", "tiny", "--storage", url]) != 0
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "the psycopg driver this postgresql+psycopg:// URL names is not installed" in err
    assert "pip install 'psycopg[binary]'" in err
    assert SECRET not in err
