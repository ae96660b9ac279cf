"""Commands the dataplane runs (`ip`, `nft`) as asyncio subprocesses."""

from __future__ import annotations

import asyncio


class CommandError(RuntimeError):
    pass


def host_cidr(address: str) -> str:
    return f"{address}/128" if ":" in address else f"{address}/32"


async def run(*args: str, stdin: str | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    if proc.returncode != 0:
        raise CommandError(f"{' '.join(args[:6])}: {err.decode().strip() or proc.returncode}")
    return out.decode()
