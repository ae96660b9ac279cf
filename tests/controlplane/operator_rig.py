"""The operator and the NITRO simulator as processes against the real control plane.

For the tests that drive the whole product from outside (the soak, the hostile-input test):

* `install_chart(cp, namespaces)` installs the Helm chart (CRDs, the operator's RBAC and ServiceAccount,
  the leader-election Role of its replicas) and mints a token of that ServiceAccount;
* `SimProcess` runs `python -m dsr_operator.cli nitro-sim` (optionally with `--state FILE`): start,
  stop (SIGTERM), kill (SIGKILL), pause/resume (SIGSTOP/SIGCONT: an outage that keeps its sockets),
  NITRO calls with per-request credentials and the `/_sim` control endpoints;
* `OperatorProcess` runs `python -m dsr_operator.cli run` with the environment the chart's Deployment
  sets (leader election on the chart's Lease included), as that ServiceAccount; two of them are the
  chart's two replicas: one leads, the other stands by.

Every process runs in its own process group, logs to a file in the work dir, and is stopped by
`stop()` or `kill()`; callers keep them in a list and stop them all in their teardown, or use
`staged(cp, work, prefix)`: a namespace, the chart limited to it and a running simulator, with operators
made by `Staged.operator(...)`, all stopped and removed on the way out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.controlplane.conftest import ControlPlane, ControlPlaneError, Proc
from tests.support.waiting import eventually_sync

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "dsr-operator"
GROUP, VERSION = "dsr.operators.dev", "v1alpha1"
DSR_PATH = f"/apis/{GROUP}/{VERSION}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def base_env() -> dict[str, str]:
    """The test's environment without anything that would point our programs elsewhere."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("DSR_", "KUBE", "NODE_NAME", "POD_ID")) and k != "KUBERNETES_SERVICE_HOST"}


def spawn(name: str, argv: list[str], env: dict[str, str], log: Path) -> Proc:
    """Start a Python program of this repository in its own process group, output to `log`."""
    with open(log, "wb") as out:
        popen = subprocess.Popen([sys.executable, *argv], env=env, cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return Proc(name, popen, log)


def signal_group(proc: Proc, sig: signal.Signals) -> None:
    """Signal the process group while its leader lives (a reaped leader's pid may belong to another)."""
    if proc.popen.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.popen.pid, sig)


# --------------------------------------------------------------------------------- the chart


@dataclasses.dataclass(frozen=True)
class ChartInstall:
    release: str
    namespace: str
    """Where the chart's ServiceAccount lives (the "dsr-system" of a real install)."""
    service_account: str
    lease: str
    """The Lease the chart's Deployment elects its leader on (DSR_LEADER_ELECTION, in `namespace`)."""
    token: str
    """A TokenRequest token of the operator's ServiceAccount (what the pod would have mounted)."""


def install_chart(cp: ControlPlane, namespaces: list[str]) -> tuple[ChartInstall, list[Callable[[], Any]]]:
    """`helm install` limited to `namespaces`; returns the install and undo steps."""
    suffix = uuid.uuid4().hex[:6]
    release, system_ns = f"rig-{suffix}", f"dsr-rig-{suffix}"
    cleanup: list[Callable[[], Any]] = []
    cp.kc("create", "namespace", system_ns)
    cleanup.append(lambda: cp.kc("delete", "namespace", system_ns, "--wait=false", check=False))
    cp.kc("create", "secret", "generic", "netscaler-login", "-n", system_ns,
          "--from-literal=username=unused", "--from-literal=password=unused")
    cp.helm("install", release, str(CHART), "-n", system_ns, "--set", "netscaler.url=http://127.0.0.1:9",
            "--set", "netscaler.existingSecret=netscaler-login", "--set", f"namespaces={{{','.join(namespaces)}}}",
            "--wait=false")
    cleanup.append(lambda: cp.helm("uninstall", release, "-n", system_ns, check=False))
    cp.kc("wait", "--for=condition=Established", "--timeout=60s", f"crd/dsrservices.{GROUP}",
          f"crd/dsrnodeconfigs.{GROUP}")
    account = f"{release}-dsr-operator"
    token = cp.create_token(account, system_ns, expiration_seconds=7200)
    return ChartInstall(release, system_ns, account, account, token), cleanup


# --------------------------------------------------------------------------------- the simulator


