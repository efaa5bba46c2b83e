"""The store file's schema migrations (``core/store/migrations.py``): a file of an older wwts is
upgraded in place and keeps its rows, each step runs once, a newer file is refused and left as it
was, and maintenance (``wwts store info``) reads an older file without changing it."""

from __future__ import annotations

import logging
import sqlite3

import numpy as np
import pytest

from wwts.core.store import NullStore, SqliteStore, StoreFileError, TextKey, model_key, open_store
from wwts.core.store import migrations


@pytest.fixture
def wwts_log(caplog, monkeypatch):
    """Warnings of the ``wwts`` logger, even when an earlier CLI test stopped its propagation."""
    monkeypatch.setattr(logging.getLogger("wwts"), "propagate", True)
    with caplog.at_level(logging.WARNING, logger="wwts"):
        yield caplog


#: The schema version this wwts writes (read before any test adds a step).
NOW = migrations.schema_version()

def _key():
    return model_key("tiny", {"weights": {"files": "x"}, "dtype": "float32"})


def _version(path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA user_version").fetchone()[0]


@pytest.fixture
def v1_file(tmp_path):
    """A store file as this wwts writes it today (schema 2: captions table), holding one image and one label."""
    path = tmp_path / _key().filename  # where open_store looks for this key's file
    store = SqliteStore(path, _key())
    store.remember("h1", 40, 30)
    store.put({"h1": np.array([0.6, 0.8], dtype=np.float32), TextKey("一张猫的照片。", "猫", "{}"): np.ones(2)})
    store.close()
    assert _version(path) == migrations.schema_version() == NOW
    return path


@pytest.fixture
def v2(monkeypatch):
    """A later wwts: one more migration (a column), counting its runs."""
    runs = []

    def _add_source(conn):
        runs.append(1)
        conn.execute("ALTER TABLE images ADD COLUMN source TEXT")

    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, _add_source])
    return runs


def test_an_older_file_is_upgraded_in_place_keeps_its_rows_and_each_step_runs_once(v1_file, v2):
    store = SqliteStore(v1_file, _key())
    assert v2 == [1] and _version(v1_file) == NOW + 1
    assert store.get(["h1"])["h1"].tolist() == pytest.approx([0.6, 0.8])
    assert TextKey("一张猫的照片。", "猫", "{}") in store.get([TextKey("一张猫的照片。", "猫", "{}")])
    assert store.stats()["photos"] == 1 and store.stats()["texts"] == 1
    store.put({"h2": np.array([1.0, 0.0], dtype=np.float32)})  # the upgraded file takes new rows
    store.close()
    with sqlite3.connect(v1_file) as conn:
        assert "source" in [row[1] for row in conn.execute("PRAGMA table_info(images)")]
    SqliteStore(v1_file, _key()).close()  # up to date now: nothing runs again
    assert v2 == [1]


def test_a_new_file_runs_every_migration_once(tmp_path, v2):
    SqliteStore(tmp_path / "new.sqlite", _key()).close()
    assert v2 == [1] and _version(tmp_path / "new.sqlite") == NOW + 1


def test_a_failing_migration_leaves_the_file_as_it_was(v1_file, monkeypatch):
    def _broken(conn):
        conn.execute("CREATE TABLE half (x)")
        conn.execute("NOT SQL")

    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, _broken])
    with pytest.raises(sqlite3.Error):
        SqliteStore(v1_file, _key())
    with sqlite3.connect(v1_file) as conn:
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'half'").fetchone() is None
    assert _version(v1_file) == NOW


def test_maintenance_reads_an_older_file_without_upgrading_it(v1_file, v2):
    store = SqliteStore(v1_file, None)  # wwts store info / prune
    assert store.stats()["photos"] == 1
    store.close()
    assert v2 == [] and _version(v1_file) == NOW


def test_a_newer_file_is_refused_and_left_as_it_was(v1_file, wwts_log):
    with sqlite3.connect(v1_file) as conn:
        conn.execute("PRAGMA user_version = 7")
    with pytest.raises(StoreFileError, match=f"newer wwts .schema 7, this one reads {NOW}") as caught:
        SqliteStore(v1_file, _key())
    assert caught.value.kind == "newer"
    assert isinstance(open_store(v1_file.parent, _key()), NullStore)  # a run goes on without a store
    assert "newer wwts" in wwts_log.text
    with sqlite3.connect(v1_file) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 7
        assert conn.execute("SELECT COUNT(*) FROM images").fetchone()[0] == 1
