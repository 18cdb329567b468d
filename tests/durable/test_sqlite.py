"""The SQLite transaction helpers: commit, rollback on error, BEGIN IMMEDIATE shutting out a second writer, and
a read transaction's snapshot."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.durable.sqlite import enable_wal, read_transaction, write_transaction


def _connect(path: Path, timeout: float = 10.0) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=timeout)
    enable_wal(db)
    return db


@pytest.fixture
def db_path(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "t.sqlite"
    db = _connect(path)
    db.execute("CREATE TABLE t(v INTEGER)")
    db.close()
    yield path


def _values(path: Path) -> list[int]:
    db = _connect(path)
    try:
        return [row[0] for row in db.execute("SELECT v FROM t ORDER BY v")]
    finally:
        db.close()


def test_write_transaction_commits_when_the_block_ends(db_path: Path) -> None:
    db = _connect(db_path)
    with write_transaction(db) as conn:
        assert conn is db and db.in_transaction
        conn.execute("INSERT INTO t VALUES (1)")
        conn.execute("INSERT INTO t VALUES (2)")
    assert not db.in_transaction
    assert _values(db_path) == [1, 2]  # seen by another connection: committed


def test_write_transaction_rolls_back_and_reraises_on_error(db_path: Path) -> None:
    db = _connect(db_path)
    with pytest.raises(ZeroDivisionError), write_transaction(db):
        db.execute("INSERT INTO t VALUES (1)")
        1 / 0  # noqa: B018 - the error that stops the block
    assert not db.in_transaction
    assert _values(db_path) == []
    with write_transaction(db):  # the connection is usable again
        db.execute("INSERT INTO t VALUES (3)")
    assert _values(db_path) == [3]


def test_write_transaction_rolls_back_on_base_exceptions_too(db_path: Path) -> None:
    db = _connect(db_path)
    with pytest.raises(KeyboardInterrupt), write_transaction(db):
        db.execute("INSERT INTO t VALUES (1)")
        raise KeyboardInterrupt
    assert not db.in_transaction
    assert _values(db_path) == []


def test_begin_immediate_shuts_out_a_second_writer_until_commit(db_path: Path) -> None:
    first = _connect(db_path)
    second = _connect(db_path, timeout=0)
    with write_transaction(first):
        first.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(sqlite3.OperationalError, match="locked"), write_transaction(second):
            pytest.fail("a second writer got in")  # pragma: no cover
        assert not second.in_transaction
    with write_transaction(second):  # free once the first committed
        second.execute("INSERT INTO t VALUES (2)")
    assert _values(db_path) == [1, 2]


def test_begin_immediate_shuts_out_a_writer_of_another_process(db_path: Path) -> None:
    """The lock is SQLite's own, on the file: another process cannot write while the transaction is open."""
    db = _connect(db_path)
    probe = (
        "import sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=0)\n"
        "try:\n"
        "    db.execute('BEGIN IMMEDIATE')\n"
        "except sqlite3.OperationalError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    print('got in')\n"
    )
    with write_transaction(db):
        db.execute("INSERT INTO t VALUES (1)")
        out = subprocess.run([sys.executable, "-c", probe, str(db_path)], capture_output=True, text=True,
                             check=True).stdout
    assert "locked" in out
    out = subprocess.run([sys.executable, "-c", probe, str(db_path)], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "got in"


def test_read_transaction_sees_one_snapshot(db_path: Path) -> None:
    reader, writer = _connect(db_path), _connect(db_path)
    with write_transaction(writer):
        writer.execute("INSERT INTO t VALUES (1)")
    with read_transaction(reader) as conn:
        assert conn is reader
        assert conn.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 1
        with write_transaction(writer):  # WAL: the writer does not wait for the reader
            writer.execute("INSERT INTO t VALUES (2)")
        assert conn.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 1  # still the snapshot
    assert reader.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 2


def test_read_transaction_ends_when_the_block_raises(db_path: Path) -> None:
    db = _connect(db_path)
    with pytest.raises(LookupError), read_transaction(db):
        db.execute("SELECT COUNT(*) FROM t").fetchone()
        raise LookupError
    assert not db.in_transaction
