"""Translation of redis-py errors onto rstream's exception tree (`rstream.errors`).

Three kinds matter to the threads (`rstream.supervise`): transient faults are retried with
backoff (`RedisUnavailable`, including an OOM refusal), a missing group is created again
(`GroupMissing`), and fatal ones stop the consumer (`FatalRedisError`). The text never holds a
password: redis-py's messages name hosts and ports, not credentials.
"""
from __future__ import annotations

import ssl
from typing import Tuple, Type

import redis.exceptions as rex

from . import tls
from .errors import (AuthenticationFailed, FatalRedisError, GroupMissing, PermissionDenied,
                     RedisOutOfMemory, RedisUnavailable, RStreamError, ServerError, TLSConfigError,
                     WrongType)

_FATAL_PREFIXES = ("ERR unknown command", "ERR unknown subcommand", "NOSCRIPT", "CROSSSLOT")
# A command a script calls refused at maxmemory, as Redis 6.2 words it.
_SCRIPT_OOM = "-OOM command not allowed"
# A command a script calls on a key of another type, as Redis 6.2 wraps it
# ("Error running script ...: @user_script:17: WRONGTYPE Operation against a key ...").
_SCRIPT_WRONGTYPE = ": WRONGTYPE "
# A command a script calls that the user's ACL refuses (Redis 7 and 6.2 say it so).
_SCRIPT_ACL_REFUSAL = "The user executing the script can't run this command"
# XINFO's answer when the stream is gone: the same fault as NOGROUP, the same cure.
_NO_SUCH_KEY = ("no such key", "ERR no such key")
# UNBLOCKED: CLIENT UNBLOCK ... ERROR woke a blocked read; reading again is the answer.
_TRANSIENT_PREFIXES = ("LOADING", "BUSY ", "MASTERDOWN", "READONLY", "TRYAGAIN", "CLUSTERDOWN",
                       "MOVED", "ASK ", "UNBLOCKED")

# redis-py cuts the error code off the text of the replies it has a class for, so the prefix
# tables above never see these: they are told apart by class, and the code goes back into the
# text for the logs. MasterDownError before ClusterDownError, MovedError before AskError:
# subclasses first.
_BY_CLASS: Tuple[Tuple[Type[Exception], str, Type[RStreamError]], ...] = (
    (rex.OutOfMemoryError, "OOM", RedisOutOfMemory),
    (rex.ReadOnlyError, "READONLY", RedisUnavailable),
    (rex.MasterDownError, "MASTERDOWN", RedisUnavailable),
    (rex.ClusterDownError, "CLUSTERDOWN", RedisUnavailable),
    (rex.TryAgainError, "TRYAGAIN", RedisUnavailable),
    (rex.MovedError, "MOVED", RedisUnavailable),
    (rex.AskError, "ASK", RedisUnavailable),
    (rex.NoScriptError, "NOSCRIPT", FatalRedisError),
    (rex.ClusterCrossSlotError, "CROSSSLOT", FatalRedisError),
)


def translate(exc: BaseException) -> RStreamError:
    """Map a redis-py error onto rstream's exception tree."""
    text = str(exc)
    if isinstance(exc, (rex.AuthenticationError, rex.AuthorizationError)):
        return AuthenticationFailed(f"authentication failed: {text}")
    if isinstance(exc, rex.NoPermissionError) or text.startswith("NOPERM") \
            or _SCRIPT_ACL_REFUSAL in text:
        return PermissionDenied(f"ACL permission missing: {text}")
    for cls, code, kind in _BY_CLASS:
        if isinstance(exc, cls):
            return kind(f"{code} {text}")
    if isinstance(exc, rex.RedisClusterException):
        # Reading a cluster's slot map again failed (no node reachable, the slot not covered
        # while a replica takes over): the cluster is down for now.
        return RedisUnavailable(f"cluster: {text or type(exc).__name__}")
    if isinstance(exc, (rex.ConnectionError, rex.TimeoutError, OSError)):
        if "invalid password" in text.lower() or "WRONGPASS" in text or "NOAUTH" in text:
            return AuthenticationFailed(f"authentication failed: {text}")
        if isinstance(tls.handshake_refusal(exc), ssl.SSLCertVerificationError):
            # Only from a handshake (Link._connect says more); other SSL errors mid-stream
            # are a broken connection like any other.
            return TLSConfigError(f"TLS handshake failed: {text}")
        return RedisUnavailable(text or type(exc).__name__)
    if text.startswith("NOGROUP") or text in _NO_SUCH_KEY or _stream_gone_while_blocked(text):
        return GroupMissing(text)
    if text.startswith(_TRANSIENT_PREFIXES):
        return RedisUnavailable(text)
    if _SCRIPT_OOM in text:  # Redis 6.2 wraps a refusal inside a script in its own text
        return RedisOutOfMemory(text)
    if text.startswith("WRONGTYPE") or _SCRIPT_WRONGTYPE in text:
        return WrongType(text)
    if text.startswith(("NOAUTH", "WRONGPASS")):
        return AuthenticationFailed(f"authentication failed: {text}")
    if text.startswith(_FATAL_PREFIXES):
        return FatalRedisError(text)
    return ServerError(text)


def _stream_gone_while_blocked(text: str) -> bool:
    # Redis 7.0 ends a blocked XREADGROUP whose stream was deleted with this error, where
    # Redis 6.2 times the read out and Valkey answers NOGROUP.
    return text.startswith("UNBLOCKED") and "no longer exists" in text
