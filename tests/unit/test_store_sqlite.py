"""The job store contract (store_contract.py), run against the SQLite store; and its data-dir lock."""

import asyncio

import pytest

from kleinserve.jobs.sqlite.store import DataDirInUse, SQLiteJobStore

from support.store_contract import *  # noqa: F403 (the contract's tests run here)


@pytest.fixture
def open_store(tmp_path):
    opened = []

    def open_store():
        for store in opened:  # one open store per database at a time: the lock says so
            if not store.closed:
                asyncio.run(store.close())
        store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        asyncio.run(store.close())


def test_a_second_server_on_the_same_data_dir_is_refused(tmp_path):
    first = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    with pytest.raises(DataDirInUse, match="another kleinserve server is using"):
        SQLiteJobStore(tmp_path / "jobs.sqlite3")
    asyncio.run(first.close())
    asyncio.run(SQLiteJobStore(tmp_path / "jobs.sqlite3").close())  # free again once closed
