"""The Kubernetes API emulator of the tests, now `dsr_operator.kubeemu` (the demo uses it too).

Re-exported here so that `from tests import kubeemu` keeps working.
"""

from __future__ import annotations

from dsr_operator.kubeemu import REQUEST_LOG_LIMIT, RESOURCES, KubeEmulator, KubernetesConflictError, serve

__all__ = ["REQUEST_LOG_LIMIT", "RESOURCES", "KubeEmulator", "KubernetesConflictError", "serve"]
