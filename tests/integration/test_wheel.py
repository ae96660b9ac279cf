"""The built wheel, installed in a fresh virtual environment, is enough for `dsr-operator demo`.

The wheel is built from this checkout and installed with its dependencies (and nothing of the
checkout: the commands run in an empty folder, without PYTHONPATH), as a user would install it.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def _run(*args: str | pathlib.Path, cwd: pathlib.Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, pathlib.Path]:
    """(the wheel, the fresh venv's bin folder) with the wheel and its dependencies installed."""
    tmp = tmp_path_factory.mktemp("wheel")
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", tmp / "dist", REPO, cwd=tmp)
    (wheel,) = (tmp / "dist").glob("dsr_operator-*.whl")
    _run(sys.executable, "-m", "venv", tmp / "venv", cwd=tmp)
    bin_dir = tmp / "venv" / "bin"
    _run(bin_dir / "python", "-m", "pip", "install", "--quiet", wheel, cwd=tmp)
    return wheel, bin_dir


def test_the_wheel_carries_the_examples_and_the_lab(installed: tuple[pathlib.Path, pathlib.Path]) -> None:
    names = set(zipfile.ZipFile(installed[0]).namelist())
    assert {"dsr_operator/examples/static-web.yaml", "dsr_operator/examples/service-web.yaml"} <= names
    assert "dsr_lab/__init__.py" in names and "dsr_lab/kubeemu.py" in names
    assert not any(name.startswith("tests/") for name in names)


def test_demo_runs_from_the_installed_wheel(installed: tuple[pathlib.Path, pathlib.Path], tmp_path: pathlib.Path
                                            ) -> None:
    done = _run(installed[1] / "dsr-operator", "demo", cwd=tmp_path)
    out = done.stdout
    assert "## Plan (what an admin would type in the NetScaler CLI)" in out
    assert "enable ns mode MBF" in out
    assert "add lb vserver dsr-default_static-web_80 ANY 192.0.2.10 80" in out
    assert "lb vserver dsr-default_static-web_80  ANY 192.0.2.10:80  -m MAC" in out
    assert out.rstrip().endswith("No changes: NetScaler matches the manifests.")
    assert str(REPO) not in out + done.stderr  # nothing came from the checkout


def test_without_the_lab_extra_the_lab_says_what_to_install(installed: tuple[pathlib.Path, pathlib.Path],
                                                             tmp_path: pathlib.Path) -> None:
    done = _run(installed[1] / "python", "-c", "import dsr_lab.kubeemu", cwd=tmp_path, check=False)
    assert done.returncode != 0
    assert "pip install 'dsr-operator[lab]'" in done.stderr
