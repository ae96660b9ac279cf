"""A real Kubernetes cluster on this machine: the control plane in the host's network namespace,
nodes n1.. as network namespaces on the DSR lab's bridge, each with its own containerd, kubelet and
kube-proxy. The comments at each setting say why it is what it is on this kind of machine (a
container without systemd, cgroup v1 hybrid, no CAP_SYS_RESOURCE).

    host netns:  etcd, kube-apiserver (on <net>.1, the host's veth into the lab bridge),
                 kube-controller-manager (all controllers), kube-scheduler
    lab bridge:  client (.10), lb (.2, the simulator's dataplane), n1 (.21), n2 (.22), n3 (.23), host (.1)
    node netns:  containerd, kubelet, kube-proxy (started with `nsenter --net=/run/netns/<ns>`),
                 the CNI bridge cni0 with the node's pod CIDR 10.244.<i>.0/24, hostNetwork pods

Routes: no default route in a node; the service CIDR goes out of eth0 (kube-proxy's DNAT picks the
endpoint), the other nodes' pod CIDRs via their node IPs; the host routes each pod CIDR via its node
(pods reach the apiserver, also through the `kubernetes` Service).

`boot()` is a context manager that yields a `Cluster` and always tears everything down; the
teardown then checks the host (`HostState`) and raises `LeftoversError` naming what is left.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from dsr_lab.lab import Lab
from tests.controlplane import conftest as cpboot
from tests.controlplane.conftest import ControlPlane, Proc
from tests.support.waiting import eventually_sync

REPO_ROOT = cpboot.REPO_ROOT
BIN_DIR = cpboot.BIN_DIR
NODE_BINARIES = ("kubelet", "kube-proxy", "kube-scheduler")
# command -> Debian package, plus the CNI plugins as files.
COMMANDS = {
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "iptables": "iptables",
    "iptables-save": "iptables",
    "conntrack": "conntrack",
    "nsenter": "util-linux",
    "ip": "iproute2",
    "nft": "nftables",
    "tcpdump": "tcpdump",
    "openssl": "openssl",
}
CNI_BIN = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "loopback")
PAUSE_IMAGE = "registry.k8s.io/pause:3.10.1"  # what `make pause-image` tags (tools/image/build.sh)
POD_NET = "10.244"  # node i gets <POD_NET>.<i>.0/24 out of <POD_NET>.0.0/16
SERVICE_CIDR = cpboot.SERVICE_CIDR
LAB_NET = os.environ.get("DSR_CLUSTER_NET", "10.79.0")
# The machine-wide sysctls the kubelet sets (setupKernelTunables): saved at boot, restored at teardown.
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
CONTAINER_LOGS = Path("/var/log/containers")  # kubelet's fixed path for log symlinks
CNI_CACHE = Path("/var/lib/cni")  # libcni's result cache (containerd 1.6 cannot move it)
# The kubelet's device-plugin socket is at a fixed path, not under --root-dir: kubelets started at the
# same moment race for it (one fails "address already in use"), so they start one after the other.
KUBELET_DIR = Path("/var/lib/kubelet")
DEVICE_PLUGIN_SOCKET = KUBELET_DIR / "device-plugins" / "kubelet.sock"
SHIM_DIRS = (Path("/run/containerd/s"), Path("/run/containerd/fifo"))


#: Figures the tier's tests measured, by part ("cluster", "dsr"): printed in pytest's summary.
REPORT: dict[str, dict[str, float]] = {}

_boots = itertools.count()
# Several clusters in one process (the tier's session cluster and a short-lived one): the machine-wide
# state they share (sysctls, kubelet's /var/log/containers, libcni's cache) is saved by the first
# boot and restored when the last one is down.
_shared: dict[str, Any] = {"active": 0, "before": None}


class ClusterError(RuntimeError):
    pass


class LeftoversError(ClusterError):
    """Teardown left something on the host."""


def images_dir() -> Path:
    """Where the image tars come from: $DSR_CLUSTER_IMAGES, else $DSR_IMAGE_DIR (where `make image`
    writes), else <repo>/.cache/image."""
    env = os.environ.get("DSR_CLUSTER_IMAGES") or os.environ.get("DSR_IMAGE_DIR")
    return Path(env or REPO_ROOT / ".cache" / "image")


def image_tars() -> list[Path]:
    """Every `*.tar` in images_dir(), imported into each node's containerd at boot; not `base-*.tar`,
    the build cache `make image` keeps there (the Debian base the app image is built on)."""
    folder = images_dir()
    return sorted(p for p in folder.glob("*.tar") if not p.name.startswith("base-")) if folder.is_dir() else []


def missing() -> str | None:
    """Why the cluster cannot run here, or None."""
    if sys.platform != "linux":
        return "the cluster tier needs Linux"
    if os.geteuid() != 0:
        return "the cluster tier needs root (network namespaces, containerd, cgroups)"
    absent = [name for name in (*cpboot.REQUIRED_BINARIES, *NODE_BINARIES) if not os.access(BIN_DIR / name, os.X_OK)]
    if absent:
        return f"binaries missing from {BIN_DIR}: {', '.join(absent)}; run `make controlplane`"
    packages = sorted({pkg for cmd, pkg in COMMANDS.items() if shutil.which(cmd) is None})
    if not all(os.access(CNI_BIN / p, os.X_OK) for p in CNI_PLUGINS):
        packages.append("containernetworking-plugins")
    if packages:
        return f"the cluster tier needs Debian packages: apt-get install {' '.join(packages)}"
    if not Path("/sys/fs/cgroup/memory").is_dir():
        return "the cluster tier expects cgroup v1 (hybrid) hierarchies under /sys/fs/cgroup"
    return None


def run(
    *args: str, check: bool = True, timeout: float = 60, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False, input=input)
    if check and proc.returncode != 0:
        raise ClusterError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr or proc.stdout}")
    return proc


# -- images -----------------------------------------------------------------------------------------


def docker_archive(path: Path, tag: str, files: dict[str, tuple[bytes, int]], config: dict[str, Any]) -> Path:
    """Write a one-layer `docker save`-style tar: files {path in image: (content, mode)}, config's
    "config" part (Entrypoint, User...); `ctr images import` reads it."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, (content, mode) in sorted(files.items()):
            info = tarfile.TarInfo(name.lstrip("/"))
            info.size, info.mode, info.mtime = len(content), mode, 0
            tar.addfile(info, io.BytesIO(content))
    layer_bytes = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    image_config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created_by": "tests/cluster/cluster.py"}],
        },
        sort_keys=True,
    ).encode()
    config_name = hashlib.sha256(image_config).hexdigest() + ".json"
    layer_name = diff_id.removeprefix("sha256:") + "/layer.tar"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [tag], "Layers": [layer_name]}]).encode()
    tmp = path.with_suffix(".tmp")
    with tarfile.open(tmp, mode="w") as out:
        for name, content in ((layer_name, layer_bytes), (config_name, image_config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(content), 0o644, 0
            out.addfile(info, io.BytesIO(content))
    tmp.replace(path)
    return path


ECHO_IMAGE = "dsr-test/echo-server:1"
ECHO_PORT = 8080
ECHO_SERVER_C = r"""
/* The cluster tier's test server: answers every TCP connection on :8080 with HTTP 200 and its hostname
   (a pod's name). Static, no libc beyond the syscalls, so the image is one file. */
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void down(int signo) { (void)signo; _exit(0); }

int main(void) {
  char host[256] = {0}, reply[512], buf[2048];
  int one = 1, n, s, c;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(8080)};
  signal(SIGTERM, down);
  signal(SIGINT, down);
  signal(SIGPIPE, SIG_IGN);
  gethostname(host, sizeof host - 1);
  n = snprintf(reply, sizeof reply,
               "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n%s\n",
               strlen(host) + 1, host);
  s = socket(AF_INET, SOCK_STREAM, 0);
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(s, (struct sockaddr *)&a, sizeof a) != 0 || listen(s, 64) != 0) {
    perror("listen");
    return 1;
  }
  for (;;) {
    c = accept(s, NULL, NULL);
    if (c < 0) continue;
    (void)read(c, buf, sizeof buf);
    (void)write(c, reply, n);
    close(c);
  }
}
"""


def build_echo_image(dest: Path) -> Path:
    """A one-file image (test-local, in .cache/cluster) whose server answers HTTP on :8080 with the
    pod's name: for traffic checks while the project's own image is not there."""
    if dest.exists():
        return dest
    if shutil.which("gcc") is None:
        raise ClusterError("gcc is needed to build the cluster tier's echo server image")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        source, binary = Path(tmp) / "echo.c", Path(tmp) / "echo"
        source.write_text(ECHO_SERVER_C)
        run("gcc", "-Os", "-Wall", "-static", "-o", str(binary), str(source), timeout=120)
        run("strip", str(binary), check=False)
        return docker_archive(
            dest, ECHO_IMAGE, {"/echo": (binary.read_bytes(), 0o755)}, {"Entrypoint": ["/echo"], "User": "65534:65534"}
        )


# -- host state -------------------------------------------------------------------------------------


def _sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key


def read_sysctls() -> dict[str, str]:
    return {k: _sysctl_path(k).read_text().strip() for k in KUBELET_SYSCTLS if _sysctl_path(k).exists()}


def _listing(folder: Path) -> set[str]:
    try:
        return {p.name for p in folder.iterdir()}
    except OSError:
        return set()


def _iptables_rules() -> list[str]:
    """The host's iptables rules without counters and comments (iptables-save in the host netns)."""
    out = run("iptables-save", check=False).stdout
    return [re.sub(r"\[\d+:\d+\]", "", line) for line in out.splitlines() if line and not line.startswith("#")]


def _mountpoints() -> list[str]:
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            points.append(line.split()[4].replace("\\040", " "))
    return points


@dataclasses.dataclass
class HostState:
    """What the cluster may change on the host, taken before boot and compared after teardown."""

    sysctls: dict[str, str]
    iptables: list[str]
    shim_entries: dict[str, set[str]]
    container_logs_existed: bool
    cni_cache_existed: bool
    run_containerd_existed: bool
    kubelet_dir_existed: bool

    @classmethod
    def take(cls) -> HostState:
        return cls(
            sysctls=read_sysctls(),
            iptables=_iptables_rules(),
            shim_entries={str(d): _listing(d) for d in SHIM_DIRS},
            container_logs_existed=CONTAINER_LOGS.exists(),
            cni_cache_existed=CNI_CACHE.exists(),
            run_containerd_existed=Path("/run/containerd").exists(),
            kubelet_dir_existed=KUBELET_DIR.exists(),
        )


# -- the cluster ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Node:
    """One node: a network namespace on the lab bridge with containerd, kubelet and kube-proxy."""

    name: str
    index: int  # 1-based
    ip: str
    netns: str
    pod_cidr: str
    dir: Path
    cgroup_root: str  # the kubelet's cgroupRoot, e.g. /dsrc-1234-n1
    processes: list[Proc] = dataclasses.field(default_factory=list, repr=False)

    @property
    def socket(self) -> Path:
        return self.dir / "containerd" / "containerd.sock"

    def nsenter(self, *cmd: str) -> list[str]:
        """argv running cmd in this node's network namespace (not `ip netns exec`: it remounts /sys)."""
        return ["nsenter", f"--net=/run/netns/{self.netns}", "--", *cmd]

    def exec(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run(*self.nsenter(*cmd), check=check, timeout=timeout)

    def ctr(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`ctr` against this node's containerd, namespace k8s.io (the CRI's)."""
        return run("ctr", "-a", str(self.socket), "-n", "k8s.io", *args, check=check, timeout=timeout)

    def import_image(self, tar: Path) -> None:
        self.ctr("images", "import", str(tar), timeout=300)

    def images(self) -> list[str]:
        return self.ctr("images", "ls", "-q").stdout.split()


@dataclasses.dataclass
class Cluster:
    """What a test gets from the `cluster` fixture.

    * `cp`: the ControlPlane (kc, kc_json, request, create_token, wait_for, kubeconfig, ca_file)
    * `api_url`: https://<host ip on the lab>:<port>; the same URL works from the host, the nodes and
      the pods; pods also reach it as the `kubernetes` Service (https://10.96.0.1)
    * `nodes`: Node n1.. (name, ip, netns, pod_cidr, ctr(), import_image(), exec())
    * `lab`: the DSR lab (lab.ns("client"), lab.ns("lb"), lab.ip(...)); the nodes are `lab.nodes`
    * `import_image(tar)`: into every node's containerd; pods then use `imagePullPolicy: Never`
    * `figures`: seconds of the boot phases (and `teardown` once down)
    """

    cp: ControlPlane
    lab: Lab
    nodes: list[Node]
    workdir: Path
    pod_net: str = POD_NET
    figures: dict[str, float] = dataclasses.field(default_factory=dict)
    leftovers: list[str] | None = None
    """After teardown: what it left on the host (empty: clean)."""

    @property
    def cluster_cidr(self) -> str:
        return f"{self.pod_net}.0.0/16"

    @property
    def api_url(self) -> str:
        return self.cp.url

    @property
    def kubeconfig(self) -> Path:
        return self.cp.kubeconfig

    def kc(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return self.cp.kc(*args, input=input, check=check, timeout=timeout)

    def kc_json(self, *args: str, timeout: float = 60) -> Any:
        return self.cp.kc_json(*args, timeout=timeout)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def import_image(self, tar: Path) -> None:
        for node in self.nodes:
            node.import_image(tar)

    def processes(self) -> list[Proc]:
        return [*self.cp.processes, *(p for n in self.nodes for p in n.processes)]

    def check_alive(self) -> None:
        for proc in self.processes():
            proc.check_alive()

    def wait_for(
        self, predicate: Callable[[], Any], timeout: float = 60, what: str = "condition", interval: float = 0.25
    ) -> Any:
        return eventually_sync(predicate, timeout=timeout, what=what, interval=interval, tick=self.check_alive,
                               error=ClusterError)

    def ready_nodes(self) -> set[str]:
        items = self.kc_json("get", "nodes")["items"]
        return {
            n["metadata"]["name"]
            for n in items
            if any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))
        }

    def rss_mib(self) -> float:
        """Resident memory of every process of the cluster (control plane, node daemons, shims, containers)."""
        return sum(_rss_kib(pid) for pid in _cluster_pids(self)) / 1024


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _shim_pids(node: Node) -> list[int]:
    """containerd-shim-runc-v2 processes of this node's containerd (`-address <its socket>`)."""
    sock = str(node.socket)
    return [pid for pid in _pids() if (cmd := _cmdline(pid)) and "containerd-shim" in cmd[0] and sock in cmd]


def _cgroup_dirs(cgroup_root: str) -> list[Path]:
    """The node's cgroupRoot in every hierarchy that has it."""
    name = cgroup_root.strip("/")
    return [d / name for d in Path("/sys/fs/cgroup").iterdir() if (d / name).is_dir()]


def _cgroup_pids(cgroup_root: str) -> set[int]:
    pids: set[int] = set()
    for top in _cgroup_dirs(cgroup_root):
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(x) for x in procs.read_text().split())
    return pids


def _cluster_pids(cluster: Cluster) -> set[int]:
    pids = {p.popen.pid for p in cluster.processes() if p.popen.poll() is None}
    for node in cluster.nodes:
        pids.update(_shim_pids(node))
        pids.update(_cgroup_pids(node.cgroup_root))
    return pids


# -- configuration files ----------------------------------------------------------------------------


def _containerd_config(node: Node) -> str:
    d = node.dir / "containerd"
    return f"""version = 2
root = "{d / "root"}"
state = "{d / "state"}"
# /opt/containerd and the snapshotters we do not use stay untouched.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{node.socket}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d / "runc"}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{node.dir / "cni" / "net.d"}"
    max_conf_num = 1
"""


def _cni_config(node: Node, network: str) -> str:
    return json.dumps(
        {
            "cniVersion": "0.4.0",
            "name": network,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": node.pod_cidr}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(node.dir / "cni" / "ipam"),
                    },
                }
            ],
        },
        indent=2,
    )


