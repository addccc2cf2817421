"""alwayson: keep digital services always on across two datacenters from one spec."""

__version__ = "0.1.0"
