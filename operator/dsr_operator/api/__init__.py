"""The user-facing resources: DsrService and DsrNodeConfig models, and CRD generation."""
