"""Planner: desired NetScaler state from DsrServices, diff against actual, ordered plan (pure)."""
