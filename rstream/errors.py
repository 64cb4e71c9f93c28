"""rstream's exception tree. Translation from redis-py errors happens in `rstream.faults` only.

    RStreamError
    ├── ConfigError (also ValueError)      a bad option or handler: raised before anything runs
    │   └── TLSConfigError (also FatalRedisError)
    ├── TransientError                     retried with backoff; never raised from run()
    │   ├── RedisUnavailable               the server cannot be reached
    │   │   └── RedisOutOfMemory           maxmemory under noeviction
    │   ├── GroupMissing                   NOGROUP: the group is created again
    │   └── StreamMissing                  no stream and make_stream=False: waited for
    ├── FatalRedisError                    retrying cannot fix it: the consumer stops
    │   ├── AuthenticationFailed
    │   ├── PermissionDenied               an ACL refused a command or a key
    │   └── WrongType                      a key holds another type than a stream
    └── ServerError                        the server refused one command (a script error, a
                                           value it cannot take): about that command only
"""
from __future__ import annotations


class RStreamError(Exception):
    """Root of every error rstream raises."""


class ConfigError(RStreamError, ValueError):
    """An option has a wrong type or value; the message names the option and the value."""


class TransientError(RStreamError):
    """A fault that time cures: rstream's threads retry with backoff."""


class RedisUnavailable(TransientError):
    """The server cannot be reached right now (connection refused, reset, timed out).

    Transient: rstream retries with backoff and never raises it to the user from `run()`
    (only `start()` does, when `start_timeout` is set and passes).
    """


class RedisOutOfMemory(RedisUnavailable):
    """OOM: the server refuses commands that need memory (``maxmemory`` reached under the
    ``noeviction`` policy).

    Transient, like an outage: it ends when memory is freed, and rstream retries with backoff.
    """


class GroupMissing(TransientError):
    """NOGROUP: the stream or its consumer group is gone (deleted, flushed, destroyed).

    Transient: rstream recreates the group and goes on.
    """


class StreamMissing(TransientError):
    """The stream does not exist and ``make_stream`` is False: rstream waits for it."""


class FatalRedisError(RStreamError):
    """A fault retrying cannot fix: wrong key type, failed AUTH, missing ACL permission,
    unsupported server. `start()`/`run()` raise it."""


class AuthenticationFailed(FatalRedisError):
    """The server refused the credentials (wrong password, unknown user, NOAUTH)."""


class PermissionDenied(FatalRedisError):
    """The user's ACL does not allow a command or a key rstream uses."""


class WrongType(FatalRedisError):
    """A key rstream uses holds a value of another type than a stream. `key` names it when
    rstream could tell which (Redis' own WRONGTYPE error does not say)."""

    def __init__(self, text: str, key: "str | None" = None) -> None:
        super().__init__(text)
        self.key = key


class TLSConfigError(ConfigError, FatalRedisError):
    """TLS cannot work as configured: a CA, certificate or key file is missing or unreadable, the
    handshake was refused (certificate not trusted, no common protocol), or the server does not
    speak TLS on that port. Waiting cannot fix it, so it is both a `ConfigError` and a
    `FatalRedisError`: `start()` raises it, a running consumer stops with it."""


class ServerError(RStreamError):
    """The server refused one command for a reason of its own (a script error, a value it
    cannot take): the command, not the connection or the consumer, is at fault."""
