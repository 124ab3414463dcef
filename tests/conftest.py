"""Fixtures `store` and `cache`: one of each backend, on a real database or server.

PostgreSQL and Redis come from the environment (`.ci/run` starts both on 127.0.0.1):
KAYGRAPH_TEST_POSTGRES_DSN and KAYGRAPH_TEST_REDIS_URL. Without them their parameters skip,
saying why, except under KAYGRAPH_CI=1, where they fail: CI never skips a backend. Every
test gets its own schema, table or key prefix, so suites run side by side on one server.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from kaygraph.stores import MemoryCache, MemoryStore, SQLiteCache, SQLiteStore

IN_CI = os.environ.get("KAYGRAPH_CI") == "1"
STORE_BACKENDS = ["memory", "sqlite", "postgres"]
CACHE_BACKENDS = ["memory", "sqlite", "redis", "postgres"]


def server(variable: str, module: str) -> str:
    """The value of `variable`, with `module` importable; skip (fail in CI) otherwise."""
    value = os.environ.get(variable)
    reason = None
    if not value:
        reason = f"{variable} is not set (.ci/run starts the server and sets it)"
    else:
        try:
            __import__(module)
        except ImportError as exc:
            reason = f"{module} is not installed ({exc})"
    if reason is None:
        return value  # type: ignore[return-value]
    if IN_CI:
        pytest.fail(f"KAYGRAPH_CI=1 but {reason}: CI must test every backend")
    pytest.skip(reason)


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


class StoreBackend:
    """Makes stores of one backend on fresh databases, and reopens them.

    `new()` a store on an empty database; `reopen(store)` another object on the same
    database (MemoryStore: the same object, it is one database); `size(store)` the bytes it
    holds; `child_code(store)` Python source that makes `store` in another process.
    """

    def __init__(self, name: str, tmp_path: Path) -> None:
        self.name, self.tmp_path = name, tmp_path
        self.made: list[Any] = []
        self.schemas: list[str] = []
        if name == "postgres":
            self.dsn = server("KAYGRAPH_TEST_POSTGRES_DSN", "psycopg")

    def new(self, serializer: Any = None) -> Any:
        if self.name == "memory":
            store: Any = MemoryStore(serializer)
        elif self.name == "sqlite":
            store = SQLiteStore(self.tmp_path / f"{unique('store')}.sqlite3", serializer)
        else:
            from kaygraph.postgres import PostgresStore

            self.schemas.append(unique("kgtest"))
            store = PostgresStore(self.dsn, schema=self.schemas[-1], serializer=serializer)
        self.made.append(store)
        return store

    def reopen(self, store: Any) -> Any:
        if self.name == "memory":
            return store
        if self.name == "sqlite":
            twin: Any = SQLiteStore(store.path)
        else:
            from kaygraph.postgres import PostgresStore

            twin = PostgresStore(self.dsn, schema=store.schema)
        self.made.append(twin)
        return twin

    def child_code(self, store: Any) -> str:
        if self.name == "sqlite":
            return f"from kaygraph.stores import SQLiteStore\nstore = SQLiteStore({store.path!r})"
        assert self.name == "postgres", "a MemoryStore cannot be shared with another process"
        return (f"from kaygraph.postgres import PostgresStore\n"
                f"store = PostgresStore({self.dsn!r}, schema={store.schema!r})")

    def size(self, store: Any) -> int:
        if self.name == "memory":
            return sum(len(r[7]) + len(r[6]) for rows in store._rows.values() for r in rows) + sum(
                len(d) for blobs in store._blobs.values() for d in blobs.values())
        if self.name == "sqlite":
            if not os.path.exists(store.path):
                return 0
            with closing(sqlite3.connect(store.path)) as conn:  # fold the WAL in first
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return os.path.getsize(store.path)
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relkind = 'r'", (store.schema,)).fetchone()
        return int(row[0]) if row else 0

    def cleanup(self) -> None:
        for store in self.made:
            if hasattr(store, "close"):
                store.close()
        if self.schemas:
            import psycopg

            with psycopg.connect(self.dsn, autocommit=True) as conn:
                for schema in self.schemas:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


class CacheBackend:
    """Makes caches of one backend, each with its own table or key prefix."""

    def __init__(self, name: str, tmp_path: Path) -> None:
        self.name, self.tmp_path = name, tmp_path
        self.made: list[Any] = []
        self.tables: list[str] = []
        if name == "postgres":
            self.dsn = server("KAYGRAPH_TEST_POSTGRES_DSN", "psycopg")
        if name == "redis":
            self.url = server("KAYGRAPH_TEST_REDIS_URL", "redis")

    def new(self, **kwargs: Any) -> Any:
        if self.name == "memory":
            cache: Any = MemoryCache(**kwargs)
        elif self.name == "sqlite":
            cache = SQLiteCache(self.tmp_path / f"{unique('cache')}.sqlite3", **kwargs)
        elif self.name == "redis":
            from kaygraph.redis import RedisCache

            cache = RedisCache(self.url, prefix=f"{unique('kgtest')}:", **kwargs)
        else:
            from kaygraph.postgres import PostgresCache

            self.tables.append(unique("kgtest_cache"))
            cache = PostgresCache(self.dsn, table=self.tables[-1], **kwargs)
        self.made.append(cache)
        return cache

    def cleanup(self) -> None:
        for cache in self.made:
            if self.name == "redis":
                cache.clear()
            if hasattr(cache, "close"):
                cache.close()
        if self.tables:
            import psycopg

            with psycopg.connect(self.dsn, autocommit=True) as conn:
                for table in self.tables:
                    conn.execute(f'DROP TABLE IF EXISTS "{table}"')


@pytest.fixture(params=STORE_BACKENDS)
def store_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    backend = StoreBackend(request.param, tmp_path)
    yield backend
    backend.cleanup()


@pytest.fixture
def store(store_backend: StoreBackend) -> Any:
    """A store of each backend, on an empty database."""
    return store_backend.new()


@pytest.fixture(params=CACHE_BACKENDS)
def cache_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    backend = CacheBackend(request.param, tmp_path)
    yield backend
    backend.cleanup()


@pytest.fixture
def cache(cache_backend: CacheBackend) -> Any:
    """A cache of each backend, empty."""
    return cache_backend.new()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
