"""REST API (FastAPI), the controller daemon, and the one typed client the CLI uses."""