@dataclasses.dataclass
class SimProcess:
    """`dsr-operator nitro-sim` on a fixed port, restartable from its state file."""

    workdir: Path
    user: str
    password: str
    state: Path | None = None
    port: int = dataclasses.field(default_factory=free_port)
    runs: list[Proc] = dataclasses.field(default_factory=list)
    paused: bool = False
    host: str = "127.0.0.1"
    """Where it listens (the cluster tier: the host's address on the lab bridge, reachable from Pods)."""
    extra_args: tuple[str, ...] = ()
    """More `nitro-sim` flags, e.g. `--dataplane-netns NS --dataplane-dev eth0`."""

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def proc(self) -> Proc | None:
        return self.runs[-1] if self.runs else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.popen.poll() is None

    def start(self, timeout: float = 60) -> None:
        password_file = self.workdir / "sim-password"
        password_file.write_text(self.password + "\n")
        argv = ["-m", "dsr_operator.cli", "nitro-sim", "--listen", f"{self.host}:{self.port}", "--user", self.user,
                "--password-file", str(password_file), *self.extra_args]
        if self.state is not None:
            argv += ["--state", str(self.state)]
        proc = spawn(f"nitro-sim-{len(self.runs) + 1}", argv, base_env(),
                     self.workdir / f"nitro-sim-{len(self.runs) + 1}.log")
        self.runs.append(proc)
        self.paused = False

        def answers() -> bool:
            proc.check_alive()
            try:
                return self.control("GET", "/_sim/ha") is not None
            except OSError:
                return False

        eventually_sync(answers, timeout=timeout, what="the NITRO simulator to answer", error=ControlPlaneError)

    def stop(self) -> None:
        if self.proc is not None:
            self.resume()
            self.proc.stop(grace=10)

    def kill(self) -> None:
        if self.proc is not None:
            signal_group(self.proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.popen.wait(10)
            self.paused = False

    def pause(self) -> None:
        if self.proc is not None and not self.paused:
            signal_group(self.proc, signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.proc is not None and self.paused:
            signal_group(self.proc, signal.SIGCONT)
            self.paused = False

    def logs(self) -> str:
        return "\n".join(p.log.read_text(errors="replace") for p in self.runs if p.log.exists())

    # -- HTTP

    def control(self, method: str, path: str, body: Any = None, timeout: float = 15) -> Any:
        """A `/_sim` call: the parsed JSON answer; raises OSError when unreachable, RuntimeError on 4xx/5xx."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as err:
            raise RuntimeError(f"{method} {path}: HTTP {err.code} {err.read()[:300]!r}") from None

    def nitro(self, method: str, path: str, body: Any = None, timeout: float = 15) -> tuple[int, dict[str, Any]]:
        """A NITRO call under /nitro/v1/config/ with per-request credentials: (status, body)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}/nitro/v1/config/{path}", data=data, method=method)
        req.add_header("X-NITRO-USER", self.user)
        req.add_header("X-NITRO-PASS", self.password)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    def add(self, rtype: str, obj: dict[str, Any]) -> None:
        """Create one object (or binding) by hand; raises RuntimeError when NetScaler refuses."""
        binding = rtype.endswith("_binding")
        status, doc = self.nitro("PUT" if binding else "POST", rtype, {rtype: obj})
        if status not in (200, 201):
            raise RuntimeError(f"adding {rtype} {obj} failed: {status} {doc}")

    def config(self) -> dict[str, Any]:
        doc: dict[str, Any] = self.control("GET", "/_sim/config")
        return doc

    def journal(self, since: int = 0) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = self.control("GET", f"/_sim/journal?since={since}")
        return entries


# --------------------------------------------------------------------------------- the operator


@dataclasses.dataclass
class OperatorProcess:
    """`dsr-operator run` as the chart's Deployment runs it; restartable (a container restart)."""

    name: str
    workdir: Path
    env: dict[str, str]
    namespaces: list[str]
    metrics_port: int = dataclasses.field(default_factory=free_port)
    liveness_port: int = dataclasses.field(default_factory=free_port)
    runs: list[Proc] = dataclasses.field(default_factory=list)

    @classmethod
    def for_chart(cls, name: str, workdir: Path, chart: ChartInstall, cp: ControlPlane, sim: SimProcess,
                  operator_id: str, namespaces: list[str], **settings: str) -> OperatorProcess:
        """The chart's environment: leader election, credentials from files, the ServiceAccount's token.

        `DSR_POD_NAME` is the replica's identity in the Lease, stable across its restarts as a Pod's
        name is across container restarts (so a restarted leader takes its Lease back at once)."""
        token_file, user_file, password_file = (workdir / f"{name}-{f}" for f in ("token", "username", "password"))
        token_file.write_text(chart.token)
        user_file.write_text(sim.user + "\n")
        password_file.write_text(sim.password + "\n")
        env = {
            **base_env(),
            "DSR_KUBE_SERVER": cp.url, "DSR_KUBE_TOKEN_FILE": str(token_file), "DSR_KUBE_CA_FILE": str(cp.ca_file),
            "DSR_LEADER_ELECTION": chart.lease, "DSR_LEADER_ELECTION_NAMESPACE": chart.namespace,
            "DSR_POD_NAME": f"{chart.release}-{name}", "DSR_OPERATOR_ID": operator_id,
            "DSR_NETSCALER_URL": sim.url, "DSR_NETSCALER_USERNAME_FILE": str(user_file),
            "DSR_NETSCALER_PASSWORD_FILE": str(password_file),
            **{f"DSR_{k.upper()}": v for k, v in settings.items()},
        }
        return cls(name, workdir, env, namespaces)

    @property
    def proc(self) -> Proc | None:
        return self.runs[-1] if self.runs else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.popen.poll() is None

    def start(self) -> None:
        env = {**self.env, "DSR_METRICS_PORT": str(self.metrics_port), "DSR_LIVENESS_PORT": str(self.liveness_port)}
        argv = ["-m", "dsr_operator.cli", "run", *(f"--namespace={n}" for n in self.namespaces)]
        run = len(self.runs) + 1
        self.runs.append(spawn(f"{self.name}-{run}", argv, env, self.workdir / f"{self.name}-{run}.log"))

    def wait_live(self, timeout: float = 90, tick: Callable[[], None] | None = None) -> None:
        proc = self.proc
        assert proc is not None

        def live() -> bool:
            proc.check_alive()
            return _http_ok(f"http://127.0.0.1:{self.liveness_port}/healthz")

        eventually_sync(live, timeout=timeout, what=f"{proc.name}'s /healthz", tick=tick, error=ControlPlaneError)

    def kill(self) -> None:
        if self.proc is not None:
            signal_group(self.proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.popen.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(grace=20)

    def log(self) -> str:
        return self.proc.log.read_text(errors="replace") if self.proc is not None and self.proc.log.exists() else ""

    def logs(self) -> dict[str, str]:
        return {p.name: p.log.read_text(errors="replace") for p in self.runs if p.log.exists()}

    def metrics(self) -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as resp:
                text: str = resp.read().decode(errors="replace")
                return text
        except OSError:
            return None


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


# --------------------------------------------------------------------------------- a whole stage


@dataclasses.dataclass
class Staged:
    """What `staged` set up: the test's namespace, the chart installed for it, the simulator, operators."""

    cp: ControlPlane
    work: Path
    namespace: str
    chart: ChartInstall
    sim: SimProcess
    operators: list[OperatorProcess] = dataclasses.field(default_factory=list)

    def operator(self, name: str, operator_id: str, **settings: str) -> OperatorProcess:
        """An operator replica with the chart's environment (not started), stopped with the stage."""
        op = OperatorProcess.for_chart(name, self.work, self.chart, self.cp, self.sim, operator_id,
                                       [self.namespace], **settings)
        self.operators.append(op)
        return op


@contextlib.contextmanager
def staged(cp: ControlPlane, work: Path, prefix: str) -> Iterator[Staged]:
    """A namespace `<prefix>-<random>`, the chart limited to it, the simulator running; undone afterwards."""
    namespace = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cleanup: list[Callable[[], Any]] = []
    sim = SimProcess(work, f"{prefix}admin", f"pw-{uuid.uuid4().hex}")
    stage: Staged | None = None
    try:
        cp.kc("create", "namespace", namespace)
        cleanup.append(lambda: cp.kc("delete", "namespace", namespace, "--wait=false", check=False))
        chart, undo = install_chart(cp, [namespace])
        cleanup.extend(undo)
        sim.start()
        stage = Staged(cp, work, namespace, chart, sim)
        yield stage
    finally:
        for op in stage.operators if stage is not None else ():
            op.stop()
        sim.stop()
        for step in reversed(cleanup):
            with contextlib.suppress(Exception):
                step()
