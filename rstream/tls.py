"""Telling a TLS misconfiguration from an outage, when a TLS connection fails to open.

redis-py reports all of these as connection errors, which rstream would retry for ever; none of
them is cured by waiting, so `rstream.connection` raises `TLSConfigError` for them instead:

- a CA, certificate or key file that is missing or cannot be read;
- a handshake the peer refused: certificate not trusted, name mismatch, no common protocol;
- a server that does not speak TLS on that port (a rediss:// URL to a plain port). Such a server
  never answers: it takes the ClientHello for the start of an inline command, and the NUL bytes
  in it hide the line end it waits for, so the handshake runs into its timeout (measured on
  Redis 6.2, 7.0 and Valkey 8.1, 9.1). After a timed-out handshake one plain PING to the same
  address tells the two apart: a RESP reply proves the server speaks no TLS there.

A handshake cut short (EOF, reset) or timed out on a server that does not answer plain RESP
either is left to be retried: a restarting server or a network fault looks the same.
"""
from __future__ import annotations

import os
import socket
import ssl
from typing import Any, Iterator, Optional

from redis.connection import SSLConnection
from redis.sentinel import MasterNotFoundError

from .errors import TLSConfigError

# How long the first handshake of a link may take before the plain-RESP check: a TLS server
# answers the ClientHello within one round trip, a plain one never does.
FIRST_HANDSHAKE_TIMEOUT_S = 1.0
PROBE_TIMEOUT_S = 1.0
_HINT = "(is the server TLS-enabled on that port? check the ssl_* options)"
# Handshake failures that a retry may cure: the peer went away mid-handshake.
_CUT_SHORT = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError,
              ssl.SSLWantReadError, ssl.SSLWantWriteError)


def is_tls(conn: Any) -> bool:
    return isinstance(conn, SSLConnection)


def diagnose(conn: Any, exc: BaseException, probe_timeout_s: float) -> Optional[TLSConfigError]:
    """The configuration fault behind `exc`, a failed connect of `conn`, if it is one."""
    if not is_tls(conn):
        return None
    problem = file_problem(conn)
    if problem is not None:
        return TLSConfigError(problem)
    where = f"{conn.host}:{conn.port}"
    refusal = handshake_refusal(exc)
    if refusal is not None:
        return TLSConfigError(f"TLS handshake with {where} failed: {_reason(refusal)} {_HINT}")
    chain = list(_chain(exc))
    # No master from the Sentinels: conn.host is not an address anyone named, never probe it.
    if any(isinstance(e, (socket.timeout, TimeoutError)) for e in chain) and not any(
            isinstance(e, MasterNotFoundError) for e in chain):
        answer = plain_answer(conn.host, conn.port, probe_timeout_s)
        if answer is not None:
            return TLSConfigError(f"TLS handshake with {where} failed: no TLS answer, and the "
                                  f"server answers plain RESP ({answer!r}): it is not "
                                  "TLS-enabled on that port (use redis://, or its tls-port)")
    return None


def file_problem(conn: Any) -> Optional[str]:
    """What is wrong with the CA, certificate and key files `conn` names, if anything."""
    for label, path in (("CA file", conn.ca_certs), ("certificate file", conn.certfile),
                        ("key file", conn.keyfile)):
        if not path:
            continue
        try:
            with open(path, "rb"):
                pass
        except FileNotFoundError:
            return f"TLS {label} {str(path)!r} not found"
        except OSError as exc:
            return f"TLS {label} {str(path)!r} cannot be read: {exc.strerror or exc}"
    ca_path = getattr(conn, "ca_path", None)
    if ca_path and not os.path.isdir(ca_path):
        return f"TLS CA directory {str(ca_path)!r} not found"
    return None


def handshake_refusal(exc: BaseException) -> Optional[ssl.SSLError]:
    """The SSL error in `exc`'s chain that says the handshake was refused (not cut short)."""
    for error in _chain(exc):
        if isinstance(error, ssl.SSLError) and not isinstance(error, _CUT_SHORT):
            return error
    return None


def plain_answer(host: str, port: int, timeout_s: float) -> Optional[str]:
    """The first line a plain-RESP server at host:port answers PING with (+PONG, -NOAUTH...),
    or None if nothing there answers in RESP within `timeout_s`."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(128)
    except OSError:
        return None
    line = reply.split(b"\r\n", 1)[0]
    if not reply.startswith((b"+", b"-")) or b"\r\n" not in reply:
        return None
    return line[:80].decode("ascii", "replace")


def _reason(error: ssl.SSLError) -> str:
    if isinstance(error, ssl.SSLCertVerificationError) and error.verify_message:
        return f"certificate verify failed: {error.verify_message}"
    return error.reason.lower().replace("_", " ") if error.reason else str(error)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    error: Optional[BaseException] = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__
