"""One network namespace as the agent sees it: resolve the VIP interface, converge VIPs and sysctls, undo.

`Host.apply(vips)` is the whole host-side reconcile, level-based and idempotent: it reads links,
addresses and sysctls, asks `agent.core.plan` what to change, changes only that (adds before
deletes, so a VIP moving between interfaces is never absent), records what it changed in the
state file, and returns a `core.Outcome`. `Host.uninstall()` removes what the agent added and
restores the sysctls it replaced. Both the node agent and `host-setup --apply` use this class.
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Sequence
from types import TracebackType
from typing import Literal, Self

from pyroute2.netlink.exceptions import NetlinkError

from dsr_operator.agent import core, netlink, state, sysctl

logger = logging.getLogger(__name__)

Mode = Literal["auto", "dummy", "loopback"]
LOOPBACK = "lo"


class HostError(Exception):
    """The host cannot be configured as asked (e.g. the VIP interface is someone else's)."""


class Host:
    """The VIP configuration of one network namespace; use as `async with`."""

    def __init__(
        self,
        *,
        netns: str | None = None,
        mode: Mode = "auto",
        interface: str = "dsr0",
        state_dir: pathlib.Path = state.DEFAULT_DIR,
    ) -> None:
        self.netns = netns
        self.requested_mode: Mode = mode
        self.dummy_name = interface
        self.netlink = netlink.Netlink(netns)
        self.sysctls = sysctl.Sysctls(netns)
        self.state_file = state.StateFile(state.state_path(state_dir, netns))
        self.proto_supported = netlink.kernel_keeps_ifa_proto()
        self.mode: Literal["dummy", "loopback"] | None = None
        self.interface: str | None = None

    async def __aenter__(self) -> Self:
        await self.netlink.__aenter__()
        try:
            await self.sysctls.__aenter__()
        except BaseException:
            await self.netlink.__aexit__(None, None, None)
            raise
        await self.state_file.load()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.sysctls.__aexit__(exc_type, exc, tb)
        await self.netlink.__aexit__(exc_type, exc, tb)

    @property
    def st(self) -> state.AgentState:
        return self.state_file.state

    def ownership(self) -> core.Ownership:
        return core.Ownership(proto_supported=self.proto_supported, recorded=frozenset(self.st.addresses))

    async def _resolve_mode(self, links: dict[int, netlink.Link]) -> tuple[Literal["dummy", "loopback"], str]:
        if self.mode is not None and self.interface is not None:
            return self.mode, self.interface
        by_name = {link.name: link for link in links.values()}
        chosen: Literal["dummy", "loopback"]
        if self.requested_mode == "loopback":
            chosen = "loopback"
        elif self.requested_mode == "dummy":
            chosen = "dummy"
        elif self.st.mode in ("dummy", "loopback") and self.st.interface in (LOOPBACK, self.dummy_name):
            chosen = self.st.mode  # type: ignore[assignment]  # keep what the last run chose: no flapping
        elif (existing := by_name.get(self.dummy_name)) is not None and existing.kind == "dummy":
            chosen = "dummy"
        else:
            try:
                await self.netlink.create_dummy(self.dummy_name)
                self.st.created_link = True
                chosen = "dummy"
            except netlink.LinkTypeUnsupported as exc:
                logger.info("Using loopback mode: %s", exc)
                chosen = "loopback"
        self.mode = chosen
        self.interface = LOOPBACK if chosen == "loopback" else self.dummy_name
        self.st.mode, self.st.interface = self.mode, self.interface
        return self.mode, self.interface

    async def _target(self) -> tuple[Literal["dummy", "loopback"], netlink.Link, dict[int, netlink.Link], bool]:
        """The VIP interface (created if dummy mode and missing); True if it had to be created."""
        links = await self.netlink.links()
        mode, ifname = await self._resolve_mode(links)
        created = False
        by_name = {link.name: link for link in links.values()}
        link = by_name.get(ifname)
        if mode == "dummy":
            if link is None:
                await self.netlink.create_dummy(ifname)
                self.st.created_link = True
                created = True
                links = await self.netlink.links()
                link = next(lk for lk in links.values() if lk.name == ifname)
            elif link.kind != "dummy":
                raise HostError(f"interface {ifname} exists and is not a dummy link; refusing to use it")
            if not link.up_noarp:
                await self.netlink.set_up_noarp(link.index)
        elif link is None:
            raise HostError("no loopback interface")
        assert link is not None
        return mode, link, links, created

    async def apply(
        self, vips: Sequence[core.Vip], invalid: Sequence[core.VipFailure] = (),
        protected: core.Protected = core.NOTHING_PROTECTED,
    ) -> core.Outcome:
        """Converge the namespace to hold exactly `vips` (ours) on the VIP interface, with the arp sysctls.

        `invalid` (VIP strings that failed to parse) are only carried into the outcome. A VIP that is not
        held yet is added only if `core.refusal` finds nothing against it in `protected` (the cluster's
        addresses, from the caller) together with this namespace's own addresses and gateways.
        """
        mode, ifname = self.mode or "loopback", self.interface or LOOPBACK
        applied: list[str] = []
        failed: list[core.VipFailure] = list(invalid)
        added: list[str] = []
        removed: list[str] = []
        fixed: list[str] = []
        created = False
        sysctl_values: dict[str, int] = {}
        rp_filter: dict[str, int] = {}
        error: str | None = None
        try:
            mode, link, links, created = await self._target()
            ifname = link.name
            # The arp sysctls first: a VIP on the node before arp_ignore/arp_announce would be answered
            # in ARP by the node, in a race with NetScaler. If they cannot be set, no VIP is added (but
            # VIPs no longer wanted are still removed).
            sysctl_problem: sysctl.SysctlError | None = None
            try:
                sysctl_values, fixed = await self._ensure_sysctls(ifname, ipv6=core.has_ipv6(vips))
            except sysctl.SysctlError as exc:
                sysctl_problem = exc
            current = await self.netlink.addresses(links)
            the_plan = core.plan(vips, link.index, current, self.ownership())
            guard = protected
            if the_plan.add:
                guard |= core.host_protected(current, link.index, self.ownership(), await self.netlink.gateways())
            refused = {v.address: why for v in the_plan.add if (why := core.refusal(v, guard)) is not None}
            allowed = [v for v in the_plan.add if v.address not in refused]
            results: dict[str, str | None] = dict(refused)
            if sysctl_problem is not None:
                results |= {v.address: f"not added: {sysctl_problem}" for v in allowed}
            elif allowed:
                results |= await self.netlink.add_vips(allowed, link.index, ifname)
            ok = {v.address for v in the_plan.held} | {v.address for v in the_plan.foreign}
            for vip in the_plan.add:
                problem = results.get(vip.address)
                if problem is None:
                    ok.add(vip.address)
                    added.append(vip.address)
                    self.st.addresses.add((ifname, vip.address))
                else:
                    failed.append(core.VipFailure(address=vip.address, error=problem))
            applied = [v.address for v in vips if v.address in ok]

            deleted = await self.netlink.delete_addresses(the_plan.delete)
            for addr in the_plan.delete:
                problem = deleted.get(f"{addr.ifname}/{addr.address}")
                if problem is None:
                    removed.append(addr.address)
                    self.st.addresses.discard((addr.ifname, addr.address))
                else:
                    error = f"cannot remove {addr.address} from {addr.ifname}: {problem}"

            if sysctl_problem is not None:
                raise sysctl_problem
            rp_filter = await self.sysctls.rp_filter()
        except (HostError, NetlinkError, OSError, sysctl.SysctlError) as exc:
            error = str(exc) or type(exc).__name__
            logger.warning("Host configuration failed: %s", error)
        finally:
            await self.state_file.save()
        return core.Outcome(
            mode=mode,
            interface=ifname,
            applied=tuple(applied),
            failed=tuple(failed),
            sysctls=sysctl_values,
            rp_filter=rp_filter,
            error=error,
            added=tuple(added),
            removed=tuple(removed),
            sysctls_fixed=tuple(fixed),
            interface_created=created,
        )

    async def _ensure_sysctls(self, ifname: str, *, ipv6: bool = False) -> tuple[dict[str, int], list[str]]:
        desired = core.desired_sysctls(ifname, ipv6=ipv6)
        current = await self.sysctls.read(list(desired))
        fix = {key: value for key, value in desired.items() if not core.sysctl_ok(key, value, current.get(key))}
        for key in fix:
            before = current.get(key)
            if key not in self.st.sysctls and before is not None:
                self.st.sysctls[key] = before
        if fix:
            await self.state_file.save()  # remember the old values before replacing them
            await self.sysctls.write(fix)
        values = {key: value for key, value in {**current, **fix}.items() if value is not None}
        return values, sorted(fix)

    async def uninstall(self) -> list[str]:
        """Remove our addresses (any interface), our dummy link, restore replaced sysctls, forget the state."""
        done: list[str] = []
        links = await self.netlink.links()
        ours = [a for a in await self.netlink.addresses(links) if self.ownership().owns(a)]
        results = await self.netlink.delete_addresses(ours)
        problems = [f"{key}: {err}" for key, err in results.items() if err]
        done += [f"removed {a.address} from {a.ifname}" for a in ours if not results.get(f"{a.ifname}/{a.address}")]
        if self.st.created_link:
            for link in links.values():
                if link.name == (self.st.interface or self.dummy_name) and link.kind == "dummy":
                    await self.netlink.delete_link(link.index)
                    done.append(f"deleted interface {link.name}")
        if self.st.sysctls:
            present = await self.sysctls.read(list(self.st.sysctls))
            restore = {k: v for k, v in self.st.sysctls.items() if present.get(k) is not None}
            await self.sysctls.write(restore)
            done += [f"restored {k}={v}" for k, v in sorted(restore.items())]
        if problems:
            raise HostError("; ".join(problems))
        await self.state_file.remove()
        return done
