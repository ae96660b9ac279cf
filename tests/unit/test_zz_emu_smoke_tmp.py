from lightkube.types import PatchType

from dsr_operator import kube as k


async def test_smoke(kube):
    c = kube.client()
    obj = await c.create(k.DsrNodeConfig(metadata={"name": "n1"}, spec={"vips": ["192.0.2.1"]}, status={"x": 1}))
    print(obj)
    assert obj["metadata"]["generation"] == 1
    assert "status" not in obj
    o2 = await c.patch(
        k.DsrNodeConfig.Status,
        "n1",
        {"status": {"appliedVips": ["a"], "lastError": None}, "spec": {"vips": []}},
        patch_type=PatchType.MERGE,
    )
    print(o2)
    assert o2["spec"]["vips"] == ["192.0.2.1"]
    o3 = await c.patch(
        k.DsrNodeConfig, "n1", {"spec": {"vips": ["192.0.2.2"]}, "status": None}, patch_type=PatchType.MERGE
    )
    print(o3)
    assert o3["metadata"]["generation"] == 2 and o3["status"]["appliedVips"] == ["a"]
    await c.create(k.DsrNodeConfig(metadata={"name": "n2"}, spec={"vips": []}))
    items = [o async for o in c.list(k.DsrNodeConfig, fields={"metadata.name": "n1"})]
    assert [i.metadata.name for i in items] == ["n1"]
    o4 = await c.replace(k.DsrNodeConfig(metadata={"name": "n2"}, spec={"vips": ["1.1.1.1"]}))
    assert o4["metadata"]["generation"] == 2
    rv = o4.metadata.resourceVersion
    seen = []
    import asyncio

    async def w():
        async for t, o in c.watch(k.DsrNodeConfig, fields={"metadata.name": "n2"}, resource_version=rv):
            seen.append((t, o.metadata.name, o["spec"]))

    task = asyncio.create_task(w())
    await asyncio.sleep(0.1)
    await c.patch(k.DsrNodeConfig, "n1", {"spec": {"vips": ["9.9.9.9"]}}, patch_type=PatchType.MERGE)
    await c.patch(k.DsrNodeConfig, "n2", {"spec": {"vips": ["8.8.8.8"]}}, patch_type=PatchType.MERGE)
    await asyncio.sleep(0.2)
    task.cancel()
    print(seen)
    assert seen == [("MODIFIED", "n2", {"vips": ["8.8.8.8"]})]
    from lightkube.models.core_v1 import ObjectReference
    from lightkube.models.meta_v1 import ObjectMeta
    from lightkube.resources.core_v1 import Event

    ev = await c.create(
        Event(
            metadata=ObjectMeta(generateName="n1.", namespace="default"),
            involvedObject=ObjectReference(kind="DsrNodeConfig", name="n1"),
            reason="X",
            message="m",
        )
    )
    print(ev.metadata.name)
    await c.delete(k.DsrNodeConfig, "n1")
    assert [o.metadata.name async for o in c.list(k.DsrNodeConfig)] == ["n2"]