def _kubelet_config(node: Node, client_ca: Path) -> str:
    d = node.dir
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # Required on this machine: cgroup v1 hybrid, no CAP_SYS_RESOURCE, no fixed paths.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": node.cgroup_root,  # one per node: a kubelet removes pod cgroups it does not know
        "failSwapOn": False,
        "oomScoreAdj": 0,
        "staticPodPath": str(d / "manifests"),
        "volumePluginDir": str(d / "volume-plugins"),
        "podLogsDir": str(d / "pod-logs"),
        "containerRuntimeEndpoint": f"unix://{node.socket}",
        "address": node.ip,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        # Only the apiserver (a client certificate of our CA) talks to the kubelet.
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(client_ca)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "clusterDomain": "cluster.local",
        "resolvConf": "/etc/resolv.conf",
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "protectKernelDefaults": False,
        "registerNode": True,
        "shutdownGracePeriod": "0s",
        # A shared disk and memory: no evictions for the tests' sake.
        "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "nodeStatusUpdateFrequency": "2s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
    }
    return json.dumps(config, indent=2)


def _kube_proxy_config(node: Node, kubeconfig: Path, cluster_cidr: str) -> str:
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",  # no IPVS in this kernel
        "hostnameOverride": node.name,
        "clusterCIDR": cluster_cidr,
        "nodePortAddresses": [f"{node.ip}/32"],
        # Leave the machine-wide conntrack sysctls alone.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "oomScoreAdj": 0,
        "metricsBindAddress": "127.0.0.1:10249",
        "healthzBindAddress": "127.0.0.1:10256",
        "iptables": {"minSyncPeriod": "0s", "syncPeriod": "30s"},
    }
    return json.dumps(config, indent=2)


