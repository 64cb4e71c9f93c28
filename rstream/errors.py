"""rstream's exception tree. Translation from redis-py errors happens in `rstream.connection`."""
from __future__ import annotations


class RStreamError(Exception):
    """Root of every error rstream raises."""


class ConfigError(RStreamError, ValueError):
    """An option has a wrong type or value; the message names the option and the value."""


class RedisUnavailable(RStreamError):
    """The server cannot be reached right now (connection refused, reset, timed out).

    Transient: rstream retries with backoff and never raises it to the user from `run()`.
    """


class RedisOutOfMemory(RedisUnavailable):
    """OOM: the server refuses commands that need memory (``maxmemory`` reached under the
    ``noeviction`` policy).

    Transient, like an outage: it ends when memory is freed, and rstream retries with backoff.
    """


class GroupMissing(RStreamError):
    """NOGROUP: the stream or its consumer group is gone (deleted, flushed, destroyed).

    Transient: rstream recreates the group and goes on.
    """


class FatalRedisError(RStreamError):
    """A fault retrying cannot fix: wrong key type, failed AUTH, missing ACL permission,
    unsupported server. `start()`/`run()` raise it."""


class TLSConfigError(ConfigError, FatalRedisError):
    """TLS cannot work as configured: a CA, certificate or key file is missing or unreadable, the
    handshake was refused (certificate not trusted, no common protocol), or the server does not
    speak TLS on that port. Waiting cannot fix it, so it is both a `ConfigError` and a
    `FatalRedisError`: `start()` raises it, a running consumer stops with it."""


class StreamMissing(RStreamError):
    """The stream does not exist and ``make_stream`` is False: rstream waits for it."""
