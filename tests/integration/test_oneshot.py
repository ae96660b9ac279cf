"""The one-shot CLI (`plan`, `apply`, `apply --delete`) as a user runs it, against the simulator."""

from __future__ import annotations

import asyncio
import os
import pathlib
import sys
import textwrap

import aiohttp
import pytest

from dsr_lab import simctl

PASSWORD = "s3cret-Pa55"


@pytest.fixture
def nitro_credentials() -> tuple[str, str]:
    return ("nsroot", PASSWORD)


@pytest.fixture
def password_file(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "password"
    path.write_text(PASSWORD + "\n")
    return path


def manifest(tmp_path: pathlib.Path, body: str, name: str = "web.yaml") -> pathlib.Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


STATIC = """\
    apiVersion: dsr.operators.dev/v1alpha1
    kind: DsrService
    metadata: {name: web, namespace: shop}
    spec:
      vip: 192.0.2.10
      ports: [80]
      backends:
        static:
          - {name: pi-1, address: 198.51.100.21}
          - {name: pi-2, address: 198.51.100.22}
      drainSeconds: %(drain)d
    """


async def cli(*args: str, url: str | None = None, pw: pathlib.Path | None = None) -> tuple[int, str, str]:
    command = [sys.executable, "-m", "dsr_operator.cli", *args]
    if url:
        command += ["--netscaler", url]
    if pw:
        command += ["--password-file", str(pw)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSR_")}
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    return proc.returncode or 0, out.decode(), err.decode()


async def nitro_get(sim: simctl.Simulator, rtype: str, query: str = "") -> list[dict]:
    headers = {"X-NITRO-USER": "nsroot", "X-NITRO-PASS": PASSWORD}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{sim.url}/nitro/v1/config/{rtype}{query}", headers=headers) as resp:
            body = await resp.json()
    return body.get(rtype, [])


async def test_plan_prints_the_seed_procedure_and_writes_nothing(
    nitro_sim: simctl.Simulator, tmp_path: pathlib.Path, password_file: pathlib.Path
) -> None:
    path = manifest(tmp_path, STATIC % {"drain": 0})
    code, out, err = await cli("plan", "-f", str(path), url=nitro_sim.url, pw=password_file)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "enable ns mode MBF"
    assert "add server dsr-198.51.100.21 198.51.100.21 -comment dsr-operator:default:shared" in lines
    assert any(line.startswith("add servicegroup dsr-shop_web_80_sg ANY") and "-usip YES" in line for line in lines)
    assert "bind servicegroup dsr-shop_web_80_sg dsr-198.51.100.21 80" in lines
    assert any(
        line.startswith("add lb vserver dsr-shop_web_80 ANY 192.0.2.10 80 -lbMethod LEASTCONNECTION -m MAC")
        for line in lines
    )
    assert any(
        "add lb monitor dsr-shop_web_tcp TCP -destIP 192.0.2.10" in line and "-transparent YES" in line
        for line in lines
    )
    assert lines[-1] == "bind lb vserver dsr-shop_web_80 dsr-shop_web_80_sg"
    assert (await nitro_sim.stats())["writes"] == 0
    assert PASSWORD not in out + err


async def test_apply_converges_then_plan_says_no_changes_and_delete_removes_exactly_ours(
    nitro_sim: simctl.Simulator, tmp_path: pathlib.Path, password_file: pathlib.Path
) -> None:
    # Hand-made objects on the same box, one even with our prefix: never touched.
    headers = {"X-NITRO-USER": "nsroot", "X-NITRO-PASS": PASSWORD}
    async with aiohttp.ClientSession() as http:
        for body in (
            {"server": {"name": "legacy-db", "ipaddress": "198.51.100.50"}},
            {"server": {"name": "dsr-hand-made", "ipaddress": "198.51.100.51"}},
        ):
            async with http.post(f"{nitro_sim.url}/nitro/v1/config/server", json=body, headers=headers) as r:
                assert r.status == 201
    path = manifest(tmp_path, STATIC % {"drain": 0})

    code, out, err = await cli("apply", "-f", str(path), url=nitro_sim.url, pw=password_file)
    assert code == 0, out + err
    assert "applied: bind servicegroup dsr-shop_web_80_sg dsr-198.51.100.21 80" in out
    vservers = await nitro_get(nitro_sim, "lbvserver")
    assert [(v["name"], v["servicetype"], v["ipv46"], v["m"]) for v in vservers] == [
        ("dsr-shop_web_80", "ANY", "192.0.2.10", "MAC")
    ]
    groups = await nitro_get(nitro_sim, "servicegroup")
    assert [(g["servicegroupname"], g["usip"], g["servicetype"]) for g in groups] == [
        ("dsr-shop_web_80_sg", "YES", "ANY")
    ]
    members = await nitro_get(nitro_sim, "servicegroup_servicegroupmember_binding", "/dsr-shop_web_80_sg")
    assert sorted(m["servername"] for m in members) == ["dsr-198.51.100.21", "dsr-198.51.100.22"]
    assert await nitro_get(nitro_sim, "service") == []
    assert await nitro_get(nitro_sim, "nsmode")  # MBF on
    nsmode = await nitro_get(nitro_sim, "nsmode")
    assert (nsmode[0] if isinstance(nsmode, list) else nsmode)["mbf"] is True

    code, out, _ = await cli("plan", "-f", str(path), url=nitro_sim.url, pw=password_file)
    assert code == 0 and out.strip() == "No changes: NetScaler matches the manifests."

    code, out, err = await cli("apply", "--delete", "-f", str(path), url=nitro_sim.url, pw=password_file)
    assert code == 0, out + err
    assert sorted(s["name"] for s in await nitro_get(nitro_sim, "server")) == ["dsr-hand-made", "legacy-db"]
    assert await nitro_get(nitro_sim, "lbvserver") == []
    assert await nitro_get(nitro_sim, "servicegroup") == []
    assert await nitro_get(nitro_sim, "lbmonitor") == []


async def test_delete_drains_before_unbinding(
    nitro_sim: simctl.Simulator, tmp_path: pathlib.Path, password_file: pathlib.Path
) -> None:
    path = manifest(tmp_path, STATIC % {"drain": 1})
    assert (await cli("apply", "-f", str(path), url=nitro_sim.url, pw=password_file))[0] == 0
    seq = max((e["seq"] for e in await nitro_sim.journal()), default=0)
    code, out, err = await cli("apply", "--delete", "-f", str(path), url=nitro_sim.url, pw=password_file)
    assert code == 0, out + err
    assert "Draining" in out
    steps = [(e["resource"], e["action"]) for e in await nitro_sim.journal(since=seq)]
    first_disable = steps.index(("servicegroup", "disable"))
    first_unbind = steps.index(("servicegroup_servicegroupmember_binding", "unbind"))
    assert first_disable < first_unbind


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "vip: 300.1.1.1\n  ports: [80]",
            "spec.vip: Value error, '300.1.1.1' is not an IPv4 or IPv6 address",
        ),
        ("vip: 192.0.2.10\n  ports: [70000]", "spec.ports[0]"),
        ("vip: 192.0.2.10\n  ports: [80]\n  lbMethod: FASTEST", "spec.lbMethod"),
    ],
)
async def test_invalid_manifest_is_one_line_exit_2_and_nothing_sent(
    nitro_sim: simctl.Simulator, tmp_path: pathlib.Path, password_file: pathlib.Path, spec: str, expected: str
) -> None:
    body = (
        "apiVersion: dsr.operators.dev/v1alpha1\nkind: DsrService\nmetadata: {name: bad, namespace: shop}\n"
        f"spec:\n  {spec}\n  backends: {{static: [{{name: a, address: 198.51.100.1}}]}}\n"
    )
    path = manifest(tmp_path, body, "bad.yaml")
    code, _, err = await cli("apply", "-f", str(path), url=nitro_sim.url, pw=password_file)
    assert code == 2
    assert err.startswith(f"{path}: DsrService shop/bad: ")
    assert expected in err
    assert (await nitro_sim.stats())["requests"] == 0