def _pki(workdir: Path) -> tuple[Path, Path, Path]:
    """A CA the kubelets trust for clients and the apiserver's client certificate signed by it."""
    pki = workdir / "pki"
    pki.mkdir()
    ca_key, ca_crt = pki / "kubelet-client-ca.key", pki / "kubelet-client-ca.crt"
    key, csr, crt = (
        pki / "apiserver-kubelet-client.key",
        pki / "apiserver-kubelet-client.csr",
        pki / "apiserver-kubelet-client.crt",
    )
    openssl = ("openssl",)
    run(
        *openssl,
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca_crt),
        "-days",
        "2",
        "-subj",
        "/CN=dsr-test-kubelet-client-ca",
    )
    run(
        *openssl,
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        "/O=system:masters/CN=kube-apiserver-kubelet-client",
    )
    run(
        *openssl,
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca_crt),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-out",
        str(crt),
        "-days",
        "2",
    )
    return ca_crt, crt, key


# -- boot and teardown ------------------------------------------------------------------------------


@contextlib.contextmanager
def boot(
    node_names: Sequence[str] = ("n1", "n2", "n3"),
    *,
    images: Sequence[Path] | None = None,
    prefix: str | None = None,
    net: str = LAB_NET,
    pod_net: str = POD_NET,
    check_clean: bool = True,
) -> Iterator[Cluster]:
    """Boot the lab, the control plane and the nodes; tear all down afterwards, then (check_clean)
    raise LeftoversError if the host is not as it was (also in `Cluster.leftovers`).

    `images`: tars to import (default image_tars()); `net`: the lab's /24 (the host is <net>.1);
    `pod_net`: the first two octets of the pods' /16. A second cluster at the same time needs
    another `net` and `pod_net`."""
    n = next(_boots)
    prefix = prefix or f"dsrc{os.getpid() % 100000}" + (f"x{n}" if n else "")
    workdir = Path(tempfile.mkdtemp(prefix=f"dsr-cluster-{prefix}-"))
    before = HostState.take()
    if _shared["active"] == 0:
        _shared["before"] = before
    _shared["active"] += 1
    lab = Lab(prefix, backends=(), nodes=tuple(node_names), net=net, vip=f"{net}.100", host_link=f"{prefix}-h")
    cluster: Cluster | None = None
    stack = contextlib.ExitStack()
    t0 = time.monotonic()
    error: BaseException | None = None
    try:
        stack.callback(lab.down)
        lab.up()
        nodes = [
            Node(
                name=name,
                index=i,
                ip=lab.ip(name),
                netns=lab.ns(name),
                pod_cidr=f"{pod_net}.{i}.0/24",
                dir=workdir / "nodes" / name,
                cgroup_root=f"/{prefix}-{name}",
            )
            for i, name in enumerate(node_names, start=1)
        ]
        client_ca, client_crt, client_key = _pki(workdir)
        tokens = {n.name: uuid.uuid4().hex for n in nodes}
        proxy_token = uuid.uuid4().hex
        options = cpboot.BootOptions(
            address=lab.ip("host"),
            tokens=[
                *((tokens[n.name], f"system:node:{n.name}", "system:nodes") for n in nodes),
                (proxy_token, "system:kube-proxy", "system:node-proxier"),
            ],
            apiserver_args=[
                "--enable-admission-plugins=NodeRestriction",
                "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-client-certificate={client_crt}",
                f"--kubelet-client-key={client_key}",
            ],
            controller_manager_args=[
                f"--flex-volume-plugin-dir={workdir / 'flex-volume'}",
                "--allocate-node-cidrs=false",
                "--node-monitor-grace-period=20s",
            ],
            controllers="*",
            scheduler=True,
        )
        (workdir / "cp").mkdir()
        cp = stack.enter_context(cpboot.started(options, workdir=workdir / "cp"))
        cluster = Cluster(cp=cp, lab=lab, nodes=nodes, workdir=workdir, pod_net=pod_net)
        stack.callback(_stop_nodes, cluster)
        cluster.figures["control_plane"] = time.monotonic() - t0
        _prepare_host(cluster)
        t1 = time.monotonic()
        tars = list(image_tars() if images is None else images)
        _start_nodes(cluster, tokens, proxy_token, client_ca, tars)
        cluster.figures["nodes_started"] = time.monotonic() - t1
        cluster.wait_for(lambda: cluster.ready_nodes() >= set(node_names), 120, "every node Ready", interval=0.2)
        cluster.figures["nodes_ready"] = time.monotonic() - t1
        cluster.figures["kubelets_ready"] = time.monotonic() - cluster.figures.pop("_kubelets_started")
        cluster.figures["boot"] = time.monotonic() - t0
        yield cluster
    except BaseException as exc:
        error = exc
        raise
    finally:
        # A second Ctrl-C must not cut the teardown short.
        old = signal.signal(signal.SIGINT, signal.SIG_IGN) if _main_thread() else None
        t2 = time.monotonic()
        try:
            stack.close()
        finally:
            _shared["active"] -= 1
            last = _shared["active"] == 0
            leftovers = _cleanup_host(_shared["before"] if last else before, workdir, prefix, net, pod_net, last)
            if old is not None:
                signal.signal(signal.SIGINT, old)
        if cluster is not None:
            cluster.figures["teardown"] = time.monotonic() - t2
            cluster.leftovers = leftovers
        if os.environ.get("DSR_CLUSTER_KEEP") != "1":
            shutil.rmtree(workdir, ignore_errors=True)
        if check_clean and leftovers and error is None:
            raise LeftoversError("the cluster's teardown left on the host:\n  " + "\n  ".join(leftovers))
        if leftovers:
            print("cluster teardown leftovers:\n  " + "\n  ".join(leftovers), file=sys.stderr)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _prepare_host(cluster: Cluster) -> None:
    """Routes, cgroup roots, pre-created Node objects (with their pod CIDRs), config files."""
    lab, nodes = cluster.lab, cluster.nodes
    for node in nodes:
        # The host's return route to the node's pods (through the veth: gone with it).
        run("ip", "route", "add", node.pod_cidr, "via", node.ip, "dev", str(lab.host_link))
        node.exec("ip", "route", "add", SERVICE_CIDR, "dev", "eth0")
        for other in nodes:
            if other is not node:
                node.exec("ip", "route", "add", other.pod_cidr, "via", other.ip, "dev", "eth0")
        for sub in (
            "containerd",
            "kubelet",
            "manifests",
            "volume-plugins",
            "pod-logs",
            "cni/net.d",
            "cni/ipam",
            "logs",
            "pki",
        ):
            (node.dir / sub).mkdir(parents=True, exist_ok=True)
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            if hierarchy.name == "unified" or not (hierarchy / "cgroup.procs").exists():
                continue
            top = hierarchy / node.cgroup_root.strip("/")
            top.mkdir(exist_ok=True)
            if hierarchy.name == "cpuset":
                for knob in ("cpuset.cpus", "cpuset.mems"):
                    (top / knob).write_text((hierarchy / knob).read_text())
        # A Node object made by the admin carries the pod CIDR the node's CNI config uses (the kubelet
        # adopts it on registration and cannot change spec.podCIDR).
        node_obj = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": node.name},
            "spec": {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr]},
        }
        cluster.kc("create", "-f", "-", input=json.dumps(node_obj))


