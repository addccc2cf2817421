"""A process that speaks gRPC (every database agent) forks PostgreSQL and its tools.

gRPC's own fork handlers ran in those children before exec and once aborted one
(pg_basebackup, SIGABRT in CI). Importing the etcd driver turns them off; this runs a
busy gRPC channel beside many forks as another user (no vfork) and checks that no
handler ran and no child died.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    """
    import asyncio, subprocess, sys
    import alwayson.store.etcd  # noqa: F401  (the import under test)
    import grpc.aio

    async def main() -> None:
        options = [("grpc.keepalive_time_ms", 1000)]
        channel = grpc.aio.insecure_channel("127.0.0.1:9", options=options)
        stop = asyncio.Event()

        async def poke() -> None:
            while not stop.is_set():
                try:
                    await channel.unary_unary("/x/y")(b"", timeout=0.01)
                except Exception:
                    pass

        pokers = [asyncio.create_task(poke()) for _ in range(4)]
        failed = 0
        for _ in range(150):
            proc = await asyncio.create_subprocess_exec(
                "/bin/true", user=65534, group=65534, start_new_session=True
            )
            failed += (await proc.wait()) != 0
        stop.set()
        await asyncio.gather(*pokers)
        await channel.close()
        print("failed", failed)

    asyncio.run(main())
    """
)


@pytest.mark.skipif(os.geteuid() != 0, reason="forking as another user needs root")
def test_forks_beside_grpc_run_no_grpc_fork_handler() -> None:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    assert "failed 0" in done.stdout, done.stdout + done.stderr
    assert "fork_posix" not in done.stderr, done.stderr[-2000:]
