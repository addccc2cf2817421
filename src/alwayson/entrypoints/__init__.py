"""Composition roots: the main modules of alwayson's own processes.

A package below never names the driver it is given: ``drills`` asks for *a* load
generator (``drills.loading.LoadGenerator``) and ``loadgen`` knows nothing of drills.
The modules here sit above both and wire one into the other:

- ``drill``       ``python -m alwayson.entrypoints.drill RUN_DIR``, the drill process the
                  controller starts, with ``alwayson.loadgen`` as its load generator
- ``drill_load``  the adapter from ``alwayson.loadgen`` to the drill's load port
"""