def _write_kubeconfig(path: Path, cluster: Cluster, token: str, user: str) -> None:
    cpboot._write_kubeconfig(path, cluster.api_url, cluster.cp.ca_file, token, user)


def _start_nodes(cluster: Cluster, tokens: dict[str, str], proxy_token: str, client_ca: Path, tars: list[Path]) -> None:
    network = f"{cluster.lab.prefix}-pods"
    t0 = time.monotonic()
    for node in cluster.nodes:
        d = node.dir
        (d / "containerd" / "config.toml").write_text(_containerd_config(node))
        (d / "cni" / "net.d" / "10-pods.conflist").write_text(_cni_config(node, network))
        _write_kubeconfig(d / "kubelet.kubeconfig", cluster, tokens[node.name], f"system:node:{node.name}")
        _write_kubeconfig(d / "kube-proxy.kubeconfig", cluster, proxy_token, "system:kube-proxy")
        (d / "kubelet.yaml").write_text(_kubelet_config(node, client_ca))
        (d / "kube-proxy.yaml").write_text(_kube_proxy_config(node, d / "kube-proxy.kubeconfig", cluster.cluster_cidr))
        node.processes.append(
            cpboot._start(
                "containerd",
                [],
                d / "logs",
                node.nsenter("containerd", "--config", str(d / "containerd" / "config.toml"), "--log-level", "warn"),
            )
        )
    for node in cluster.nodes:
        cluster.wait_for(
            lambda n=node: n.socket.exists() and n.ctr("version", check=False).returncode == 0,
            30,
            f"containerd of {node.name}",
        )
    cluster.figures["containerd"] = time.monotonic() - t0
    t = time.monotonic()
    _ensure_images(cluster, tars)
    cluster.figures["image_import"] = time.monotonic() - t
    cluster.figures["_kubelets_started"] = time.monotonic()
    for node in cluster.nodes:
        d = node.dir
        before = _inode(DEVICE_PLUGIN_SOCKET)
        node.processes.append(
            cpboot._start(
                "kubelet",
                [],
                d / "logs",
                node.nsenter(
                    str(BIN_DIR / "kubelet"),
                    f"--config={d / 'kubelet.yaml'}",
                    f"--kubeconfig={d / 'kubelet.kubeconfig'}",
                    f"--root-dir={d / 'kubelet'}",
                    f"--cert-dir={d / 'pki'}",
                    f"--hostname-override={node.name}",
                    f"--node-ip={node.ip}",
                    "--v=1",
                ),
            )
        )
        kubelet = node.processes[-1]

        def listening(kubelet: Proc = kubelet, before: int | None = before) -> bool:
            kubelet.check_alive()
            now = _inode(DEVICE_PLUGIN_SOCKET)
            return now is not None and now != before

        cluster.wait_for(listening, 120, f"{node.name}'s kubelet to open {DEVICE_PLUGIN_SOCKET}", interval=0.05)
        node.processes.append(
            cpboot._start(
                "kube-proxy",
                [],
                d / "logs",
                node.nsenter(str(BIN_DIR / "kube-proxy"), f"--config={d / 'kube-proxy.yaml'}", "--v=1"),
            )
        )


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None


