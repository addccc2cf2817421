"""The command line (Typer + rich); talks to the controller only through the API client."""
