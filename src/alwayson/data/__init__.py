"""The data layer: PostgreSQL per site, the lease that decides who writes, the endpoint,
failover, switchover, failback, backups and verified restores (docs/DATA-DESIGN.md).

The site agent's steward, by phase (arrows point down):

- ``stewarding``: the loops (renewal, watchdog thread, cycle) and the operator's requests;
  each cycle observes once, decides, acts and returns a verdict sentence.
- ``starting``, ``primaries``, ``promoting``, ``switching``: the act functions, by role.
- ``tending``: the steward's state and the acts every role shares (lease, PostgreSQL).
- ``deciding``: the pure decisions on a frozen view (no I/O, no clock; import-linter
  keeps it so), with ``failovers``, ``leases`` and ``lsns``.
- ``backups``, ``restoring``, ``archives``: backups, restores and the repository; they
  reach the steward only through ``archives.BackupPort`` and return what they start.
"""