def _ensure_images(cluster: Cluster, tars: list[Path]) -> Path | None:
    """Import the tars into every node (in parallel); without a pause image among them, build one."""

    def import_all(paths: list[Path]) -> None:
        procs = [
            (
                node,
                p,
                subprocess.Popen(
                    ["ctr", "-a", str(node.socket), "-n", "k8s.io", "images", "import", str(p)],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                ),
            )
            for node in cluster.nodes
            for p in paths
        ]
        for node, p, proc in procs:
            out, _ = proc.communicate(timeout=300)
            if proc.returncode != 0:
                raise ClusterError(f"importing {p} into {node.name} failed: {out}")

    import_all(tars)
    if all(PAUSE_IMAGE in node.images() for node in cluster.nodes):
        return None
    run("bash", str(REPO_ROOT / "tools" / "image" / "build.sh"), "pause", timeout=600)
    pause = images_dir() / "pause.tar"
    import_all([pause])
    return pause


def _stop_nodes(cluster: Cluster) -> None:
    """Pods, then kubelets and kube-proxies, leftover containers and shims, then containerd; then
    what they leave: mounts under the work dir and the nodes' cgroups."""
    nodes = cluster.nodes
    with contextlib.suppress(Exception):  # graceful: the kubelets stop the pods (sandboxes, CNI DEL)
        cluster.kc(
            "delete", "pods", "--all", "--all-namespaces", "--grace-period=1", "--wait=false", timeout=20, check=False
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(
            node.ctr("tasks", "ls", "-q", check=False).stdout.strip() for node in nodes if node.processes
        ):
            time.sleep(0.3)
    daemons = [p for n in nodes for p in n.processes if p.name in ("kubelet", "kube-proxy")]
    _stop_parallel(daemons)
    for node in nodes:  # whatever still runs: kill the tasks, then every process in the node's cgroups
        with contextlib.suppress(Exception):
            for task in node.ctr("tasks", "ls", "-q", check=False, timeout=20).stdout.split():
                node.ctr("tasks", "kill", "-s", "SIGKILL", task, check=False, timeout=10)
    deadline = time.monotonic() + 15
    while True:
        pids = {pid for node in nodes for pid in (*_cgroup_pids(node.cgroup_root), *_shim_pids(node))}
        if not pids or time.monotonic() > deadline:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    _stop_parallel([p for n in nodes for p in n.processes if p.name == "containerd"])
    for node in nodes:
        node.processes.clear()
    _unmount_under(cluster.workdir)
    for node in nodes:
        _remove_cgroups(node.cgroup_root)


def _stop_parallel(procs: list[Proc]) -> None:
    for proc in procs:
        if proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGTERM)
    for proc in procs:
        proc.stop(grace=10)


