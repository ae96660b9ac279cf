"""A real Kubernetes control plane for tests: etcd + kube-apiserver + kube-controller-manager.

The binaries come from `make controlplane` (tools/controlplane/build.sh) and live in
`.cache/controlplane/bin/` at the repo root, or in $DSR_CONTROLPLANE_BIN.

Contract of the `controlplane` fixture (one per tier run, package-scoped) (a `ControlPlane`):

* `url`          https://127.0.0.1:<port> of the kube-apiserver (free loopback ports, temp data dir)
* `token`        a static bearer token of user `dsr-test-admin` in group `system:masters`
* `kubeconfig`   path of an admin kubeconfig (context `dsr-test`) using that token
* `ca_file`      CA bundle of the apiserver's self-generated serving certificate;
  `insecure` is False (the CA verifies `127.0.0.1`)
* `bin_dir`, `workdir` (logs: `<workdir>/logs/*.log`)
* `kc(*args, input=None, check=True)`  -> CompletedProcess of kubectl with the admin kubeconfig
  (raises ControlPlaneError on a non-zero exit when check); `kc_json(*args)` adds `-o json`
* `helm(*args, ...)`                   -> CompletedProcess of helm (if built) with that kubeconfig
* `request(method, path, body=None, token=None)` -> (status, parsed JSON or text), raw HTTPS;
  `ssl_context()` for your own clients
* `create_token(service_account, namespace, audiences=None, expiration_seconds=600)`
  mints a ServiceAccount token through the TokenRequest API
* `kubeconfig_for_token(token, name)`  writes a kubeconfig for another identity
* `wait_for(predicate, timeout, what)` polls until predicate() is truthy (`tests.support.waiting`;
  ControlPlaneError on timeout or when one of its processes exits)

The function-scoped `cp_namespace` fixture gives a fresh namespace whose `default`
ServiceAccount exists. Mark tests with `pytest.mark.controlplane`. Objects live for the whole
session: use unique names (cluster-scoped objects especially) and clean up what you create.

The apiserver runs with `--authorization-mode=Node,RBAC`, a token auth file, service-account
token signing (RSA key made with the openssl CLI) and serving certs it generates in its
--cert-dir. The controller-manager runs the serviceaccount, serviceaccount-token, namespace,
garbage-collector, endpoints, endpointslice, endpointslice-mirroring and root-CA publisher
controllers (no node-lifecycle or pod-GC: fake Nodes and their Pods stay put); there is
no scheduler and no kubelet (tests set `spec.nodeName` and write pod status themselves).

Without the binaries the tier skips, naming `make controlplane`; with CI=true or
DSR_REQUIRE_CONTROLPLANE=1 it fails instead. DSR_CONTROLPLANE_KEEP=1 keeps the workdir
(`/tmp/dsr-controlplane-*/<attempt>/`, logs in `logs/`).

The cluster tier (tests/cluster) boots the same control plane with `started(BootOptions(...))`:
another listen address (one its nodes reach), extra static tokens (node identities), extra
apiserver/controller-manager flags, all controllers and a kube-scheduler. The defaults are the
control-plane tier's.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import urllib.error
import urllib.request
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.waiting import eventually_sync

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("DSR_CONTROLPLANE_BIN") or REPO_ROOT / ".cache" / "controlplane" / "bin")
REQUIRED_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")
CONTROLLERS = (
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "namespace-controller",
    "garbage-collector-controller",
    "endpoints-controller",
    "endpointslice-controller",
    "endpointslice-mirroring-controller",
    "root-ca-certificate-publisher-controller",
)
ADMIN_USER = "dsr-test-admin"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_CIDR = "10.96.0.0/16"
START_TIMEOUT = float(os.environ.get("DSR_CONTROLPLANE_START_TIMEOUT", "120"))


def _required() -> bool:
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("DSR_REQUIRE_CONTROLPLANE") == "1"


def _missing_binaries() -> list[str]:
    return [name for name in REQUIRED_BINARIES if not os.access(BIN_DIR / name, os.X_OK)]


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class BootOptions:
    """How `started()` boots the control plane; the defaults are the control-plane tier's.

    * `address`: the apiserver's bind and advertise address (its serving certificate covers it);
      etcd, the controller-manager and the scheduler stay on 127.0.0.1.
    * `tokens`: extra lines of the static token file as (token, user, groups), groups comma-separated.
    * `apiserver_args` / `controller_manager_args`: extra flags, appended (a later flag wins).
    * `controllers`: the controller-manager's --controllers (None: the tier's CONTROLLERS list).
    * `scheduler`: also run kube-scheduler (needs the binary from `make controlplane`).
    """

    address: str = "127.0.0.1"
    tokens: Sequence[tuple[str, str, str]] = ()
    apiserver_args: Sequence[str] = ()
    controller_manager_args: Sequence[str] = ()
    controllers: str | None = None
    scheduler: bool = False


class ControlPlaneError(RuntimeError):
    pass


@dataclass
class Proc:
    """A process started in its own process group, with its log file (also used by the tier's tests)."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise ControlPlaneError(
                f"{self.name} exited with code {self.popen.returncode}; last log lines ({self.log}):\n{self.tail()}"
            )

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the process group, SIGKILL after `grace` seconds."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # The process group may hold children even after the leader exited.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)


