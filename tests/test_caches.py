"""The cache conformance suite: every backend (fixture `cache`) behaves the same.

get/set/delete/clear, hit and miss counts, ttl expiry and its checks, JSON values only,
fresh copies, thread-safety, and a server that is down. Backend-specific tests at the end:
MemoryCache's LRU eviction, Redis key prefixes, SQLite's files, the optional imports.
"""

from __future__ import annotations

import math
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from contextlib import closing

import pytest
from conftest import free_port, server

from kaygraph import Cache
from kaygraph.stores import MemoryCache, SQLiteCache


def wait_until_missing(cache, key, limit=10.0):
    """Poll `key` until it misses; the seconds it took (fails after `limit`)."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        try:
            cache.get(key)
        except KeyError:
            return time.monotonic() - start
        time.sleep(0.01)
    pytest.fail(f"{key!r} still there {limit} s after its ttl")


def test_every_backend_is_a_cache(cache):
    assert isinstance(cache, Cache)


def test_set_then_get_returns_the_value_as_json_holds_it(cache):
    values = {"dict": {"a": [1, 2.5, None, True], "é": "✓"}, "list": [1, "two"], "str": "s",
              "int": 42, "float": 0.1, "none": None, "false": False, "tuple": (1, (2, "x")),
              "big": "b" * 100_000}
    for key, value in values.items():
        cache.set(key, value)
    for key, value in values.items():
        assert cache.get(key) == value if key != "tuple" else cache.get(key) == [1, [2, "x"]]
    cache.set("int", 43)  # set replaces
    assert cache.get("int") == 43


def test_get_returns_a_fresh_copy(cache):
    cache.set("k", {"items": [1, 2]})
    first = cache.get("k")
    first["items"].append(3)
    assert cache.get("k") == {"items": [1, 2]}
    assert cache.get("k") is not cache.get("k")


def test_a_miss_is_a_key_error_and_hits_and_misses_count_gets(cache):
    assert (cache.hits, cache.misses) == (0, 0)
    with pytest.raises(KeyError):
        cache.get("absent")
    cache.set("k", 1)
    cache.get("k")
    cache.get("k")
    with pytest.raises(KeyError):
        cache.get("other")
    assert (cache.hits, cache.misses) == (2, 2)


def test_delete_removes_a_key_and_a_missing_key_is_no_error(cache):
    cache.set("a", 1)
    cache.set("b", 2)
    cache.delete("a")
    cache.delete("a")
    cache.delete("never")
    with pytest.raises(KeyError):
        cache.get("a")
    assert cache.get("b") == 2


def test_clear_removes_every_entry(cache):
    for i in range(600):  # more than one batch of Redis's SCAN + UNLINK
        cache.set(f"k{i}", i)
    cache.clear()
    for i in range(600):
        with pytest.raises(KeyError):
            cache.get(f"k{i}")
    cache.set("after", 1)  # still usable
    assert cache.get("after") == 1


def test_an_entry_expires_after_its_ttl_and_not_before(cache):
    cache.set("short", "s", ttl=0.2)
    cache.set("long", "l", ttl=600)
    cache.set("forever", "f")
    cache.set("renewed", "r", ttl=0.2)
    cache.set("renewed", "r2")  # a new set without ttl never expires
    assert cache.get("short") == "s"  # just set: well within 0.2 s
    wait_until_missing(cache, "short")
    assert cache.get("long") == "l"
    assert cache.get("forever") == "f"
    assert cache.get("renewed") == "r2"
    cache.set("int_ttl", 1, ttl=600)  # an int number of seconds is fine
    assert cache.get("int_ttl") == 1


@pytest.mark.parametrize("ttl", [0, -1, -0.5, math.nan, math.inf, -math.inf])
def test_ttl_must_be_a_finite_number_of_seconds_above_zero(cache, ttl):
    with pytest.raises(ValueError, match=f"ttl must be a finite number of seconds > 0, got {ttl}"):
        cache.set("k", 1, ttl=ttl)
    with pytest.raises(KeyError):
        cache.get("k")  # nothing stored


@pytest.mark.parametrize("ttl", ["10", True, [1]])
def test_ttl_of_the_wrong_type_is_a_type_error_naming_it(cache, ttl):
    with pytest.raises(TypeError, match="ttl must be a number of seconds or None"):
        cache.set("k", 1, ttl=ttl)


@pytest.mark.parametrize("value", [{1, 2}, object(), {"nested": b"bytes"}, float])
def test_a_value_json_cannot_hold_is_a_type_error_naming_the_key(cache, value):
    cache.set("k", "old")
    with pytest.raises(TypeError, match="cache value for key 'k' cannot be serialised by json"):
        cache.set("k", value)
    assert cache.get("k") == "old"  # the entry there stays


@pytest.mark.parametrize("key", [1, None, b"k", ("a",)])
def test_keys_must_be_str(cache, key):
    for call in (lambda: cache.get(key), lambda: cache.set(key, 1), lambda: cache.delete(key)):
        with pytest.raises(TypeError, match="cache key must be a str"):
            call()
    assert (cache.hits, cache.misses) == (0, 0)


def test_threads_share_one_cache_object(cache):
    threads_n, rounds = 8, 60
    barrier = threading.Barrier(threads_n)
    wrong = []

    def work(t):
        barrier.wait()
        for i in range(rounds):
            cache.set(f"t{t}-{i}", [t, i])
            if cache.get(f"t{t}-{i}") != [t, i]:
                wrong.append((t, i))
            try:
                cache.get(f"missing-{t}-{i}")
            except KeyError:
                pass

    threads = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
    assert cache.hits == threads_n * rounds and cache.misses == threads_n * rounds


@pytest.mark.parametrize("backend", ["redis", "postgres"])
def test_a_server_that_is_down_is_a_connection_error_never_a_miss(backend):
    port = free_port()
    if backend == "redis":
        server("KAYGRAPH_TEST_REDIS_URL", "redis")
        from kaygraph.redis import RedisCache

        cache = RedisCache(f"redis://:s3cret-pw@127.0.0.1:{port}/0")
        name = "Redis"
    else:
        server("KAYGRAPH_TEST_POSTGRES_DSN", "psycopg")
        from kaygraph.postgres import PostgresCache

        cache = PostgresCache(f"postgresql://kg:s3cret-pw@127.0.0.1:{port}/kg")
        name = "PostgreSQL"
    for call in (lambda: cache.get("k"), lambda: cache.set("k", 1),
                 lambda: cache.delete("k"), cache.clear):
        with pytest.raises(ConnectionError) as info:
            call()
        msg = str(info.value)
        assert name in msg and f"127.0.0.1:{port}" in msg and "s3cret-pw" not in msg, msg
    assert (cache.hits, cache.misses) == (0, 0)
    assert "s3cret-pw" not in repr(cache)
    cache.close()


# ---------------------------------------------------------------- MemoryCache only

def test_memory_cache_evicts_the_least_recently_used_entry():
    cache = MemoryCache(max_entries=2)
    cache.set("a", 1)
    cache.set("b", 2)
    cache.get("a")  # now b is the least recently used
    cache.set("c", 3)
    assert cache.get("a") == 1 and cache.get("c") == 3
    with pytest.raises(KeyError):
        cache.get("b")
    cache.set("a", 10)  # a set refreshes too: c goes next
    cache.set("d", 4)
    with pytest.raises(KeyError):
        cache.get("c")
    assert cache.get("a") == 10 and cache.get("d") == 4


@pytest.mark.parametrize(("value", "error"), [(0, ValueError), (-5, ValueError),
                                              (2.0, TypeError), ("10", TypeError)])
def test_memory_cache_max_entries_is_an_int_of_at_least_one(value, error):
    with pytest.raises(error, match="max_entries must be"):
        MemoryCache(max_entries=value)


# ---------------------------------------------------------------- SQLite only

def test_sqlite_cache_file_is_created_on_first_use_and_shared_by_objects(tmp_path):
    path = tmp_path / "cache.sqlite3"
    first = SQLiteCache(path)
    assert not path.exists()
    first.set("k", {"v": 1})
    with SQLiteCache(str(path)) as second:
        assert second.get("k") == {"v": 1}
        second.delete("k")
    with pytest.raises(KeyError):
        first.get("k")
    first.close()


def test_sqlite_cache_purges_expired_rows_now_and_then(tmp_path):
    path = tmp_path / "cache.sqlite3"
    with SQLiteCache(path) as cache:
        cache.set("old", 1, ttl=0.05)
        cache.set("kept", 2)
        wait_until_missing(cache, "old")
        for i in range(SQLiteCache._PURGE_EVERY):
            cache.set(f"k{i % 10}", i)
        with closing(sqlite3.connect(path)) as conn:
            keys = {k for (k,) in conn.execute("SELECT key FROM kaygraph_cache")}
    assert "old" not in keys and "kept" in keys


def test_sqlite_cache_path_that_is_not_a_database_is_a_value_error(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a database\n" * 100)
    with pytest.raises(ValueError, match="is not an SQLite database"):
        SQLiteCache(path).get("k")


# ---------------------------------------------------------------- Redis only

def test_redis_keys_carry_the_prefix_and_clear_deletes_only_its_own():
    url = server("KAYGRAPH_TEST_REDIS_URL", "redis")
    import redis

    from kaygraph.redis import RedisCache

    tag = uuid.uuid4().hex[:8]
    client = redis.Redis.from_url(url)
    first = RedisCache(client, prefix=f"kgtest:{tag}:a[1]*:")  # glob characters in it
    second = RedisCache(url, prefix=f"kgtest:{tag}:a")  # a prefix of the first's prefix
    try:
        first.set("k", 1)
        second.set("k", 2)
        client.set(f"kgtest:{tag}:other", b"raw")
        assert client.get(f"kgtest:{tag}:a[1]*:k") == b"1"
        assert first.get("k") == 1 and second.get("k") == 2
        first.clear()
        with pytest.raises(KeyError):
            first.get("k")
        assert second.get("k") == 2 and client.get(f"kgtest:{tag}:other") == b"raw"
        first.set("k", 1, ttl=30)
        assert 0 < client.pttl(f"kgtest:{tag}:a[1]*:k") <= 30_000  # SET ... PX
    finally:
        second.clear()
        client.delete(f"kgtest:{tag}:other", f"kgtest:{tag}:a[1]*:k")
        first.close()  # a given client stays open
        assert client.ping()
        client.close()
        second.close()


def test_redis_client_with_decode_responses_works():
    url = server("KAYGRAPH_TEST_REDIS_URL", "redis")
    import redis

    from kaygraph.redis import RedisCache

    client = redis.Redis.from_url(url, decode_responses=True)
    cache = RedisCache(client, prefix=f"kgtest:{uuid.uuid4().hex[:8]}:")
    cache.set("k", {"é": [1]})
    assert cache.get("k") == {"é": [1]}
    cache.clear()
    client.close()
    with pytest.raises(TypeError, match="client_or_url must be a redis.Redis or a URL"):
        RedisCache(6379)
    with pytest.raises(TypeError, match="prefix must be a str"):
        RedisCache(url, prefix=None)


# ---------------------------------------------------------------- the optional modules

@pytest.mark.parametrize(("module", "library", "extra"), [
    ("kaygraph.postgres", "psycopg", "postgres"), ("kaygraph.redis", "redis", "redis")])
def test_an_optional_module_without_its_library_names_the_extra(module, library, extra):
    code = f"import sys; sys.modules[{library!r}] = None; import {module}"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0
    assert f'ImportError: {module} needs' in proc.stderr
    assert f'pip install "kaygraph[{extra}]"' in proc.stderr
