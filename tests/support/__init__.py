"""What only the tests use, shared by the tiers: waiting for a state (`waiting`), host inspection
with iproute2 for the netns tier (`hostcheck`), and the chart's Argo CD health check run as Argo CD
runs it (`argocd`, for the unit and control-plane tiers)."""
