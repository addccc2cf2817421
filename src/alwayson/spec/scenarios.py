"""The names of the drill scenarios ``alwayson.drills`` ships.

Kept apart from the pydantic models of ``spec.drilling`` so that the command line can name
them in its help without building any model; ``drills`` checks its own catalogue against
this list (``control/drilling.py`` and a unit test).
"""

from __future__ import annotations

SCENARIO_NAMES = (
    "instance-kill",
    "instance-hang",
    "site-loss",
    "witness-loss",
    "site-partition",
    "link-latency",
    "db-primary-kill",
    "gateway-kill",
    "etcd-member-loss",
    "controller-kill",
)
