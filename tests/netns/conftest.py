"""Fixtures of the netns tier: throwaway network namespaces, host inspection with iproute2, polling.

The whole tier is skipped, with the reason, unless the tests run as root with iproute2 installed
(`apt-get install iproute2`, run pytest as root). Every namespace is created per test with a
unique name and always deleted, whatever the outcome.
"""

from __future__ import annotations

import itertools
import os
import pathlib
import shutil
import sys
from collections.abc import Iterator

import pytest

from tests.support.hostcheck import run

HERE = pathlib.Path(__file__).parent
_counter = itertools.count()


def _missing() -> str | None:
    if sys.platform != "linux":
        return "the netns tier needs Linux network namespaces"
    if os.geteuid() != 0:
        return "the netns tier needs root (network namespaces, netlink writes): run pytest as root"
    if shutil.which("ip") is None:
        return "the netns tier needs iproute2: apt-get install iproute2"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _missing()
    for item in items:
        if HERE in pathlib.Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.netns)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture()
def netns() -> Iterator[str]:
    """A fresh network namespace with `lo` up; deleted after the test."""
    name = f"dsrt-{os.getpid()}-{next(_counter)}"
    run("ip", "netns", "add", name)
    try:
        run("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        run("ip", "netns", "del", name, check=False)
