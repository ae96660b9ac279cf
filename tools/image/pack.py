"""Pack a folder as a one-layer container image, written as a `docker save`-style archive.

The archive (manifest.json, the image config, one uncompressed layer tar) is what `docker load`,
`ctr images import`, `buildah pull docker-archive:FILE` and `skopeo copy docker-archive:FILE ...` take.
tools/image/build.sh packs the Debian base image and the pause image with it.

    python3 pack.py ROOTFS OUTPUT.tar --tag NAME:TAG [--entrypoint JSON] [--cmd JSON] [--env K=V]
                    [--user UID:GID] [--workdir DIR] [--label K=V] [--empty DIR] [--mtime EPOCH]

Owners and modes come from the files as they are (build the folder as root). Sockets and FIFOs are
left out; the contents of the folders named with --empty (e.g. dev, proc, sys) are left out too, the
folders themselves are kept. Entries are sorted and their mtimes clamped to --mtime
(default: SOURCE_DATE_EPOCH, else none), so the same folder gives the same layer.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}


def _entries(root: Path, empty: frozenset[str]) -> list[tuple[Path, str]]:
    """(path, name in the layer) for everything under root, sorted by name (so parents come first)."""
    out: list[tuple[Path, str]] = []
    for folder, dirs, files in os.walk(root):
        rel = os.path.relpath(folder, root)
        prefix = "" if rel == "." else f"{rel}/"
        if prefix.rstrip("/") in empty:
            dirs.clear()
            continue
        out.extend((Path(folder, name), prefix + name) for name in (*dirs, *files))
    return sorted(out, key=lambda entry: entry[1])


def write_layer(root: Path, out: Path, *, empty: frozenset[str], mtime: int | None) -> tuple[str, int]:
    """Write root's contents as a tar to out; returns (sha256 hex digest, size in bytes)."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for path, arcname in _entries(root, empty):
            info = tar.gettarinfo(str(path), arcname)
            if info is None or info.type == tarfile.FIFOTYPE:  # sockets and FIFOs
                continue
            info.uname = info.gname = ""
            info.mtime = int(info.mtime) if mtime is None else min(int(info.mtime), mtime)
            if info.isreg():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    digest = hashlib.sha256()
    with out.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest(), out.stat().st_size


def _pairs(values: Sequence[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            raise SystemExit(f"pack.py: {what} {value!r} is not KEY=VALUE")
        out[key] = rest
    return out


def _json_list(value: str | None, what: str) -> list[str] | None:
    if value is None:
        return None
    parsed = json.loads(value)
    if not (isinstance(parsed, list) and all(isinstance(p, str) for p in parsed)):
        raise SystemExit(f"pack.py: {what} must be a JSON list of strings, got {value!r}")
    return parsed


def image_config(
    diff_id: str, *, created: str, entrypoint: list[str] | None, cmd: list[str] | None, env: dict[str, str],
    user: str | None, workdir: str | None, labels: dict[str, str], comment: str,
) -> dict[str, Any]:
    config: dict[str, Any] = {"Env": [f"{k}={v}" for k, v in env.items()]}
    if entrypoint is not None:
        config["Entrypoint"] = entrypoint
    if cmd is not None:
        config["Cmd"] = cmd
    if user:
        config["User"] = user
    if workdir:
        config["WorkingDir"] = workdir
    if labels:
        config["Labels"] = labels
    return {
        "architecture": ARCHITECTURES.get(platform.machine(), platform.machine()),
        "os": "linux",
        "created": created,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        "history": [{"created": created, "created_by": comment}],
    }


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = mtime
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def pack(
    root: Path, output: Path, *, tag: str, entrypoint: list[str] | None = None, cmd: list[str] | None = None,
    env: dict[str, str] | None = None, user: str | None = None, workdir: str | None = None,
    labels: dict[str, str] | None = None, empty: Sequence[str] = (), mtime: int | None = None,
    comment: str = "tools/image/pack.py",
) -> dict[str, Any]:
    """Write root as a one-layer image tagged `tag` to output; returns manifest.json's entry."""
    if not root.is_dir():
        raise SystemExit(f"pack.py: {root} is not a folder")
    output.parent.mkdir(parents=True, exist_ok=True)
    stamp = int(time.time()) if mtime is None else mtime
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", **(env or {})}
    with tempfile.TemporaryDirectory(prefix=".pack.", dir=output.parent) as tmp:
        layer_path = Path(tmp) / "layer.tar"
        diff_id, size = write_layer(root, layer_path, empty=frozenset(e.strip("/") for e in empty), mtime=mtime)
        config = image_config(diff_id, created=created, entrypoint=entrypoint, cmd=cmd, env=env, user=user,
                              workdir=workdir, labels=labels or {}, comment=comment)
        config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
        config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
        entry: dict[str, Any] = {"Config": config_name, "RepoTags": [tag], "Layers": [f"{diff_id}/layer.tar"]}
        partial = Path(tmp) / "image.tar"
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            dir_info = tarfile.TarInfo(diff_id)
            dir_info.type, dir_info.mode, dir_info.mtime = tarfile.DIRTYPE, 0o755, stamp
            tar.addfile(dir_info)
            layer_info = tar.gettarinfo(str(layer_path), f"{diff_id}/layer.tar")
            layer_info.uid = layer_info.gid = 0
            layer_info.uname = layer_info.gname = ""
            layer_info.mode, layer_info.mtime = 0o644, stamp
            with layer_path.open("rb") as f:
                tar.addfile(layer_info, f)
            _add_bytes(tar, config_name, config_bytes, stamp)
            _add_bytes(tar, "manifest.json", json.dumps([entry]).encode(), stamp)
            name, _, version = tag.rpartition(":")
            if "/" in version or not name:
                name, version = tag, "latest"
            _add_bytes(tar, "repositories", json.dumps({name: {version: diff_id}}).encode(), stamp)
        os.replace(partial, output)
    return {**entry, "LayerSize": size, "Architecture": config["architecture"]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pack.py", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("rootfs", type=Path, help="the folder that becomes the image's filesystem")
    parser.add_argument("output", type=Path, help="the archive to write (docker save format)")
    parser.add_argument("--tag", required=True, help="NAME:TAG the archive carries (RepoTags)")
    parser.add_argument("--entrypoint", help='JSON list, e.g. ["/pause"]')
    parser.add_argument("--cmd", help='JSON list, e.g. ["python3"]')
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--user", help="UID:GID the image runs as")
    parser.add_argument("--workdir")
    parser.add_argument("--empty", action="append", default=[], metavar="DIR",
                        help="keep this folder but not its contents (repeatable)")
    source_date = os.environ.get("SOURCE_DATE_EPOCH")
    parser.add_argument("--mtime", type=int, default=int(source_date) if source_date else None,
                        help="clamp mtimes and set the creation time to this epoch (default: SOURCE_DATE_EPOCH)")
    parser.add_argument("--comment", default="tools/image/pack.py", help="the layer's history entry")
    args = parser.parse_args(argv)
    entry = pack(
        args.rootfs, args.output, tag=args.tag, entrypoint=_json_list(args.entrypoint, "--entrypoint"),
        cmd=_json_list(args.cmd, "--cmd"), env=_pairs(args.env, "--env"), user=args.user, workdir=args.workdir,
        labels=_pairs(args.label, "--label"), empty=args.empty, mtime=args.mtime, comment=args.comment,
    )
    if os.geteuid() != 0:
        print("pack.py: warning: not root, so owners other than yours may be missing from the folder", file=sys.stderr)
    print(json.dumps(entry))
    return 0


if __name__ == "__main__":
    sys.exit(main())
