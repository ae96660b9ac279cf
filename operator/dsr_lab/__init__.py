"""The DSR lab: demos and test harnesses, never imported by the product.

`lab` builds a DSR topology in network namespaces (client, lb, backends on one bridge); `kubeemu` is an
in-memory Kubernetes API (kmock plus the API-server rules the operator relies on); `demo` is
`dsr-operator demo-dsr`, the whole chain with real traffic; `simctl` is the client of the NITRO
simulator's `/_sim/` control endpoints. Installed with the `lab` extra
(`pip install 'dsr-operator[lab]'`), which brings kmock.
"""
