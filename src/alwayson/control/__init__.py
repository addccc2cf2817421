"""The reconciler: observe → plan → act, one verdict per cycle."""
