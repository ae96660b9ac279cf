"""tools/image/pack.py: a folder as a one-layer `docker save`-style archive (no root, no container tool)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tarfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

PACK = Path(__file__).resolve().parents[2] / "tools" / "image" / "pack.py"


@pytest.fixture(scope="module")
def pack() -> ModuleType:
    spec = importlib.util.spec_from_file_location("image_pack", PACK)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rootfs(root: Path) -> Path:
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "tool").write_text("#!/bin/sh\necho hi\n")
    (root / "usr" / "bin" / "tool").chmod(0o755)
    os.link(root / "usr" / "bin" / "tool", root / "usr" / "bin" / "tool-again")
    (root / "bin").symlink_to("usr/bin")
    (root / "dev").mkdir()
    (root / "dev" / "leftover").write_text("not for the image")
    (root / "tmp").mkdir(mode=0o1777)
    (root / "tmp").chmod(0o1777)
    os.mkfifo(root / "fifo")
    return root


def _read(archive: Path) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    with tarfile.open(archive) as tar:
        manifest = tar.extractfile("manifest.json")
        assert manifest is not None
        (entry,) = json.load(manifest)
        config = tar.extractfile(entry["Config"])
        layer = tar.extractfile(entry["Layers"][0])
        assert config is not None and layer is not None
        return entry, json.load(config), layer.read()


def test_pack_writes_a_loadable_one_layer_image(pack: ModuleType, tmp_path: Path) -> None:
    root = _rootfs(tmp_path / "rootfs")
    out = tmp_path / "out" / "image.tar"
    pack.main([str(root), str(out), "--tag", "example.org/thing:1.2", "--entrypoint", '["/bin/tool"]',
               "--user", "65535:65535", "--env", "LANG=C.UTF-8", "--empty", "dev", "--mtime", "1700000000"])
    entry, config, layer = _read(out)
    assert entry["RepoTags"] == ["example.org/thing:1.2"]
    assert entry["Config"] == hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
                                             ).hexdigest() + ".json"
    assert config["rootfs"] == {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(layer).hexdigest()}"]}
    assert config["config"]["Entrypoint"] == ["/bin/tool"] and config["config"]["User"] == "65535:65535"
    assert "LANG=C.UTF-8" in config["config"]["Env"] and config["created"] == "2023-11-14T22:13:20Z"
    assert config["os"] == "linux" and config["architecture"]

    with tarfile.open(out) as outer:
        repositories = outer.extractfile("repositories")
        assert repositories is not None
        assert json.load(repositories) == {"example.org/thing": {"1.2": entry["Layers"][0].split("/")[0]}}
    with tarfile.open(tmp_path / "out" / "image.tar") as outer:
        inner = outer.extractfile(entry["Layers"][0])
        assert inner is not None
        with tarfile.open(fileobj=inner) as tar:
            members = {m.name: m for m in tar.getmembers()}
    # Parents first, sorted; no FIFO; the folder named --empty without its contents.
    assert list(members) == ["bin", "dev", "tmp", "usr", "usr/bin", "usr/bin/tool", "usr/bin/tool-again"]
    assert members["bin"].issym() and members["bin"].linkname == "usr/bin"
    assert members["usr/bin/tool"].isreg() and members["usr/bin/tool"].mode == 0o755
    assert members["usr/bin/tool-again"].islnk() and members["usr/bin/tool-again"].linkname == "usr/bin/tool"
    assert members["tmp"].mode == 0o1777
    assert all(m.mtime <= 1700000000 and m.uname == "" for m in members.values())


def test_same_folder_and_mtime_give_the_same_archive(pack: ModuleType, tmp_path: Path) -> None:
    root = _rootfs(tmp_path / "rootfs")
    args = ["--tag", "example.org/thing:1", "--mtime", "1700000000", "--empty", "dev"]
    pack.main([str(root), str(tmp_path / "a.tar"), *args])
    pack.main([str(root), str(tmp_path / "b.tar"), *args])
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".pack.")]  # its temporary folder is gone


def test_bad_arguments_are_refused(pack: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="is not a folder"):
        pack.main([str(tmp_path / "missing"), str(tmp_path / "x.tar"), "--tag", "a:b"])
    with pytest.raises(SystemExit, match="JSON list of strings"):
        pack.main([str(tmp_path), str(tmp_path / "x.tar"), "--tag", "a:b", "--cmd", '"python3"'])
    with pytest.raises(SystemExit, match="not KEY=VALUE"):
        pack.main([str(tmp_path), str(tmp_path / "x.tar"), "--tag", "a:b", "--env", "NOVALUE"])
