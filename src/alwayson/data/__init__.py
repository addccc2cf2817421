"""The data layer: PostgreSQL per site, the lease that decides who writes, the endpoint,
failover, switchover, failback, backups and verified restores (docs/DATA-DESIGN.md)."""