async def test_two_dsrservices_on_one_vip_port_are_refused(
    nitro_sim: simctl.Simulator, tmp_path: pathlib.Path, password_file: pathlib.Path
) -> None:
    first = manifest(tmp_path, STATIC % {"drain": 0}, "a.yaml")
    second = manifest(tmp_path, (STATIC % {"drain": 0}).replace("name: web,", "name: web2,"), "b.yaml")
    code, _, err = await cli("plan", "-f", str(first), "-f", str(second), url=nitro_sim.url, pw=password_file)
    assert code == 2
    assert err.strip() == (
        f"{second}: DsrService shop/web2: spec.ports: 192.0.2.10:80 is already claimed by DsrService shop/web"
    )
    assert (await nitro_sim.stats())["requests"] == 0


async def test_netscaler_errors_are_reported_and_a_rerun_completes(
    nitro_sim: simctl.Simulator, tmp_path: pathlib.Path, password_file: pathlib.Path
) -> None:
    # A hand-made service occupies one of our names: that object fails alone, the rest is applied.
    headers = {"X-NITRO-USER": "nsroot", "X-NITRO-PASS": PASSWORD}
    async with aiohttp.ClientSession() as http:
        body = {"lbvserver": {"name": "dsr-shop_web_80", "servicetype": "HTTP", "ipv46": "192.0.2.99", "port": 80}}
        async with http.post(f"{nitro_sim.url}/nitro/v1/config/lbvserver", json=body, headers=headers) as r:
            assert r.status == 201
    path = manifest(tmp_path, STATIC % {"drain": 0})
    code, out, _ = await cli("plan", "-f", str(path), url=nitro_sim.url, pw=password_file)
    assert "# NameConflict: lbvserver dsr-shop_web_80 exists on NetScaler without our ownership marker" in out
    assert "add lb vserver dsr-shop_web_80" not in out

    # NetScaler failing with 503 on every request: the CLI says so and exits 1, without secrets.
    await nitro_sim.faults(errorRate=1.0, errorStatus=503)
    code, out, err = await cli("apply", "-f", str(path), url=nitro_sim.url, pw=password_file)
    assert code == 1
    assert "503" in err and PASSWORD not in out + err
    await nitro_sim.clear_faults()
    code, out, err = await cli("apply", "-f", str(path), url=nitro_sim.url, pw=password_file)
    assert code == 0, out + err
    assert len(await nitro_get(nitro_sim, "servicegroup_servicegroupmember_binding", "?bulkbindings=yes")) == 2
    vservers = await nitro_get(nitro_sim, "lbvserver")
    assert [(v["name"], v["servicetype"]) for v in vservers] == [("dsr-shop_web_80", "HTTP")]  # untouched


