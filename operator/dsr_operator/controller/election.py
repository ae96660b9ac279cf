"""Leader election on a `coordination.k8s.io/v1` Lease, as Kubernetes' own controllers do it.

Several replicas of the operator may run (the chart's default is two, and a rolling update briefly
runs two even with one). Exactly one of them reconciles: the holder of the Lease. The others wait,
answer their health probe, and take over when the holder lets the Lease go (a clean shutdown releases
it at once) or stops renewing it (a killed Pod: after `lease_seconds`).

The rules follow client-go's `leaderelection` package:

* a stand-by never trusts another host's clock: it takes a Lease over only after it has seen the same
  record, unchanged, for `lease_seconds` on its own monotonic clock;
* every write carries the `resourceVersion` it read, so two stand-bys racing for the same expired
  Lease cannot both win (the loser gets 409 Conflict and keeps waiting);
* a holder that could not renew for `renew_deadline` seconds gives up (the caller stops reconciling
  and exits), so that it has stopped before any stand-by may take over.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import lightkube
from lightkube.core.exceptions import ApiError
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

from dsr_operator import aio, clock

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Timing:
    lease_seconds: int = 15
    """How long a Lease stays valid without renewal: the longest a killed holder blocks a stand-by."""
    renew_deadline: float = 10.0
    """A holder that has not renewed for this long stops; must be shorter than `lease_seconds`."""
    retry_seconds: float = 2.0
    """How often a stand-by looks at the Lease, and a holder renews it."""

    def __post_init__(self) -> None:
        if not 0 < self.retry_seconds < self.renew_deadline < self.lease_seconds:
            raise ValueError("leader election needs 0 < retry_seconds < renew_deadline < lease_seconds")


class Elector:
    """One replica's side of the election for the Lease `namespace/name`."""

    def __init__(self, client: lightkube.AsyncClient, namespace: str, name: str, identity: str,
                 timing: Timing = Timing()) -> None:
        self.client, self.namespace, self.name, self.identity, self.timing = (
            client, namespace, name, identity, timing)
        self._observed: tuple[str, str, int] | None = None
        self._observed_at = 0.0
        self._renewed_at = 0.0
        self.leading = False

    # -- stand-by ----------------------------------------------------------------------------------

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this replica holds the Lease (True) or `stop` is set (False)."""
        waiting_for: str | None = None
        while not stop.is_set():
            try:
                if await self._try_acquire():
                    log.info("Leading: this replica (%s) holds Lease %s/%s.", self.identity, self.namespace,
                             self.name)
                    return True
                holder = self._observed[0] if self._observed else ""
                if holder != waiting_for:
                    log.info("Standing by: Lease %s/%s is held by %s.", self.namespace, self.name, holder)
                    waiting_for = holder
            except Exception as e:  # API errors, timeouts, refused connections: keep trying
                log.warning("Leader election: Lease %s/%s: %s: %s", self.namespace, self.name,
                            type(e).__name__, e)
            await aio.wait(stop, self.timing.retry_seconds)
        return False

    async def _try_acquire(self) -> bool:
        try:
            lease = await self.client.get(Lease, self.name, namespace=self.namespace)
        except ApiError as e:
            if e.status.code != 404:
                raise
            return await self._create()
        spec = lease.spec or LeaseSpec()
        record = (spec.holderIdentity or "", str(spec.renewTime), spec.leaseTransitions or 0)
        now = time.monotonic()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        holder = record[0]
        if holder == self.identity:
            return await self._write(lease, transition=False)
        free = not holder or now - self._observed_at >= self.timing.lease_seconds
        if not free:
            return False
        return await self._write(lease, transition=True)

    async def _create(self) -> bool:
        now = clock.utcnow()
        lease = Lease(
            metadata=ObjectMeta(name=self.name, namespace=self.namespace),
            spec=LeaseSpec(holderIdentity=self.identity, leaseDurationSeconds=self.timing.lease_seconds,
                           acquireTime=now, renewTime=now, leaseTransitions=0),
        )
        try:
            await self.client.create(lease)
        except ApiError as e:
            if e.status.code == 409:  # another replica created it first
                return False
            raise
        self._won()
        return True

    async def _write(self, lease: Lease, *, transition: bool) -> bool:
        spec = lease.spec or LeaseSpec()
        now = clock.utcnow()
        if transition:
            spec.acquireTime = now
            spec.leaseTransitions = (spec.leaseTransitions or 0) + 1
        spec.holderIdentity = self.identity
        spec.leaseDurationSeconds = self.timing.lease_seconds
        spec.renewTime = now
        lease.spec = spec
        try:
            await self.client.replace(lease)  # carries the resourceVersion read: 409 if it changed
        except ApiError as e:
            if e.status.code == 409:
                return False
            raise
        self._won()
        return True

    def _won(self) -> None:
        self.leading = True
        self._renewed_at = time.monotonic()

    # -- holder ------------------------------------------------------------------------------------

    async def hold(self) -> None:
        """Renew the Lease every `retry_seconds`; return once leadership is lost."""
        while True:
            await asyncio.sleep(self.timing.retry_seconds)
            try:
                lease = await self.client.get(Lease, self.name, namespace=self.namespace)
                holder = lease.spec.holderIdentity if lease.spec else None
                if holder != self.identity:
                    log.error("Leadership lost: Lease %s/%s is now held by %s.", self.namespace, self.name,
                              holder or "nobody")
                    break
                if await self._write(lease, transition=False):
                    continue
            except Exception as e:  # every failure counts against the renew deadline
                log.warning("Leader election: cannot renew Lease %s/%s: %s: %s", self.namespace, self.name,
                            type(e).__name__, e)
            if time.monotonic() - self._renewed_at >= self.timing.renew_deadline:
                log.error("Leadership lost: Lease %s/%s not renewed for %.0f s.", self.namespace, self.name,
                          self.timing.renew_deadline)
                break
        self.leading = False

    async def release(self) -> None:
        """Give the Lease up (on a clean shutdown), so a stand-by takes over without waiting it out."""
        if not self.leading:
            return
        self.leading = False
        try:
            lease = await self.client.get(Lease, self.name, namespace=self.namespace)
            if lease.spec is None or lease.spec.holderIdentity != self.identity:
                return
            lease.spec.holderIdentity = None
            lease.spec.leaseDurationSeconds = 1
            lease.spec.renewTime = clock.utcnow()
            await self.client.replace(lease)
            log.info("Released Lease %s/%s.", self.namespace, self.name)
        except Exception as e:
            log.warning("Could not release Lease %s/%s (a stand-by takes over after %d s): %s: %s",
                        self.namespace, self.name, self.timing.lease_seconds, type(e).__name__, e)
