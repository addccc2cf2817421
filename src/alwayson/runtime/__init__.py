"""Starting, stopping and inspecting instances in a site (drivers: local)."""
