"""Shared fixtures of every test tier: a Kubernetes API emulator on a real socket.

The `kube` fixture starts `dsr_lab.kubeemu.KubeEmulator` (kmock plus the API-server rules we rely on)
on 127.0.0.1 with a random port, with these resources (`kubeemu.RESOURCES`) registered for discovery:

| resource                                   | scope      | status subresource |
| ------------------------------------------ | ---------- | ------------------ |
| dsr.operators.dev/v1alpha1 dsrservices     | namespaced | yes                |
| dsr.operators.dev/v1alpha1 dsrnodeconfigs  | cluster    | yes                |
| v1 nodes                                   | cluster    | yes                |
| v1 services                                | namespaced | yes                |
| v1 namespaces                              | cluster    | yes                |
| v1 events                                  | namespaced | no                 |
| discovery.k8s.io/v1 endpointslices         | namespaced | no                 |

It yields a `KubeHandle`: `url` (base URL, no auth), `emulator` (the kmock object: seed state with
`emulator.objects[...] = {...}`, iterate it for the requests served, add reactions with `emulator[...] << ...`),
`connection()` (a `dsr_operator.kube.Connection` for our client factory), `client()` (a ready
lightkube `AsyncClient`, closed at teardown), and `write_kubeconfig(path)` (for subprocesses and
for kopf, which reads `KUBECONFIG`). Objects created through the API get uid, generation and
resourceVersion; prefer creating them through `client()` over seeding `emulator.objects` directly.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import AsyncIterator

import lightkube
import pytest_asyncio

from dsr_lab import kubeemu
from dsr_operator import kube as kubeapi

RESOURCES = kubeemu.RESOURCES


@dataclasses.dataclass
class KubeHandle:
    """What a test gets from the `kube` fixture."""

    emulator: kubeemu.KubeEmulator
    url: str
    _clients: list[lightkube.AsyncClient] = dataclasses.field(default_factory=list)

    def connection(self) -> kubeapi.Connection:
        return kubeapi.Connection(server=self.url)

    def client(self, field_manager: str = "tests") -> lightkube.AsyncClient:
        connection = self.connection()
        client = kubeapi.make_client(kubeapi.load_config(connection), connection, field_manager=field_manager)
        self._clients.append(client)
        return client

    def write_kubeconfig(self, path: pathlib.Path) -> pathlib.Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "tests", "user": {"token": "test-token"}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tests"}}],
            "current-context": "emulator",
        }
        path.write_text(json.dumps(config))
        return path


@pytest_asyncio.fixture()
async def kube() -> AsyncIterator[KubeHandle]:
    """A Kubernetes API emulator on a real socket; see the module docstring for the contract."""
    async with kubeemu.serve() as (emulator, url):
        handle = KubeHandle(emulator=emulator, url=url)
        try:
            yield handle
        finally:
            for client in handle._clients:
                await client.close()
