"""The DSR lab: demos and test harnesses, never imported by the product.

`lab` builds a DSR topology in network namespaces (client, lb, backends on one bridge); `kubeemu` is an
in-memory Kubernetes API (kmock plus the API-server rules the operator relies on); `scenario` is the DSR
scenario on that lab (its Kubernetes objects, node agents, client loop, and what serves it), which `demo`
(`dsr-operator demo-dsr`) plays with real traffic and the netns end-to-end test asserts on; `simctl` is
the client of the NITRO simulator's `/_sim/` control endpoints. Installed with the `lab` extra
(`pip install 'dsr-operator[lab]'`), which brings kmock.
"""
