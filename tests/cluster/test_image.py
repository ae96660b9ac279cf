"""The images `make image` builds (tools/image/build.sh): what a user or a kubelet sees of them.

The app image runs `dsr-operator --help` and `dsr-operator demo` inside the image (buildah, no network
but loopback, as the image's uid 65532, outside any source checkout); the pause image answers `-v`;
both archives import into containerd as the names the chart and containerd's sandbox_image use.
The module builds the images through the same script (a no-op when its stamps match).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.cluster import images

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

CHART = images.REPO_ROOT / "charts" / "dsr-operator"


@pytest.fixture(scope="module")
def built() -> dict[str, images.Image]:
    reason = images.unavailable()
    if reason:
        images.skip_or_fail(reason)
    return images.build("all")


@pytest.fixture(scope="module")
def app(built: dict[str, images.Image]) -> Iterator[str]:
    with images.container(built["app"]) as name:
        yield name


def test_app_image_is_named_and_configured_as_the_chart_expects(built: dict[str, images.Image]) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    img = built["app"]
    assert img.ref == f"{values['image']['repository']}:{chart['appVersion']}"
    assert img.manifest()["RepoTags"] == [img.ref]
    config = img.config()["config"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["dsr-operator"] and config["Cmd"] == ["--help"]
    assert "/opt/dsr-operator/bin" in next(e for e in config["Env"] if e.startswith("PATH="))
    assert not [e for e in config["Env"] if e.startswith("PIP_CERT")]  # the build's CA setting stayed in the build


def test_help_inside_the_image(app: str) -> None:
    result = images.run(app, "dsr-operator", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: dsr-operator ")
    for command in ("run", "agent", "nitro-sim", "plan", "apply", "crd", "demo", "host-setup"):
        assert command in result.stdout


def test_demo_inside_the_image(app: str) -> None:
    """What `docker run IMAGE demo` shows: the plan as NetScaler CLI commands, applied, and no change after."""
    result = images.run(app, "dsr-operator", "demo")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.startswith("# examples/service-web.yaml: DsrService shop/web: backends.service needs the operator")
    assert "# NITRO simulator listening on http://127.0.0.1:" in out
    assert "add lb vserver dsr-default_static-web_80 ANY 192.0.2.10 80 -lbMethod LEASTCONNECTION -m MAC" in out
    assert "applied: enable ns mode MBF" in out
    assert "lb vserver dsr-default_static-web_80  ANY 192.0.2.10:80  -m MAC" in out
    assert out.rstrip().endswith("No changes: NetScaler matches the manifests.")


def test_the_image_carries_nothing_of_the_build(app: str) -> None:
    who = images.run(app, "id", "-u")
    assert who.stdout.strip() == "65532"
    leftovers = images.run(app, "sh", "-c", "ls -d /wheels /src /etc/pip.conf /root/.cache/pip 2>/dev/null; "
                                            "python3 -c 'import pip' 2>/dev/null && echo pip; true")
    assert leftovers.stdout.split() == []
    writable = images.run(app, "sh", "-c", "touch /opt/dsr-operator/x 2>/dev/null && echo writable; true")
    assert writable.stdout.strip() == ""  # uid 65532 cannot change the installed program


def test_pause_image(built: dict[str, images.Image]) -> None:
    img = built["pause"]
    assert img.ref.startswith("registry.k8s.io/pause:3.")
    config = img.config()["config"]
    assert config["Entrypoint"] == ["/pause"] and config["User"] == "65535:65535"
    assert img.files() == ["pause"]
    tag = img.ref.rpartition(":")[2]
    with images.container(img) as name:
        result = images.run(name, "/pause", "-v")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"pause.c v{tag}-k8s.io/kubernetes@v1."), result.stdout


def test_archives_import_into_containerd(built: dict[str, images.Image], tmp_path: Path) -> None:
    """`ctr -n k8s.io images import` (what a node does with them) takes both archives under their names."""
    reason = images.unavailable({"containerd": "containerd", "ctr": "containerd"})
    if reason:
        images.skip_or_fail(reason)
    with images.private_containerd(tmp_path / "containerd") as sock:
        ctr = ["ctr", "-a", str(sock), "-n", "k8s.io"]
        for img in built.values():
            result = subprocess.run([*ctr, "images", "import", str(img.archive)], capture_output=True, text=True,
                                    timeout=300)
            assert result.returncode == 0, result.stderr
        listed = subprocess.run([*ctr, "images", "ls", "-q"], capture_output=True, text=True, timeout=60, check=True)
        assert set(listed.stdout.split()) >= {img.ref for img in built.values()}
        check = subprocess.run([*ctr, "images", "check"], capture_output=True, text=True, timeout=60, check=True)
        for img in built.values():
            line = next(line for line in check.stdout.splitlines() if line.startswith(img.ref + " "))
            assert "complete" in line, check.stdout


def test_a_second_build_is_a_no_op(built: dict[str, images.Image]) -> None:
    before = {name: img.archive.stat().st_mtime_ns for name, img in built.items()}
    start = time.monotonic()
    result = subprocess.run(["bash", str(images.BUILD_SCRIPT)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - start < 30
    assert result.stderr.count(": up to date") == 2, result.stderr
    assert {name: img.archive.stat().st_mtime_ns for name, img in built.items()} == before
