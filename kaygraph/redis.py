"""A Redis cache for node results on redis-py: :class:`RedisCache`.

Install with ``pip install "kaygraph[redis]"``. It implements the core's ``Cache`` protocol
with the behaviour of the caches in ``kaygraph.stores`` (it shares their code).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

try:
    import redis
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError('kaygraph.redis needs redis-py: pip install "kaygraph[redis]"') from exc

from kaygraph.stores import BaseCache, _Closing

__all__ = ["RedisCache"]

_GLOB = re.compile(r"([*?\[\]\\])")  # special in a SCAN MATCH pattern


class RedisCache(_Closing, BaseCache):
    """A cache in Redis, shared by every process and machine using the server.

    ``RedisCache(client_or_url, *, prefix="kaygraph:", serializer=None)``:
    ``client_or_url`` is a ``redis.Redis`` client or a URL (``"redis://host:6379/0"``);
    each key is stored as ``prefix + key`` (``prefix`` a str), so caches with different
    prefixes share a server without meeting. ``ttl`` becomes the entry's expiry on the
    server (``SET ... PX``, rounded up to whole milliseconds); ``clear()`` deletes only the
    keys with this prefix (``SCAN`` + ``UNLINK``, never ``KEYS`` or ``FLUSHDB``).

    TypeError for arguments of the wrong type; ConnectionError naming the server (its URL
    without the password) from the call that cannot reach it, never a silent miss.
    ``close()`` or ``with`` closes a client made from a URL (a given client is left open).
    """

    def __init__(self, client_or_url: redis.Redis | str, *, prefix: str = "kaygraph:",
                 serializer: Any = None) -> None:
        if type(prefix) is not str:
            raise TypeError(f"prefix must be a str, got {prefix!r} ({type(prefix).__name__})")
        super().__init__(serializer)
        if isinstance(client_or_url, str):
            parts = urlsplit(client_or_url)
            host = parts.hostname or ""
            host = f"[{host}]" if ":" in host else host  # IPv6
            self.where = parts._replace(
                netloc=f"{host}:{parts.port}" if parts.port else host).geturl()
            self._client = redis.Redis.from_url(client_or_url)
            self._owned = True
        elif isinstance(client_or_url, redis.Redis):
            kw = client_or_url.connection_pool.connection_kwargs
            self.where = (f"unix://{kw['path']}" if "path" in kw else
                          f"redis://{kw.get('host', 'localhost')}:{kw.get('port', 6379)}"
                          f"/{kw.get('db', 0)}")
            self._client = client_or_url
            self._owned = False
        else:
            raise TypeError("client_or_url must be a redis.Redis or a URL str, "
                            f"got {type(client_or_url).__name__}")
        self.prefix = prefix

    @contextmanager
    def _reach(self) -> Iterator[redis.Redis]:
        try:
            yield self._client
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise ConnectionError(f"Redis at {self.where} cannot be reached: {exc}") from exc

    def _get(self, key: str) -> bytes | None:
        with self._reach() as client:
            data = client.get(self.prefix + key)
        return data.encode() if isinstance(data, str) else data  # str: decode_responses

    def _set(self, key: str, data: bytes, ttl: float | None) -> None:
        px = None if ttl is None else max(1, math.ceil(ttl * 1000))
        with self._reach() as client:
            client.set(self.prefix + key, data, px=px)

    def _delete(self, key: str) -> None:
        with self._reach() as client:
            client.delete(self.prefix + key)

    def _clear(self) -> None:
        batch: list[Any] = []
        with self._reach() as client:
            for name in client.scan_iter(match=_GLOB.sub(r"\\\1", self.prefix) + "*",
                                         count=1000):
                batch.append(name)
                if len(batch) == 500:
                    client.unlink(*batch)
                    batch.clear()
            if batch:
                client.unlink(*batch)

    def close(self) -> None:
        """Close the client if this object made it from a URL."""
        if self._owned:
            self._client.close()

    def __repr__(self) -> str:
        return f"RedisCache({self.where!r}, prefix={self.prefix!r})"
