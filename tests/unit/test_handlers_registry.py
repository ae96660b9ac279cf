"""What the operator registers with kopf, as kopf will run it."""

from __future__ import annotations

import inspect

from dsr_operator.controller import config, handlers


def test_every_handler_is_a_coroutine_and_kopf_keeps_no_state_of_its_own() -> None:
    """Kopf runs a plain function in a worker thread; the handlers wake the reconcile loop (an asyncio
    Event) and update its books, which only the loop's thread may do. And with no changing or spawning
    handler, kopf has nothing to store on a DsrService (no finalizer of its own, no `status.kopf`)."""
    registry = handlers.make_registry(config.OperatorSettings(require_vip_pool=True))
    registered = [*registry._indexing.get_all_handlers(), *registry._watching.get_all_handlers(),
                  *registry._activities.get_all_handlers()]
    assert len(registered) >= 20
    plain = [h.id for h in registered if not inspect.iscoroutinefunction(h.fn)]
    assert plain == []
    assert list(registry._changing.get_all_handlers()) == []
    assert list(registry._spawning.get_all_handlers()) == []
