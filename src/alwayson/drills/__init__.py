"""Drills: a scripted fault run under load, measured and reported.

A drill runs in its own process (``python -m alwayson.entrypoints.drill RUN_DIR``), started
by the controller, so that it outlives a controller kill and never loads the controller's
event loop. It generates load through the front door with the load generator it is given
(``loading.LoadGenerator``; the process wires ``alwayson.loadgen`` in), injects one fault,
undoes it, checks the data, and writes ``result.json`` (and ``report.html``) to its run
directory; the controller keeps the history.

Modules, from the bottom up:

- ``model``      names, the run's context, the result's JSON shape, objectives
- ``measuring``  every request's outcome; RTO, longest gap, detection (pure)
- ``loading``    the port a load generator plugs into: the load asked for, the outcomes
- ``remote``     the few controller API calls the drill process makes
- ``faults``     inject and undo (kill, hang, site loss, partition, latency, controller
                 kill), and the journal of faults in force, written before each is injected
- ``checks``     acknowledged writes lost (a set check), ledger invariants, writable primaries
- ``scenarios``  the shipped scenarios and what each is judged on
- ``healing``    after the undo: the platform whole again, the primary failed back
- ``concluding`` detection, the write check, the objectives
- ``running``    one drill from preflight to report
- ``reporting``  the self-contained HTML report
- ``schedules``  when scheduled drills are due (cron)
"""
