"""The soak tier reuses the control-plane tier's fixture (one control plane for this package)."""

from tests.controlplane.conftest import controlplane  # noqa: F401  (a fixture, used by name)