@dataclass
class ControlPlane:
    url: str
    token: str
    kubeconfig: Path
    ca_file: Path
    bin_dir: Path
    workdir: Path
    insecure: bool = False
    processes: list[Proc] = field(default_factory=list, repr=False)

    # -- commands ---------------------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "HELM_"))}
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        helm_home = self.workdir / "helm"
        env["HELM_CACHE_HOME"] = str(helm_home / "cache")
        env["HELM_CONFIG_HOME"] = str(helm_home / "config")
        env["HELM_DATA_HOME"] = str(helm_home / "data")
        return env

    def _run(
        self, binary: str, args: tuple[str, ...], input: str | None, check: bool, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / binary), *args]
        proc = subprocess.run(
            cmd, input=input, capture_output=True, text=True, env=self.env, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise ControlPlaneError(
                f"{binary} {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr or proc.stdout}"
            )
        return proc

    def kc(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl as the admin. Raises ControlPlaneError on failure when check is set."""
        return self._run("kubectl", args, input, check, timeout)

    def kc_json(self, *args: str, timeout: float = 60) -> Any:
        return json.loads(self.kc(*args, "-o", "json", timeout=timeout).stdout)

    def helm(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        """Run helm 4 against this control plane (needs `make controlplane` to have fetched it)."""
        if not os.access(self.bin_dir / "helm", os.X_OK):
            pytest.skip(f"helm is missing from {self.bin_dir}: run `make controlplane`")
        return self._run("helm", args, input, check, timeout)

    def kstatus(self, obj: Mapping[str, Any]) -> dict[str, str]:
        """What sigs.k8s.io/cli-utils' kstatus says of `obj` ({name, status, message}; `make controlplane`
        builds it from tools/controlplane/kstatus)."""
        if not os.access(self.bin_dir / "kstatus", os.X_OK):
            message = f"kstatus is missing from {self.bin_dir}: run `make controlplane`"
            if os.environ.get("DSR_REQUIRE_CONTROLPLANE") or os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        done = subprocess.run([str(self.bin_dir / "kstatus")], input=json.dumps(obj), capture_output=True,
                              text=True, timeout=30, check=True)
        answer: dict[str, str] = json.loads(done.stdout)
        return answer

    # -- raw HTTPS --------------------------------------------------------------------------
    def ssl_context(self) -> ssl.SSLContext:
        if self.insecure:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        return ssl.create_default_context(cafile=str(self.ca_file))

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        content_type: str = "application/json",
        timeout: float = 30,
    ) -> tuple[int, Any]:
        """One HTTPS request as the admin (or `token`): (status, JSON or text), no raise on errors."""
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token or self.token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, context=self.ssl_context(), timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        text = raw.decode(errors="replace")
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    # -- identities -------------------------------------------------------------------------
    def create_token(
        self,
        service_account: str,
        namespace: str = "default",
        audiences: list[str] | None = None,
        expiration_seconds: int = 600,
        pod: Mapping[str, Any] | None = None,
    ) -> str:
        """Mint a token for a ServiceAccount through the TokenRequest API; bound to `pod` (an object as the API
        returned it) as a kubelet binds a Pod's projected token, so that it names the Pod's node."""
        spec: dict[str, Any] = {"expirationSeconds": expiration_seconds}
        if audiences:
            spec["audiences"] = audiences
        if pod is not None:
            spec["boundObjectRef"] = {"kind": "Pod", "apiVersion": "v1", "name": pod["metadata"]["name"],
                                      "uid": pod["metadata"]["uid"]}
        status, body = self.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
        )
        if status != 201:
            raise ControlPlaneError(f"TokenRequest for {namespace}/{service_account} failed ({status}): {body}")
        return body["status"]["token"]

    def kubeconfig_for_token(self, token: str, name: str) -> Path:
        """Write a kubeconfig that authenticates with `token` (e.g. a ServiceAccount's)."""
        path = self.workdir / f"kubeconfig-{name}"
        _write_kubeconfig(path, self.url, self.ca_file, token, user=name)
        return path

    # -- waiting ----------------------------------------------------------------------------
    def wait_for(
        self,
        predicate: Callable[[], Any],
        timeout: float = 60,
        what: str = "condition",
        interval: float = 0.25,
    ) -> Any:
        def alive() -> None:
            for proc in self.processes:
                proc.check_alive()

        return eventually_sync(predicate, timeout=timeout, what=what, interval=interval, tick=alive,
                               error=ControlPlaneError)

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()


def _write_kubeconfig(path: Path, server: str, ca_file: Path, token: str, user: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "dsr-test", "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "dsr-test", "context": {"cluster": "dsr-test", "user": user}}],
        "current-context": "dsr-test",
    }
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    path.chmod(0o600)


def _die_with_parent() -> None:
    """In the child before exec: die when pytest dies, even by SIGKILL (Linux prctl).

    SIGKILL, not SIGTERM: a kube-apiserver whose etcd went away with it would spend long
    in its graceful shutdown; the normal teardown (ControlPlane.stop) still uses SIGTERM first."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _start(name: str, args: list[str], logs: Path, command: Sequence[str] | None = None) -> Proc:
    """Start BIN_DIR/name with args (or `command`, a full argv, logged as `name`) in its own process group."""
    log = logs / f"{name}.log"
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            list(command) if command is not None else [str(BIN_DIR / name), *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stopped with killpg
            preexec_fn=_die_with_parent,
        )
    return Proc(name, popen, log)


def _http_ok(url: str, ctx: ssl.SSLContext | None = None, token: str | None = None) -> bool:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
            body = resp.read().decode(errors="replace").strip()
            return resp.status == 200 and (body == "ok" or '"health":"true"' in body)
    except (OSError, urllib.error.URLError, ssl.SSLError):
        return False


def _boot(workdir: Path, options: BootOptions | None = None) -> ControlPlane:
    """Start etcd, kube-apiserver and kube-controller-manager (and kube-scheduler when asked);
    on failure stop what started."""
    options = options or BootOptions()
    logs = workdir / "logs"
    logs.mkdir(parents=True)
    token = uuid.uuid4().hex
    lines = [f'{token},{ADMIN_USER},{uuid.uuid4()},"system:masters"']
    lines += [f'{tok},{user},{uuid.uuid4()},"{groups}"' for tok, user, groups in options.tokens]
    (workdir / "tokens.csv").write_text("\n".join(lines) + "\n")
    sa_key = workdir / "sa.key"
    sa_pub = workdir / "sa.pub"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(sa_key)],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["openssl", "pkey", "-in", str(sa_key), "-pubout", "-out", str(sa_pub)],
        check=True,
        capture_output=True,
    )
    cert_dir = workdir / "certs"
    cert_dir.mkdir()
    ca_file = cert_dir / "apiserver.crt"  # written by the apiserver: its serving cert + self-signed CA
    etcd_port, etcd_peer_port, api_port = _free_port(), _free_port(), _free_port(options.address)
    url = f"https://{options.address}:{api_port}"
    kubeconfig = workdir / "kubeconfig"
    cp = ControlPlane(url=url, token=token, kubeconfig=kubeconfig, ca_file=ca_file, bin_dir=BIN_DIR, workdir=workdir)

    try:
        _start_all(cp, options, workdir, logs, sa_key, sa_pub, cert_dir, etcd_port, etcd_peer_port, api_port)
    except BaseException:
        cp.stop()
        raise
    return cp


def _start_all(
    cp: ControlPlane,
    options: BootOptions,
    workdir: Path,
    logs: Path,
    sa_key: Path,
    sa_pub: Path,
    cert_dir: Path,
    etcd_port: int,
    etcd_peer_port: int,
    api_port: int,
) -> None:
    url, token, ca_file, kubeconfig = cp.url, cp.token, cp.ca_file, cp.kubeconfig
    etcd_url = f"http://127.0.0.1:{etcd_port}"
    peer_url = f"http://127.0.0.1:{etcd_peer_port}"
    cp.processes.append(
        _start(
            "etcd",
            [
                "--name=dsr-test",
                f"--data-dir={workdir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=dsr-test={peer_url}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
            logs,
        )
    )
    cp.wait_for(lambda: _http_ok(f"{etcd_url}/health"), 30, "etcd /health")

    cp.processes.append(
        _start(
            "kube-apiserver",
            [
                f"--etcd-servers={etcd_url}",
                f"--bind-address={options.address}",
                f"--advertise-address={options.address}",
                f"--secure-port={api_port}",
                f"--cert-dir={cert_dir}",
                "--authorization-mode=Node,RBAC",
                f"--token-auth-file={workdir / 'tokens.csv'}",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={sa_pub}",
                f"--service-account-signing-key-file={sa_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
                *options.apiserver_args,
            ],
            logs,
        )
    )

    def apiserver_ready() -> bool:
        try:  # the apiserver writes its certificate at start-up
            ctx = ssl.create_default_context(cafile=str(ca_file))
        except (OSError, ssl.SSLError):
            return False
        return _http_ok(f"{url}/readyz", ctx, token)

    cp.wait_for(apiserver_ready, START_TIMEOUT, "kube-apiserver /readyz")
    _write_kubeconfig(kubeconfig, url, ca_file, token, user=ADMIN_USER)

    cp.processes.append(
        _start(
            "kube-controller-manager",
            [
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={_free_port()}",
                f"--cert-dir={workdir / 'kcm-certs'}",
                "--leader-elect=false",
                f"--controllers={options.controllers or ','.join(CONTROLLERS)}",
                f"--service-account-private-key-file={sa_key}",
                f"--root-ca-file={ca_file}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--v=1",
                *options.controller_manager_args,
            ],
            logs,
        )
    )
    if options.scheduler:
        cp.processes.append(
            _start(
                "kube-scheduler",
                [
                    f"--kubeconfig={kubeconfig}",
                    f"--authentication-kubeconfig={kubeconfig}",
                    f"--authorization-kubeconfig={kubeconfig}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={_free_port()}",
                    "--leader-elect=false",
                    "--v=1",
                ],
                logs,
            )
        )

    # The serviceaccount controller creating `default` in `default` shows the controllers run.
    def default_sa() -> bool:
        status, _ = cp.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")
        return status == 200

    cp.wait_for(default_sa, START_TIMEOUT, "kube-controller-manager to create serviceaccount default/default")


def missing_binaries() -> list[str]:
    """The control-plane binaries `make controlplane` provides that are not in BIN_DIR."""
    return _missing_binaries()


@contextlib.contextmanager
def started(options: BootOptions | None = None, workdir: Path | None = None) -> Iterator[ControlPlane]:
    """Boot a control plane in a fresh temp dir (one retry), stop it and remove the dir afterwards.

    For the fixture below, the cluster tier (`options`; `workdir`: boot in <workdir>/<attempt>/,
    an existing folder the caller owns and removes) and for scripts (bench/soak.py) that run
    outside pytest."""
    owned = workdir is None
    root = Path(tempfile.mkdtemp(prefix="dsr-controlplane-")) if workdir is None else workdir
    cp: ControlPlane | None = None
    try:
        try:
            cp = _boot(root / "1", options)
        except ControlPlaneError as err:
            # Most likely a free port taken between probing and binding: one fresh retry.
            warnings.warn(f"control plane failed to start, retrying once: {err}", stacklevel=1)
            cp = _boot(root / "2", options)
        yield cp
    finally:
        if cp is not None:
            cp.stop()
        if owned and os.environ.get("DSR_CONTROLPLANE_KEEP") != "1":
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="package")
def controlplane() -> Iterator[ControlPlane]:
    """One control plane for this tier, stopped when the tier ends (so the other tiers run unloaded)."""
    missing = _missing_binaries()
    if missing:
        message = f"control-plane binaries missing from {BIN_DIR}: {', '.join(missing)}; run `make controlplane`"
        if _required():
            pytest.fail(message + " (required: CI=true or DSR_REQUIRE_CONTROLPLANE=1)", pytrace=False)
        pytest.skip(message)
    with started() as cp:
        yield cp


@pytest.fixture
def cp_namespace(controlplane: ControlPlane) -> Iterator[str]:
    """A fresh namespace with its `default` ServiceAccount in place; deleted afterwards (not awaited)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    controlplane.kc("create", "namespace", name)
    controlplane.wait_for(
        lambda: controlplane.request("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default")[0] == 200,
        60,
        f"serviceaccount {name}/default",
    )
    yield name
    controlplane.kc("delete", "namespace", name, "--wait=false", check=False)
