"""A small TCP proxy on loopback that fault tests put between rstream and a real server.

It can black-hole the network (connections stay open and new ones are accepted, but no byte moves
in either direction, as when a link or a firewall silently drops packets), drop every connection
(clients see the peer close, as after a NAT or load-balancer timeout), and restore forwarding.
With `delay_s` it is a far link: every byte arrives `delay_s` after it was sent, each way (a
round trip of twice that), at whatever bandwidth loopback gives; bench/farlink.py uses it.
Bytes that arrive during a black hole wait in the kernel's buffers and move on once restored,
like TCP segments retransmitted after a partition heals: the byte stream is never corrupted.

Threads: one acceptor plus two pumps per connection, all daemons, with at most `max_connections`
connections (more are refused by closing them). The proxy stops by itself after `lifetime_s`,
so a test that forgets `close()` cannot leave it running.
"""
from __future__ import annotations

import collections
import select
import socket
import threading
import time
from types import TracebackType
from typing import Deque, List, Optional, Tuple, Type

HOST = "127.0.0.1"
POLL_S = 0.05          # how often idle threads look at the black-hole and close flags
CHUNK = 1 << 16
CONNECT_TIMEOUT_S = 2.0


class _Pair:
    """A client socket and its upstream socket; closing one closes both."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self._lock = threading.Lock()
        self.closed = False

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
        for sock in (self.client, self.upstream):
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a pump blocked in sendall
            except OSError:
                pass
            sock.close()


class Proxy:
    """Forwards 127.0.0.1:<port> to `target_host:target_port` until told otherwise."""

    def __init__(self, target_port: int, target_host: str = HOST, max_connections: int = 64,
                 lifetime_s: float = 600.0, delay_s: float = 0.0) -> None:
        self.target = (target_host, target_port)
        self.delay_s = delay_s
        self.max_connections = max_connections
        self._deadline = time.monotonic() + lifetime_s
        self._listener = socket.create_server((HOST, 0))
        self._listener.settimeout(POLL_S)
        self.port: int = self._listener.getsockname()[1]
        self._forwarding = threading.Event()
        self._forwarding.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._pairs: List[_Pair] = []
        self.accepted = 0
        self._acceptor = threading.Thread(target=self._accept_loop, name="proxy-accept", daemon=True)

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> "Proxy":
        self._acceptor.start()
        return self

    # -- faults ----------------------------------------------------------------------------------
    def blackhole(self) -> None:
        """Stop moving bytes (both ways, on every connection, old and new) until `restore()`."""
        self._forwarding.clear()

    def restore(self) -> None:
        """Move bytes again, held ones first."""
        self._forwarding.set()

    def drop(self) -> int:
        """Close every connection now; returns how many there were."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            pair.close()
        return len(pairs)

    def connections(self) -> int:
        with self._lock:
            self._pairs = [p for p in self._pairs if not p.closed]
            return len(self._pairs)

    def close(self) -> None:
        self._closed.set()
        self.drop()
        self._acceptor.join(1.0)
        self._listener.close()

    def __enter__(self) -> "Proxy":
        return self.start()

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.close()

    # -- threads ---------------------------------------------------------------------------------
    def _done(self) -> bool:
        return self._closed.is_set() or time.monotonic() > self._deadline

    def _accept_loop(self) -> None:
        while not self._done():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            self._adopt(client)
        self._closed.set()  # closed, or past its lifetime: end every connection with it
        self.drop()

    def _adopt(self, client: socket.socket) -> None:
        if self.connections() >= self.max_connections:
            client.close()
            return
        try:
            upstream = socket.create_connection(self.target, timeout=CONNECT_TIMEOUT_S)
        except OSError:
            client.close()  # the server is down: the client sees its connection closed
            return
        client.settimeout(None)
        upstream.settimeout(None)
        pair = _Pair(client, upstream)
        with self._lock:
            self._pairs.append(pair)
            self.accepted += 1
        for src, dst, name in ((client, upstream, "up"), (upstream, client, "down")):
            if self.delay_s > 0:
                _DelayedPump(self, pair, src, dst, name).start()
            else:
                threading.Thread(target=self._pump, args=(pair, src, dst), name=f"proxy-{name}",
                                 daemon=True).start()

    def _pump(self, pair: _Pair, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not (pair.closed or self._done()):
                if not self._forwarding.wait(POLL_S):
                    continue
                readable, _, _ = select.select([src], [], [], POLL_S)
                if not readable or not self._forwarding.is_set():
                    continue  # black-holed meanwhile: leave the bytes in the kernel's buffer
                data = src.recv(CHUNK)
                if not data:
                    break
                dst.sendall(data)
        except (OSError, ValueError):  # the pair was closed under us
            pass
        pair.close()


class _DelayedPump:
    """One direction of a far link: a thread reads what arrives and stamps it with the time it
    may leave (now + delay); another sends each chunk at that time, in order. Work is per chunk
    (up to CHUNK bytes), not per byte, so the proxy costs little CPU at full speed."""

    def __init__(self, proxy: Proxy, pair: _Pair, src: socket.socket, dst: socket.socket,
                 name: str) -> None:
        self._proxy, self._pair, self._src, self._dst = proxy, pair, src, dst
        self._name = name
        self._queue: Deque[Tuple[float, bytes]] = collections.deque()
        self._cond = threading.Condition()

    def start(self) -> None:
        for target, role in ((self._receive, "in"), (self._send, "out")):
            threading.Thread(target=target, name=f"proxy-{self._name}-{role}", daemon=True).start()

    def _receive(self) -> None:
        try:
            while not (self._pair.closed or self._proxy._done()):
                readable, _, _ = select.select([self._src], [], [], POLL_S)
                if not readable:
                    continue
                data = self._src.recv(CHUNK)
                if not data:
                    break
                with self._cond:
                    self._queue.append((time.monotonic() + self._proxy.delay_s, data))
                    self._cond.notify()
        except (OSError, ValueError):
            pass
        with self._cond:
            self._queue.append((time.monotonic() + self._proxy.delay_s, b""))  # the end, delayed too
            self._cond.notify()

    def _send(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._queue:
                        self._cond.wait(POLL_S)
                        if self._pair.closed:
                            return
                    due, data = self._queue[0]
                    wait = due - time.monotonic()
                    if wait > 0:
                        self._cond.wait(wait)
                        continue
                    self._queue.popleft()
                if not data:
                    break
                self._dst.sendall(data)
        except (OSError, ValueError):
            pass
        self._pair.close()


def main() -> None:
    """``python tests/proxy.py TARGET_PORT [DELAY_MS]``: run a proxy in a process of its own (so
    that its threads do not share a GIL with the client measured through it); prints its port,
    then forwards until killed."""
    import sys
    target, delay_ms = int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    with Proxy(target, delay_s=delay_ms / 1000, lifetime_s=24 * 3600, max_connections=1024) as proxy:
        print(proxy.port, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
