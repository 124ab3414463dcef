"""PostgreSQL backends on psycopg 3: :class:`PostgresStore` for durable runs and
:class:`PostgresCache` for node results.

Install with ``pip install "kaygraph[postgres]"``. Both implement the same protocols, with
the same behaviour, as the SQLite backends of ``kaygraph.stores`` (they share its code):
one connection per object, opened on first use and shared by its threads under a lock, one
transaction per call. A server that cannot be reached is a ConnectionError naming host and
port (never the password), raised by the call that needed it.
"""

from __future__ import annotations

from typing import Any

try:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        'kaygraph.postgres needs psycopg 3: pip install "kaygraph[postgres]"') from exc

from kaygraph.stores import _check_str, _Database, _SQLCache, _SQLStore

__all__ = ["PostgresStore", "PostgresCache"]


class _Postgres(_Database):
    """A PostgreSQL database reached by a connection string or a connection of the caller's.

    A given connection must be in autocommit mode (the backends run ``BEGIN``/``COMMIT``
    themselves) and is never closed here; one made from the string is, and is made again
    after it breaks.
    """

    types = {"blob": "BYTEA", "real": "DOUBLE PRECISION", "int": "BIGINT", "norowid": ""}
    placeholder = "%s"
    begin_write = "BEGIN"
    begin_read = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"  # one snapshot
    # Held until the transaction ends: writers of one run id take turns, others never wait
    # (two ids with one hash only share turns).
    lock_run = "SELECT pg_advisory_xact_lock(hashtextextended(?, 0))"
    errors = psycopg.Error

    def __init__(self, dsn_or_connection: Any, schema: str | None) -> None:
        super().__init__()
        self._given: psycopg.Connection[Any] | None = None
        self._dsn, self._password = "", ""
        if isinstance(dsn_or_connection, str):
            try:
                params = conninfo_to_dict(dsn_or_connection)
            except psycopg.ProgrammingError as exc:
                raise ValueError("dsn_or_connection is not a PostgreSQL connection string: "
                                 f"{exc}") from None
            self._dsn, self._password = dsn_or_connection, str(params.get("password") or "")
            host = params.get("host") or params.get("hostaddr") or "localhost"
            self.where = f"{host}:{params.get('port') or 5432}"
        elif isinstance(dsn_or_connection, psycopg.Connection):
            if not dsn_or_connection.autocommit:
                raise ValueError("dsn_or_connection: pass a connection made with "
                                 "autocommit=True (the backend runs its own transactions)")
            self._given = dsn_or_connection
            self.where = f"{dsn_or_connection.info.host}:{dsn_or_connection.info.port}"
        else:
            raise TypeError("dsn_or_connection must be a connection string (str) or a "
                            f"psycopg.Connection, got {type(dsn_or_connection).__name__}")
        self._schema = schema
        # Serialises the CREATE ... IF NOT EXISTS of processes starting at once, which
        # PostgreSQL does not make safe by itself.
        self.schema = ["SELECT pg_advisory_xact_lock(7316584102)"]
        if schema is not None:
            self.schema.append(f"CREATE SCHEMA IF NOT EXISTS {self.quote(schema)}")

    def name(self, table: str) -> str:
        if self._schema is None:
            return self.quote(table)
        return f"{self.quote(self._schema)}.{self.quote(table)}"

    def _open(self) -> Any:
        if self._given is None:
            return psycopg.connect(self._dsn, autocommit=True)
        if self._given.closed:
            raise ConnectionError(f"PostgreSQL at {self.where}: the connection given is closed")
        return self._given

    def _close(self, conn: Any) -> None:
        if conn is not self._given:
            conn.close()

    def _convert(self, exc: BaseException) -> BaseException | None:
        conn = self._conn
        if conn is not None and not conn.closed:
            return None  # an error of the query; the connection still works
        self._conn = None
        if conn is not None:
            self._close(conn)
        text = str(exc).replace(self._password, "***") if self._password else str(exc)
        return ConnectionError(f"PostgreSQL at {self.where} cannot be reached: {text}")


class PostgresStore(_SQLStore):
    """A store for durable runs in PostgreSQL, for runs shared by machines.

    ``PostgresStore(dsn_or_connection, *, schema=None, serializer=None)``:
    ``dsn_or_connection`` is a libpq connection string or URL (``"postgresql://user@host:
    5432/db"``) or a ``psycopg.Connection`` in autocommit mode; ``schema`` (str) puts the
    tables ``kaygraph_runs``, ``kaygraph_checkpoints``, ``kaygraph_blobs`` and
    ``kaygraph_items`` in that schema, created if missing (None: the connection's current
    schema); ``serializer`` as in ``kaygraph.stores``. Tables are created on first use.

    Raises TypeError/ValueError for arguments of the wrong type or a malformed connection
    string, at once; ConnectionError naming host:port from the call that cannot reach the
    server. ``close()`` or ``with`` closes the connection it made.
    """

    def __init__(self, dsn_or_connection: str | psycopg.Connection[Any], *,
                 schema: str | None = None, serializer: Any = None) -> None:
        if schema is not None:
            _check_str("schema", schema)
        self._pg = _Postgres(dsn_or_connection, schema)
        self.schema = schema
        super().__init__(self._pg, serializer)

    def __repr__(self) -> str:
        return f"PostgresStore(<{self._pg.where}>, schema={self.schema!r})"


class PostgresCache(_SQLCache):
    """A cache for node results in a PostgreSQL table, shared by every process using it.

    ``PostgresCache(dsn_or_connection, *, table="kaygraph_cache", serializer=None)``:
    ``dsn_or_connection`` as for :class:`PostgresStore`; ``table`` (str), a table in the
    connection's current schema, is created on first use. ``ttl`` is measured on the client's
    ``time.time``; expired rows are misses and are purged now and then. ConnectionError
    naming host:port from ``get``/``set``/``delete``/``clear`` when the server cannot be
    reached. ``close()`` or ``with`` closes the connection it made.
    """

    def __init__(self, dsn_or_connection: str | psycopg.Connection[Any], *,
                 table: str = "kaygraph_cache", serializer: Any = None) -> None:
        self._pg = _Postgres(dsn_or_connection, None)
        self.table = table
        super().__init__(self._pg, table, serializer)

    def __repr__(self) -> str:
        return f"PostgresCache(<{self._pg.where}>, table={self.table!r})"
