"""The site agent: ``python -m alwayson.data.agent --config data/agents/<site>.json``.

One per workload site, started by the controller like a gateway and adopted (not
restarted) when the controller restarts. It owns, for its site:

- one :class:`~alwayson.data.stewarding.Steward` per database (PostgreSQL, the lease,
  fencing, promotion, requests);
- the site links (relays to the other sites' PostgreSQL and etcd members);
- the database endpoints (``DATABASE_URL``);
- WAL/backup mirroring to the other site's repository and the backup schedule;
- ``GET /healthz`` and ``GET /status`` on its admin address, and ``POST
  /v1/failsafe/<db>`` (bearer token), where another site's primary that cannot reach
  etcd asks whether this site follows it (:mod:`alwayson.data.failsafe`).

PostgreSQL runs as its child with a parent-death signal: if this process dies, its
primary stops with it (docs/DATA-DESIGN.md, "Self-fencing").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from croniter import croniter
from fastapi import FastAPI

from alwayson.data import archives, backups
from alwayson.data.board import Board
from alwayson.data.engines import Engine, Identity, find_binaries
from alwayson.data.failsafe import HttpAsker, failsafe_router
from alwayson.data.layout import AgentConfig, passfile_of
from alwayson.data.links import Relay, Target, sweep_forever
from alwayson.data.stewarding import Role, Steward
from alwayson.store.etcd import Etcd
from alwayson.util import logs
from alwayson.util.addresses import split_hostport
from alwayson.util.certs import TlsFiles
from alwayson.util.clocks import Clock, SystemClock
from alwayson.util.credentials import ensure_secret
from alwayson.util.errors import AlwaysonError
from alwayson.util.sitelinks import Partitions

log = logging.getLogger("alwayson.agent")

ENDPOINT_HOLD = 10.0
MIRROR_INTERVAL = 1.0
SCHEDULE_POLL = 1.0


def fixed(target: Target) -> Callable[[], Target]:
    return lambda: target


def in_majority(
    target: Callable[[], Target], site: str, others: set[str], partitions: Partitions
) -> Callable[[], Target | None]:
    """This site's own etcd member, while it can be in a majority: a site cut from every
    other site has a member in a minority, which serves nothing (emulated here, where the
    members' own traffic crosses no link; with real hosts the network does it)."""

    def choose() -> Target | None:
        if others and not any(partitions.connected(site, other) for other in others):
            return None
        return target()

    return choose


def build_app(agent: Agent) -> FastAPI:
    app = FastAPI(title=f"alwayson site agent {agent.cfg.site}", docs_url=None, redoc_url=None)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "site": agent.cfg.site}

    @app.get("/status")
    async def status() -> dict[str, Any]:
        return agent.status()

    stewards = {s.name: s for s in agent.stewards}
    app.include_router(failsafe_router(stewards, Path(agent.cfg.token_file)))
    return app


