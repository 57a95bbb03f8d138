"""A gateway store that is damaged (garbage, truncated) or cannot be opened stops the start with lines that name
the file and what to do (restore it, move it aside, or `ktrader reset`), a configuration error (exit 2): not
"unexpected NotADBError" with no file named."""

from __future__ import annotations

import os
from pathlib import Path

import apsw
import pytest

from common.config import ConfigError
from server.store import Store, StoreUnusable


def small_store(path: Path) -> None:
    s = Store(path)
    with s.write():
        for i in range(300):
            s.set_meta(f"k{i}", "x" * 200)
    s.close()


def text(e: StoreUnusable) -> str:
    return f"error: {e}"  # as the gateway's command prints a configuration error (tools/cli.py)


@pytest.mark.parametrize("prewrite", [False, True])
def test_a_store_of_random_bytes_is_named_with_what_to_do(tmp_path: Path, prewrite: bool) -> None:
    path = tmp_path / "run" / "db" / "gateway.sqlite"
    path.parent.mkdir(parents=True)
    path.write_bytes(os.urandom(8192))
    with pytest.raises(StoreUnusable) as caught:
        Store(path, prewrite=prewrite)
    lines = text(caught.value).splitlines()
    assert lines[0] == f"error: store: {path} is damaged (SQLite: file is not a database)", lines
    assert "from a backup" in lines[1] and "aside" in lines[1], lines
    assert f"`ktrader reset --run-dir {tmp_path / 'run'}`" in lines[1], lines
    assert path.read_bytes() != b""  # (nothing written over what may still be rescued)


def test_a_truncated_store_is_named_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sqlite"
    small_store(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreUnusable) as caught:
        Store(path, prewrite=True)
    msg = text(caught.value)
    assert f"{path} is damaged (SQLite: database disk image is malformed)" in msg, msg
    assert "from a backup" in msg and "ktrader reset" not in msg, msg  # (not in a run folder: no reset to name)


def test_a_folder_where_the_store_should_be_is_told_as_unopenable(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sqlite"
    path.mkdir()
    with pytest.raises(StoreUnusable) as caught:
        Store(path)
    e = caught.value
    assert "damaged" not in text(e)
    assert f"{path} cannot be opened or written" in text(e) and "read and write" in text(e), text(e)


def test_a_sound_store_still_opens(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sqlite"
    small_store(path)
    s = Store(path, prewrite=True)
    try:
        assert s.get_meta("k299") == "x" * 200
    finally:
        s.close()


def test_a_nearly_full_disk_at_the_wal_pre_write_is_told_as_unwritable(tmp_path: Path, monkeypatch) -> None:
    """Less room than the WAL's pre-write (a few MB): an OSError there, not SQLite's (review)."""
    import errno

    from server import store as store_module

    def full(*a: object, **k: object) -> bool:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module, "prewrite_wal", full)
    path = tmp_path / "gateway.sqlite"
    with pytest.raises(StoreUnusable) as caught:
        Store(path, prewrite=True)
    assert f"{path} cannot be opened or written" in text(caught.value) and "No space left" in text(caught.value)


def test_a_store_a_newer_ktrader_wrote_is_refused_untouched(tmp_path: Path) -> None:
    """(an older checkout started on a newer one's run folder: it would misread the orders)"""
    from server.query_history import QueryHistory
    from server.store import SCHEMA_VERSION
    from server.store_errors import StoreTooNew

    path = tmp_path / "run" / "db" / "gateway.sqlite"
    small_store(path)
    s = Store(path)
    s.db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    s.close()
    before = path.read_bytes()
    with pytest.raises(StoreTooNew) as caught:
        Store(path, prewrite=True)
    assert isinstance(caught.value, ConfigError)  # (the gateway's command: two lines, exit 2)
    lines = f"error: {caught.value}".splitlines()
    assert lines[0] == (
        f"error: store: {path} was written by a newer ktrader (schema v{SCHEMA_VERSION + 1}; this one reads up to "
        f"v{SCHEMA_VERSION})"
    ), lines
    assert "run the ktrader that wrote it" in lines[1] and "--run-dir" in lines[1], lines
    assert path.read_bytes() == before
    # the query history (opened at the gateway's first recorded query) says the same
    qh_path = tmp_path / "run" / "data" / "queries.sqlite"
    QueryHistory(qh_path).close()
    db = apsw.Connection(str(qh_path))
    db.execute("PRAGMA user_version=999")
    db.close()
    with pytest.raises(StoreTooNew):
        QueryHistory(qh_path)