def _unmount_under(folder: Path) -> None:
    prefix = str(folder) + "/"
    for _ in range(5):
        points = [p for p in _mountpoints() if p.startswith(prefix)]
        if not points:
            return
        for point in sorted(set(points), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _remove_cgroups(cgroup_root: str) -> None:
    for top in _cgroup_dirs(cgroup_root):
        for _ in range(20):
            dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
            for d in [*dirs, top]:
                with contextlib.suppress(OSError):
                    d.rmdir()
            if not top.exists():
                break
            time.sleep(0.1)


def _cleanup_host(before: HostState, workdir: Path, prefix: str, net: str, pod_net: str, last: bool) -> list[str]:
    """Restore what the cluster changes machine-wide (`last`: no other cluster of this process runs),
    then list anything that is still not as before."""
    if last:
        for key, value in before.sysctls.items():
            if read_sysctls().get(key) != value:
                with contextlib.suppress(OSError):
                    _sysctl_path(key).write_text(value)
    if CONTAINER_LOGS.is_dir():
        for link in CONTAINER_LOGS.iterdir():
            with contextlib.suppress(OSError):
                if link.is_symlink() and os.readlink(link).startswith(str(workdir)):
                    link.unlink()
        if not before.container_logs_existed and last:
            with contextlib.suppress(OSError):
                CONTAINER_LOGS.rmdir()
    # libcni's cache entries of our sandboxes (left when a pod was killed, not stopped by the CRI):
    # <network>-<sandbox id>-eth0 and cni-loopback-<sandbox id>-lo.
    network = f"{prefix}-pods"
    sandboxes = {p.name for p in workdir.glob("nodes/*/containerd/*/io.containerd.grpc.v1.cri/sandboxes/*")}
    results = CNI_CACHE / "results"
    if results.is_dir():
        for entry in results.iterdir():
            parts = entry.name.split("-")
            if entry.name.startswith(network + "-") or any(part in sandboxes for part in parts):
                entry.unlink(missing_ok=True)
    if not before.cni_cache_existed and CNI_CACHE.exists() and last:
        with contextlib.suppress(OSError):
            results.rmdir()
            CNI_CACHE.rmdir()
    busy = _unix_socket_paths()
    if str(DEVICE_PLUGIN_SOCKET) not in busy:
        DEVICE_PLUGIN_SOCKET.unlink(missing_ok=True)
    if not before.kubelet_dir_existed and last:
        with contextlib.suppress(OSError):
            DEVICE_PLUGIN_SOCKET.parent.rmdir()
            KUBELET_DIR.rmdir()
    for folder in SHIM_DIRS:
        for name in _listing(folder) - before.shim_entries.get(str(folder), set()):
            path = folder / name
            if str(path) not in busy:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
    if not before.run_containerd_existed and last:
        for folder in (*SHIM_DIRS, Path("/run/containerd")):
            with contextlib.suppress(OSError):
                folder.rmdir()
    return leftovers(before, workdir, prefix, net, pod_net, machine_wide=last)


def _unix_socket_paths() -> set[str]:
    try:
        lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    except OSError:
        return set()
    return {parts[7] for line in lines if len(parts := line.split()) >= 8}


def leftovers(
    before: HostState, workdir: Path, prefix: str, net: str, pod_net: str, *, machine_wide: bool = True
) -> list[str]:
    """Everything of this cluster still on the host (empty when the teardown was complete);
    `machine_wide`: also the shared state (sysctls, fixed folders, iptables, shim sockets)."""
    found: list[str] = []
    me = os.getpid()
    for pid in _pids():
        cmd = _cmdline(pid)
        if pid != me and cmd and any(str(workdir) in arg or f"/run/netns/{prefix}-" in arg for arg in cmd):
            found.append(f"process {pid}: {' '.join(cmd)[:160]}")
    for point in _mountpoints():
        if point.startswith(str(workdir)) or point.startswith(f"/run/netns/{prefix}-"):
            found.append(f"mount {point}")
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        with contextlib.suppress(OSError):
            found += [f"cgroup {p}" for p in hierarchy.iterdir() if p.name.startswith(f"{prefix}-") and p.is_dir()]
    found += [f"netns {ns}" for ns in _listing(Path("/run/netns")) if ns.startswith(f"{prefix}-")]
    links = run("ip", "-o", "link", "show", check=False).stdout
    found += [f"host link {line.split(':')[1].strip()}" for line in links.splitlines() if f" {prefix}-" in line]
    routes = run("ip", "route", "show", check=False).stdout.splitlines()
    found += [f"host route {r}" for r in routes if r.startswith((f"{pod_net}.", f"{net}."))]
    if not machine_wide:
        return found
    after_rules = _iptables_rules()
    if after_rules != before.iptables:
        added = sorted(set(after_rules) - set(before.iptables))
        removed = sorted(set(before.iptables) - set(after_rules))
        found.append(f"host iptables changed: +{added[:10]} -{removed[:10]}")
    for folder in SHIM_DIRS:
        new = _listing(folder) - before.shim_entries.get(str(folder), set())
        found += [f"{folder}/{name}" for name in sorted(new)]
    now = read_sysctls()
    found += [f"sysctl {k}={now.get(k)} (was {v})" for k, v in before.sysctls.items() if now.get(k) != v]
    if CONTAINER_LOGS.exists() and not before.container_logs_existed:
        found.append(f"{CONTAINER_LOGS} (created by the kubelet)")
    if CNI_CACHE.exists() and not before.cni_cache_existed:
        found.append(f"{CNI_CACHE} (created by the CNI plugins)")
    if KUBELET_DIR.exists() and not before.kubelet_dir_existed:
        found.append(f"{KUBELET_DIR} (created by the kubelet's device manager)")
    elif DEVICE_PLUGIN_SOCKET.exists():
        found.append(f"{DEVICE_PLUGIN_SOCKET} (the kubelet's device-plugin socket)")
    return found
