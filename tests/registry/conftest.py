"""A real etcd for the registry tests, started from the control-plane build's binary.

`etcd_server` yields an `Etcd`: `.url`, `.stop()` and `.start()` (same data directory and port, so a
restart keeps the keys), `.client()` for a fresh `EtcdClient`. `Link(etcd.port)` is the network between
a follower and etcd, which a test cuts and heals. Without the binary (`make controlplane`) the tests
skip, unless CI=true or DSR_REQUIRE_CONTROLPLANE=1.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from dsr_operator.registry import etcd
from tests.support.waiting import eventually_sync

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("DSR_CONTROLPLANE_BIN") or REPO_ROOT / ".cache" / "controlplane" / "bin")
ETCD = BIN_DIR / "etcd"


@dataclasses.dataclass(frozen=True)
class Certificates:
    """A throwaway CA, a serving certificate for 127.0.0.1 and a client certificate (openssl)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def make(cls, folder: Path) -> Certificates:
        folder.mkdir(parents=True, exist_ok=True)

        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)

        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
                "-subj", "/CN=dsr-test-ca")
        # With --client-cert-auth, etcd's JSON gateway dials etcd's own gRPC port with the serving certificate,
        # so that certificate must allow client authentication too (else every gateway call is a 503).
        for name, extension in (("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth"),
                                ("client", "extendedKeyUsage=clientAuth")):
            (folder / f"{name}.ext").write_text(extension + "\n")
            openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                    "-subj", f"/CN=dsr-test-{name}")
            openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                    "-out", f"{name}.crt", "-days", "1", "-extfile", f"{name}.ext")
        return cls(folder / "ca.crt", folder / "server.crt", folder / "server.key", folder / "client.crt",
                   folder / "client.key")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Etcd:
    def __init__(self, workdir: Path, extra: tuple[str, ...] = (), tls: Certificates | None = None) -> None:
        self.workdir = workdir
        self.port, self.peer_port = _free_port(), _free_port()
        self.tls = tls
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.extra = extra
        if tls is not None:  # clients must show a certificate signed by the test CA
            self.extra += (f"--cert-file={tls.server_cert}", f"--key-file={tls.server_key}",
                           f"--trusted-ca-file={tls.ca}", "--client-cert-auth")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        peer = f"http://127.0.0.1:{self.peer_port}"
        log = open(self.workdir / "etcd.log", "ab")  # the process keeps it open
        self.proc = subprocess.Popen(
            [str(ETCD), "--name=registry", f"--data-dir={self.workdir / 'data'}",
             f"--listen-client-urls={self.url}", f"--advertise-client-urls={self.url}",
             f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
             f"--initial-cluster=registry={peer}", "--unsafe-no-fsync=true", "--log-level=warn", *self.extra],
            stdout=log, stderr=log, start_new_session=True,
        )
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(cafile=str(self.tls.ca))
            context.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2, context=context) as resp:
                    return resp.status == 200
            except OSError:
                return False

        eventually_sync(healthy, timeout=60, interval=0.05, error=RuntimeError,
                        what=f"etcd to start (its log: {self.workdir / 'etcd.log'})")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def client(self) -> etcd.EtcdClient:
        return etcd.EtcdClient([self.url])


@pytest.fixture
def etcd_server(tmp_path: Path) -> Iterator[Etcd]:
    if not os.access(ETCD, os.X_OK):
        message = f"no etcd binary at {ETCD} (make controlplane builds it)"
        if os.environ.get("CI", "").lower() == "true" or os.environ.get("DSR_REQUIRE_CONTROLPLANE") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    server = Etcd(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Link:
    """A TCP relay to etcd that a test can cut and heal: the network between a follower and etcd.

    Cut, it closes every relayed connection and every new one at once (etcd itself keeps running, so
    the test can change keys and compact while the follower cannot see it).
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.up = True
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> Link:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *_: object) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def cut(self) -> None:
        self.up = False
        for writer in list(self._writers):
            writer.close()

    def heal(self) -> None:
        self.up = True

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self._writers.difference_update((writer, up_writer))


# The integration tier's simulator, for the operator and `sync` tests here.
from tests.integration.conftest import nitro_credentials, nitro_sim  # noqa: E402

__all__ = ["Etcd", "Link", "etcd_server", "nitro_credentials", "nitro_sim"]
