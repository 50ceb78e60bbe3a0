"""``PARLEY_REDIS_URL`` parsing: plain URLs as redis-py reads them, Sentinel URLs into sentinels,
service and database, the broker's kombu form, and clear errors for a malformed URL. No server:
what connects to a real Sentinel set-up is ``tests/ops/test_redis_sentinel.py``."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from redis import Redis
from redis.sentinel import SentinelConnectionPool

from shared.jobs.broker_transport import Channel, SentinelChannel
from shared.jobs.queue import broker_keyprefix, create_celery
from shared.redis_io.url import SENTINEL_PORT, RedisUrl, parse_redis_url, redact
from shared.settings import Settings


def test_a_sentinel_url_names_sentinels_service_and_database() -> None:
    got = parse_redis_url("redis+sentinel://10.0.0.1:26379,sentinel-b:26380,[::1]/parley/3")
    assert got == RedisUrl(
        url="redis+sentinel://10.0.0.1:26379,sentinel-b:26380,[::1]/parley/3",
        sentinels=(("10.0.0.1", 26379), ("sentinel-b", 26380), ("::1", SENTINEL_PORT)),
        service="parley",
        db=3,
    )
    assert got.is_sentinel
    one = parse_redis_url("redis+sentinel://s1:5000/mymaster")
    assert (one.sentinels, one.service, one.db) == ((("s1", 5000),), "mymaster", 0)
    assert parse_redis_url("redis+sentinel://s1:5000/mymaster/").db == 0


def test_a_sentinel_url_carries_the_servers_credentials() -> None:
    got = parse_redis_url("redis+sentinel://:p%40ss@s1:1,s2:2/svc/1")
    assert (got.username, got.password) == (None, "p@ss")
    assert got.redacted == "redis+sentinel://:***@s1:1,s2:2/svc/1"
    named = parse_redis_url("redis+sentinel://app:pw@s1:1/svc")
    assert (named.username, named.password) == ("app", "pw")


def test_the_broker_gets_kombus_sentinel_form_and_the_service() -> None:
    got = parse_redis_url("redis+sentinel://:pw@s1:1,[::1]:2/svc/4")
    assert got.broker_url == "sentinel://:pw@s1:1/4;sentinel://:pw@[::1]:2/4"
    assert got.broker_transport_options == {"master_name": "svc"}

    settings = Settings(redis_url="redis+sentinel://s1:26379,s2:26380/svc/2", redis_prefix="x")
    app = create_celery(settings)
    options = app.conf.broker_transport_options
    assert options["master_name"] == "svc"
    assert options["global_keyprefix"] == broker_keyprefix(settings)  # Parley's own kept
    assert options["visibility_timeout"] == 3600 and options["socket_timeout"] == 10
    conn = app.connection_for_write()
    assert conn.transport.Channel is SentinelChannel  # kombu's Sentinel one, as Parley's
    assert conn.alt == ["sentinel://s1:26379/2", "sentinel://s2:26380/2"]


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://:pw@cache.internal:6380/2",
        "rediss://cache.internal:6380/0",
        "unix:///run/redis/redis.sock",
    ],
)
def test_plain_urls_stay_as_they_are(url: str) -> None:
    got = parse_redis_url(url)
    assert got == RedisUrl(url=url) and not got.is_sentinel
    assert got.broker_url == url and got.broker_transport_options == {}
    client = got.client(socket_timeout=3, socket_connect_timeout=1)
    same = Redis.from_url(url, socket_timeout=3, socket_connect_timeout=1)
    assert type(client) is Redis
    mine, theirs = client.connection_pool, same.connection_pool
    assert mine.connection_class is theirs.connection_class
    plain = (str, int, float, type(None))  # not the per-pool helper objects redis-py adds
    assert {k: v for k, v in mine.connection_kwargs.items() if isinstance(v, plain)} == {
        k: v for k, v in theirs.connection_kwargs.items() if isinstance(v, plain)
    }
    assert {"host", "path"} & set(mine.connection_kwargs)
    app = create_celery(Settings(redis_url=url))
    assert app.conf.broker_url == url
    assert app.connection_for_write().transport.Channel is Channel


def test_a_sentinel_client_asks_the_sentinels_for_the_primary() -> None:
    got = parse_redis_url("redis+sentinel://:pw@s1:1,s2:2/svc/5")
    client = got.client(socket_timeout=3, socket_connect_timeout=1)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "svc"
    assert pool.connection_kwargs["db"] == 5 and pool.connection_kwargs["password"] == "pw"
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [1, 2]
    # The sentinels get the timeouts, not the servers' password.
    assert sentinels[0].connection_pool.connection_kwargs["password"] is None
    assert sentinels[0].connection_pool.connection_kwargs["socket_timeout"] == 3
    client.close()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://cache:6379/0", "must start with redis://, rediss://, unix:// or redis+sentinel"),
        ("cache:6379", "must start with redis://"),
        ("redis://cache:port/0", "Port could not be cast to integer"),
        ("redis+sentinel://s1:26379", "no service name"),
        ("redis+sentinel://s1:26379/", "no service name"),
        ("redis+sentinel:///svc", "no sentinel host"),
        ("redis+sentinel://s1:x/svc", "sentinel port 'x' of 's1:x' is not a port number"),
        ("redis+sentinel://s1:70000/svc", "is not a port number"),
        ("redis+sentinel://s1:/svc", "has an empty port"),
        ("redis+sentinel://s1,,s2/svc", "an empty sentinel address"),
        ("redis+sentinel://s1:1,/svc", "an empty sentinel address"),
        ("redis+sentinel://::1:5/svc", "write an IPv6 host as [HOST]:PORT"),
        ("redis+sentinel://[::1/svc", "is not [IPv6] or [IPv6]:PORT"),
        ("redis+sentinel://s1/svc/zero", "database 'zero' is not a number"),
        ("redis+sentinel://s1/svc/0/extra", "unexpected path after the database: /extra"),
        ("redis+sentinel://s1/svc?db=1", "query parameters and fragments are not supported"),
    ],
)
def test_a_malformed_url_is_refused_naming_the_problem(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match="expected|must start|Port") as caught:
        parse_redis_url(url)
    assert problem in str(caught.value)
    with pytest.raises(ValidationError) as settings_error:
        Settings(redis_url=url)
    assert problem in str(settings_error.value)


def test_errors_never_show_the_password() -> None:
    secret = "hunter2-secret"
    for url in (f"redis+sentinel://:{secret}@s1:x/svc", f"redis://:{secret}@cache:port/0"):
        with pytest.raises(ValidationError) as caught:
            Settings(redis_url=url)
        assert secret not in str(caught.value) and ":***@" in str(caught.value)
    assert redact(f"redis://user:{secret}@h:1/0") == "redis://user:***@h:1/0"
    assert redact("redis://h:1/0") == "redis://h:1/0"
