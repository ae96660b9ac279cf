"""Runs the chart's Argo CD health check (charts/dsr-operator/argocd/health.lua) as Argo CD does.

Argo CD evaluates a health script in Lua 5.1 (gopher-lua) with the live object as the global `obj`
and reads the returned table's `status` and `message`; `evaluate` does the same with lupa's Lua 5.1.
"""

from __future__ import annotations

import pathlib
from typing import Any

import lupa.lua51

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "charts" / "dsr-operator" / "argocd" / "health.lua"


def evaluate(obj: dict[str, Any]) -> dict[str, str]:
    """The health (`status`, `message`) Argo CD would show for this object."""
    lua = lupa.lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(SCRIPT.read_text())
    return {"status": str(result["status"]), "message": str(result["message"] or "")}
