"""The container images of the real-cluster tier, as tools/image/build.sh (`make image`) leaves them.

`build()` runs the script (a second or two when its stamps match) and returns the images by name
(`app`, `pause`): each an `Image` with its archive (`.cache/image/*.tar`, `docker save` format) and the
name it carries (`ref`, e.g. ghcr.io/dsr-operator/dsr-operator:0.1.0, registry.k8s.io/pause:3.10.1).
`container(image)` is a throwaway buildah working container of an archive, `run(...)` a command in it.
`private_containerd(folder)` starts a containerd of its own (root, state and socket in that folder) for
`ctr images import`.

`unavailable(...)` says why this machine cannot build or run them (not root, a tool missing);
`skip_or_fail(reason)` skips with that reason, or fails when the tier is required (CI=true,
DSR_REQUIRE_CLUSTER=1 or DSR_REQUIRE_CONTROLPLANE=1), so CI never passes by skipping.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.waiting import eventually_sync

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "tools" / "image" / "build.sh"
IMAGE_DIR = Path(os.environ.get("DSR_IMAGE_DIR", REPO_ROOT / ".cache" / "image"))
ARCHIVES = {"app": "dsr-operator.tar", "pause": "pause.tar"}
# command -> the Debian package that brings it
BUILD_TOOLS = {"buildah": "buildah", "debootstrap": "debootstrap", "gcc": "gcc", "go": "golang-go"}


@dataclasses.dataclass(frozen=True)
class Image:
    archive: Path
    ref: str

    def manifest(self) -> dict[str, Any]:
        """The archive's manifest.json entry (Config, RepoTags, Layers)."""
        with tarfile.open(self.archive) as tar:
            (entry,) = json.load(_member(tar, "manifest.json"))
        return dict(entry)

    def config(self) -> dict[str, Any]:
        """The image config (architecture, config.User/Entrypoint/Env, rootfs, history)."""
        with tarfile.open(self.archive) as tar:
            (entry,) = json.load(_member(tar, "manifest.json"))
            return dict(json.load(_member(tar, entry["Config"])))

    def files(self) -> list[str]:
        """Every path in the image's layers."""
        names: list[str] = []
        with tarfile.open(self.archive) as tar:
            (entry,) = json.load(_member(tar, "manifest.json"))
            for layer in entry["Layers"]:
                with tarfile.open(fileobj=_member(tar, layer)) as layer_tar:
                    names.extend(layer_tar.getnames())
        return names


def _member(tar: tarfile.TarFile, name: str) -> Any:
    f = tar.extractfile(name)
    assert f is not None, f"{name} is missing from {tar.name}"
    return f


def required() -> bool:
    env = os.environ
    return (env.get("CI", "").lower() == "true" or env.get("DSR_REQUIRE_CLUSTER") == "1"
            or env.get("DSR_REQUIRE_CONTROLPLANE") == "1")


def skip_or_fail(reason: str) -> None:
    if required():
        pytest.fail(f"{reason} (required: CI=true, DSR_REQUIRE_CLUSTER=1 or DSR_REQUIRE_CONTROLPLANE=1)",
                    pytrace=False)
    pytest.skip(reason)


def unavailable(tools: dict[str, str] = BUILD_TOOLS) -> str | None:
    """Why the images cannot be built and run here, or None."""
    if os.geteuid() != 0:
        return "the image tier needs root (debootstrap, buildah): run the tests as root"
    missing = {cmd: pkg for cmd, pkg in tools.items() if shutil.which(cmd) is None}
    if missing:
        return f"{', '.join(missing)} missing: apt-get install {' '.join(sorted(set(missing.values())))}"
    return None


def build(target: str = "all", timeout: float = 900) -> dict[str, Image]:
    """Run tools/image/build.sh TARGET; the images it leaves (both when target is all)."""
    result = subprocess.run(["bash", str(BUILD_SCRIPT), target], capture_output=True, text=True, timeout=timeout,
                            cwd=REPO_ROOT)
    if result.returncode != 0:
        pytest.fail(f"tools/image/build.sh {target} failed:\n{result.stderr[-4000:]}", pytrace=False)
    names = list(ARCHIVES) if target == "all" else [target]
    return {name: image(name) for name in names}


def image(name: str) -> Image:
    archive = IMAGE_DIR / ARCHIVES[name]
    return Image(archive=archive, ref=(archive.parent / f"{archive.name}.ref").read_text().strip())


@contextlib.contextmanager
def container(img: Image) -> Iterator[str]:
    """A buildah working container of the archive (imported as it is), removed afterwards."""
    name = f"dsr-test-{uuid.uuid4().hex[:8]}"
    stored = subprocess.run(["buildah", "inspect", "--type", "image", img.ref], capture_output=True, timeout=60)
    subprocess.run(["buildah", "from", "--quiet", "--pull-never", "--name", name, f"docker-archive:{img.archive}"],
                   check=True, capture_output=True, text=True, timeout=300)
    try:
        yield name
    finally:
        subprocess.run(["buildah", "rm", name], capture_output=True, timeout=120)
        if stored.returncode:  # not in buildah's storage before: leave it as it was
            subprocess.run(["buildah", "rmi", img.ref], capture_output=True, timeout=120)


def run(name: str, *command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """A command in the container as the image's user, with no network but loopback, cwd /."""
    return subprocess.run(["buildah", "run", "--network", "none", "--workingdir", "/", name, "--", *command],
                          capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def private_containerd(folder: Path) -> Iterator[Path]:
    """A containerd with everything (root, state, socket, opt) under folder, without the CRI plugin;
    yields its socket. Stopped, its mounts undone and folder removed afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    sock = folder / "containerd.sock"
    config = folder / "config.toml"
    config.write_text(
        "version = 2\n"
        f'root = "{folder / "root"}"\n'
        f'state = "{folder / "state"}"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{sock}"\n'
        f'[ttrpc]\n  address = "{sock}.ttrpc"\n'
        f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{folder / "opt"}"\n'
    )
    log = (folder / "containerd.log").open("w")
    proc = subprocess.Popen(["containerd", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)

    def exited() -> None:
        if proc.poll() is not None:
            raise RuntimeError(f"containerd exited: {(folder / 'containerd.log').read_text()[-2000:]}")

    def answers() -> bool:
        return subprocess.run(["ctr", "-a", str(sock), "version"], capture_output=True, timeout=10).returncode == 0

    try:
        eventually_sync(answers, timeout=30, interval=0.2, tick=exited, what="containerd to answer")
        yield sock
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
        mounts = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True).stdout.split()
        for target in sorted((m for m in mounts if m.startswith(f"{folder}/")), reverse=True):
            subprocess.run(["umount", target], capture_output=True, timeout=30)
        shutil.rmtree(folder, ignore_errors=True)