class Agent:
    def __init__(self, cfg: AgentConfig, clock: Clock) -> None:
        self.cfg = cfg
        self.clock = clock
        self.board = Board(
            Etcd(
                cfg.etcd.endpoints,
                TlsFiles(Path(cfg.etcd.ca), Path(cfg.etcd.cert), Path(cfg.etcd.key)),
            ),
            cfg.etcd.root,
            clock,
        )
        self.partitions = Partitions(Path(cfg.partitions_file))
        self.partitions.refresh()
        self.log_dir = Path(cfg.state_dir) / "logs" / cfg.site
        self.log_dir.mkdir(parents=True, exist_ok=True)
        ident = Identity.of(cfg.user)
        ensure_secret(Path(cfg.token_file))  # the agents' own, not the API's token
        self.asker = HttpAsker(cfg.peer_agents, Path(cfg.token_file))
        self.stewards: list[Steward] = []
        self.relays: list[Relay] = []
        others = {link.peer for link in cfg.links if link.peer != cfg.site}
        for link in cfg.links:
            choose: Callable[[], Target | None] = fixed(Target(link.target, link.peer))
            if link.peer == cfg.site:
                choose = in_majority(
                    fixed(Target(link.target, link.peer)), cfg.site, others, self.partitions
                )
            self.relays.append(
                Relay(
                    f"link→{link.peer}",
                    cfg.site,
                    link.listen,
                    choose,
                    self.partitions,
                    clock=clock,
                )
            )
        for db in cfg.databases:
            engine = Engine(
                find_binaries(db.bin_dir),
                ident,
                db.superuser_password,
                self.log_dir / f"{db.name}@{db.site}.tools.log",
                clock,
                passfile=passfile_of(db),
            )
            steward = Steward(
                db, self.board, engine, self.partitions, self.log_dir, clock, self.asker
            )
            self.stewards.append(steward)
            self.relays.append(
                Relay(
                    f"endpoint {db.name}",
                    cfg.site,
                    db.endpoint,
                    steward.endpoint_target,
                    self.partitions,
                    hold=ENDPOINT_HOLD,
                    clock=clock,
                )
            )
        self.started = clock.wall()

    def status(self) -> dict[str, Any]:
        return {
            "site": self.cfg.site,
            "started_at": self.started,
            "databases": {s.name: s.status() for s in self.stewards},
            "relays": [
                {
                    "name": r.name,
                    "listen": r.listen,
                    "open": len(r.pipes),
                    "connections": r.connections,
                    "refused": r.refused,
                }
                for r in self.relays
            ],
        }

    async def run(self) -> None:
        for relay in self.relays:
            await relay.start()
        host, port = split_hostport(self.cfg.admin)
        server = uvicorn.Server(
            uvicorn.Config(
                build_app(self), host=host, port=port, log_level="warning", lifespan="off"
            )
        )
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        tasks = [
            asyncio.create_task(sweep_forever(self.relays, self.partitions, self.clock)),
            asyncio.create_task(self._mirroring()),
            asyncio.create_task(self._scheduling()),
            *[asyncio.create_task(s.run()) for s in self.stewards],
        ]
        serving = asyncio.create_task(server.serve())
        await stopping.wait()
        log.info("%s: stopping (PostgreSQL shuts down with the agent)", self.cfg.site)
        server.should_exit = True
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for steward in self.stewards:
            await steward.shutdown()
        for relay in self.relays:
            await relay.close()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        await self.asker.close()
        await self.board.close()

    async def _mirroring(self) -> None:
        """Retention on this site's repository, then copies to the other sites' (while
        the links allow): a cut delays the copies, it never loses them."""
        while True:
            for steward in self.stewards:
                try:
                    removed = await asyncio.to_thread(
                        archives.retain, steward.cfg, self.clock.wall()
                    )
                    await backups.forget(steward, removed)
                    await asyncio.to_thread(
                        archives.mirror,
                        steward.cfg,
                        self.partitions,
                        steward.engine.ident,
                        self.clock.wall(),
                    )
                except OSError as exc:
                    log.warning("%s: mirroring backups: %s", steward.name, exc)
            await self.clock.sleep(MIRROR_INTERVAL)

    def _next_backup(self, schedule: str) -> float:
        return float(croniter(schedule, self.clock.wall()).get_next(float))

    async def _scheduling(self) -> None:
        """Scheduled base backups (then verified) by whichever site is primary."""
        due: dict[str, float] = {}
        for steward in self.stewards:
            if steward.cfg.backup_schedule:
                due[steward.name] = self._next_backup(steward.cfg.backup_schedule)
        while True:
            await self.clock.sleep(SCHEDULE_POLL)
            for steward in self.stewards:
                when = due.get(steward.name)
                schedule = steward.cfg.backup_schedule
                if when is None or self.clock.wall() < when or schedule is None:
                    continue
                due[steward.name] = self._next_backup(schedule)
                if steward.role is not Role.PRIMARY:
                    continue
                try:
                    async with steward.long_lock:
                        result = await backups.create(steward, verify=steward.cfg.verify_backups)
                except (AlwaysonError, OSError) as exc:
                    log.error("%s: scheduled backup failed: %s", steward.name, exc)
                    with contextlib.suppress(AlwaysonError):
                        await self.board.event(
                            "db-backup-failed", steward.name, f"scheduled backup failed: {exc}", {}
                        )
                    continue
                except Exception:  # the schedule must outlive any one backup
                    log.exception("%s: scheduled backup crashed", steward.name)
                    continue
                made = result["backup"]
                log.info("%s: scheduled backup %s", steward.name, made["id"])
                with contextlib.suppress(AlwaysonError):
                    await self.board.event(
                        "db-backup-scheduled",
                        steward.name,
                        f"scheduled backup {made['id']} on {steward.cfg.site}, verified: "
                        f"{made.get('verified')}, removed by retention: "
                        f"{made.get('removed_by_retention')}",
                        {"id": made["id"], "verified": made.get("verified")},
                    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m alwayson.data.agent")
    parser.add_argument("--config", required=True, type=Path)
    args = parser.parse_args(argv)
    logs.setup()
    try:
        cfg = AgentConfig.model_validate_json(args.config.read_text())
        agent = Agent(cfg, SystemClock())
    except (OSError, ValueError, AlwaysonError) as exc:
        print(f"alwayson agent: {args.config}: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    asyncio.run(agent.run())


if __name__ == "__main__":
    main()
