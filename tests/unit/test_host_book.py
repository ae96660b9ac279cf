"""Which DsrServices list each static backend address: a change wakes every other one listing its addresses."""

from __future__ import annotations

from dsr_operator.controller import reconcile

A, B, C = ("team-a", "web"), ("team-b", "db"), ("team-b", "api")


def test_a_change_wakes_those_that_list_its_old_or_new_addresses() -> None:
    book = reconcile.HostBook()
    assert book.record(B, ["10.9.0.5", "10.9.0.6"]) == {B}
    assert book.record(C, ["10.9.0.7"]) == {C}
    assert book.record(A, ["10.9.0.5"]) == {A, B}  # claims team-b's address: team-b is woken too
    assert book.record(A, ["10.9.0.7"]) == {A, B, C}  # lets 10.9.0.5 go (B may hold it alone) and takes C's
    assert book.record(B, ["10.9.0.5"]) == {B}  # nobody else lists 10.9.0.5 or 10.9.0.6 any more
    assert book.record(A, []) == {A, C}  # deleted
    assert book.record(C, ["10.9.0.7"]) == {C}


def test_an_address_nobody_lists_is_forgotten() -> None:
    book = reconcile.HostBook()
    book.record(A, ["10.9.0.5"])
    book.record(A, [])
    assert book._users == {} and book._of == {}  # no memory left behind by a deleted DsrService
