"""The controller daemon: store + runtime + reconciler + API in one process.

``alwayson up`` starts it in its own session (``spawn``); it adopts whatever instances a
previous controller left running, then reconciles. Stopping it (SIGTERM, SIGKILL, an
upgrade) leaves every instance and gateway running, so no client request is dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
from pathlib import Path

import psutil
import uvicorn

from alwayson.api.app import create_app
from alwayson.api.records import PID_FILE, controller_record
from alwayson.api.tokens import TokenBook, ensure_token
from alwayson.control.controller import Controller
from alwayson.control.pushing import RoutePusher
from alwayson.runtime.local import LocalRuntime
from alwayson.runtime.local_processes import LocalProcesses
from alwayson.runtime.users import check_user_can_run
from alwayson.store.sqlite import SQLiteStore
from alwayson.util import logs
from alwayson.util.addresses import split_hostport
from alwayson.util.clocks import SystemClock
from alwayson.util.credentials import GATEWAY_TOKEN_FILE, ensure_secret

DEFAULT_ROOT_USER = "nobody"


async def serve(state_dir: Path, api: str) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    token = ensure_token(state_dir)
    host, port = split_hostport(api)
    store = await SQLiteStore(state_dir / "state.db").open()
    runtime = LocalRuntime(state_dir)
    pusher = RoutePusher(ensure_secret(state_dir / GATEWAY_TOKEN_FILE))
    default_user = DEFAULT_ROOT_USER if os.geteuid() == 0 else None
    controller = Controller(
        store,
        runtime,
        LocalProcesses(),
        state_dir,
        SystemClock(),
        pusher,
        default_user,
        can_run=check_user_can_run,
    )
    controller.only_one = True
    controller.drills.serve_at(api, token)
    await controller.load()
    adopted = await runtime.adopt()
    logging.getLogger("alwayson.controller").info(
        "controller pid %d: adopted %d running processes", os.getpid(), len(adopted)
    )
    book = TokenBook(state_dir, token)
    config = uvicorn.Config(
        create_app(controller, book), host=host, port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)

    def stop() -> None:
        server.should_exit = True

    config.app = create_app(controller, book, on_down=stop)
    proc = psutil.Process(os.getpid())
    (state_dir / PID_FILE).write_text(
        json.dumps({"pid": os.getpid(), "start_time": proc.create_time(), "api": api})
    )
    try:
        async with asyncio.TaskGroup() as group:
            loop_task = group.create_task(controller.run())
            await server.serve()
            controller.shutdown()
            await loop_task
    finally:
        await runtime.close()
        await controller.boards.close()
        await pusher.close()
        await store.close()
        record = controller_record(state_dir)
        if record is not None and record.get("pid") == os.getpid():
            (state_dir / PID_FILE).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m alwayson.api.daemon")
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--api", default="127.0.0.1:7070")
    parser.add_argument(
        "--site",
        default=None,
        help="run as this site's controller, one of several elected on etcd (api/sites.py)",
    )
    args = parser.parse_args(argv)
    logs.setup()
    state_dir = args.state_dir.resolve()
    if args.site is None:
        asyncio.run(serve(state_dir, args.api))
        return
    from alwayson.api.records import read_cluster
    from alwayson.api.sites import SiteController

    async def serve_site() -> None:
        default_user = DEFAULT_ROOT_USER if os.geteuid() == 0 else None
        site = SiteController(state_dir, args.api, args.site, read_cluster(state_dir), default_user)
        await site.serve()

    asyncio.run(serve_site())


if __name__ == "__main__":
    main()
