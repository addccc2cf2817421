"""The spec layer: models, loading with precise errors, JSON Schema and plan."""
