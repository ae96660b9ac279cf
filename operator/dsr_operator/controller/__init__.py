"""Kubernetes operator: kopf handlers, indices, status and events (thin; logic lives in the planner)."""