async def test_demo_runs_against_its_embedded_simulator() -> None:
    code, out, err = await cli("demo")
    assert code == 0, err
    assert "## NetScaler objects after" in out
    assert "lb vserver dsr-default_static-web_80  ANY 192.0.2.10:80  -m MAC" in out
    assert out.rstrip().endswith("No changes: NetScaler matches the manifests.")


async def test_apply_refuses_an_ha_secondary(
    nitro_sim: simctl.Simulator, tmp_path: pathlib.Path, password_file: pathlib.Path
) -> None:
    await nitro_sim.set_ha_state("Secondary")
    path = manifest(tmp_path, STATIC % {"drain": 0})
    code, _, err = await cli("apply", "-f", str(path), url=nitro_sim.url, pw=password_file)
    assert code == 1
    assert "is the HA Secondary: changes there would be lost; apply to the primary" in err
    assert (await nitro_sim.stats())["writes"] == 0


async def test_apply_to_an_ha_pair_writes_to_the_primary_only_and_follows_a_failover(
    tmp_path: pathlib.Path, password_file: pathlib.Path
) -> None:
    path = manifest(tmp_path, STATIC % {"drain": 0})
    async with simctl.running_pair(users={"nsroot": PASSWORD}) as pair:
        a, b = pair.a, pair.b
        await a.failover(after_writes=1)  # right after the first write stage, b takes over
        code, out, err = await cli("apply", "-f", str(path), "--netscaler", a.url, "--netscaler", b.url,
                                   pw=password_file)
        assert code == 0, out + err
        assert "# NetScaler failed over: planning the rest against the new HA primary" in out
        [a_secondary] = [t for t in (await a.ha())["transitions"] if t["state"] == "Secondary"]
        on_a, on_b = await a.journal(), await b.journal()
        assert on_a and all(e["seq"] <= a_secondary["seq"] for e in on_a), "written to the secondary"
        steps = [(e["resource"], e["action"], str(sorted(e["key"].items()))) for e in on_a + on_b
                 if e["resource"] != "nsconfig"]
        assert len(steps) == len(set(steps)), steps
        assert [e["resource"] for e in on_b if e["resource"] == "nsconfig"] == ["nsconfig"]  # saved on b
        for node in (a, b):
            assert len(node.store.objects["servicegroup_servicegroupmember_binding"]) == 2
        # Given only the secondary, apply refuses; given both, plan reads the primary: no changes.
        code, _, err = await cli("apply", "-f", str(path), url=a.url, pw=password_file)
        assert code == 1 and "is the HA Secondary: changes there would be lost" in err
        code, out, err = await cli("plan", "-f", str(path), "--netscaler", a.url, "--netscaler", b.url,
                                   pw=password_file)
        assert code == 0 and "No changes" in out, out + err
