"""`dsr_operator.netns`: the one way into a named network namespace."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from dsr_operator import netns as netns_


def _here() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def test_run_inside_runs_there_and_leaves_the_caller_where_it_was(netns: str) -> None:
    before = _here()
    assert netns_.run_inside(netns, _here) == os.stat(netns_.NETNS_DIR / netns).st_ino != before
    assert _here() == before
    assert netns_.run_inside(None, _here) == before


def test_run_inside_hands_back_the_exception(netns: str) -> None:
    def boom() -> None:
        raise ValueError("inside")

    with pytest.raises(ValueError, match="inside"):
        netns_.run_inside(netns, boom)


def test_a_socket_made_inside_stays_there(netns: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as outside:
        outside.bind(("127.0.0.1", 0))
        port = outside.getsockname()[1]
        with netns_.socket_in(netns, socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", port))  # taken here, free there


def test_enter_moves_the_thread_for_good(netns: str) -> None:
    seen: list[int] = []

    def work() -> None:
        netns_.enter(netns)
        seen.append(_here())

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen == [os.stat(netns_.NETNS_DIR / netns).st_ino]


def test_a_missing_namespace_is_an_oserror() -> None:
    with pytest.raises(FileNotFoundError):
        netns_.run_inside("dsrt-no-such-namespace", _here)
