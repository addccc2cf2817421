"""The autoscaler: Kubernetes HPA's algorithm on an injected clock, pure (no I/O)."""
