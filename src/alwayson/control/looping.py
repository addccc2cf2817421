"""The reconcile loop: one frozen snapshot a turn, a pure decision, its acts, a verdict.

``Reconciler.turn`` books the runtime's events, builds one ``PlatformState``, lets
``reconciling.decide`` choose what to stop and start (stop before start), has
``InstanceOps`` carry it out, pushes the tables built from the same snapshot, then lets
the other steppers (the release driver) take their step. Intents the parts return are
handed to the controller's ``apply_intent``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from alwayson.control.instances import InstanceOps, Intent
from alwayson.control.ports import Publisher, StateReader
from alwayson.control.pushing import RouteBook
from alwayson.control.reconciling import Decision, Observed, Snapshot, decide
from alwayson.control.waiting import first_of, wait_for_work
from alwayson.runtime.base import Kind, Runtime, RuntimeEvent
from alwayson.util.clocks import Clock
from alwayson.util.errors import AlwaysonError, TemporaryError

log = logging.getLogger("alwayson.controller")
CONSENSUS = (Kind.ETCD, Kind.CONTROLLER)

Step = Callable[[], Awaitable[None]]


class Reconciler:
    def __init__(
        self,
        view: StateReader,
        clock: Clock,
        runtime: Runtime,
        instances: InstanceOps,
        routes: RouteBook,
        publisher: Publisher,
        apply_intent: Callable[[Intent], None],
        steps: Sequence[Step] = (),
    ) -> None:
        self.view = view
        self.clock = clock
        self.runtime = runtime
        self.instances = instances
        self.routes = routes
        self.publisher = publisher
        self.apply_intent = apply_intent
        self.steps = steps
        self.verdict = "starting"
        self.cycles = 0

    async def run(self, wake: asyncio.Event, done: asyncio.Event, interval: float) -> None:
        """Turn until ``done``: at every wake-up, runtime event, or ``interval`` at most."""
        while not done.is_set():
            await self.turn()
            waiting = wait_for_work(wake, self.runtime.events, done)
            event = await first_of(waiting, self.clock, interval)
            if event is not None:
                await self.handle(event)
            wake.clear()

    async def turn(self) -> str:
        """One loop turn: book runtime events, reconcile, take the steps; the verdict."""
        while not self.runtime.events.empty():
            await self.handle(self.runtime.events.get_nowait())
        try:
            await self.cycle()
        except (TemporaryError, OSError) as exc:
            log.warning("cycle failed, will retry: %s", exc)
        for step in self.steps:
            try:
                await step()
            except (AlwaysonError, OSError) as exc:
                log.warning("release step failed, will retry: %s", exc)
        return self.verdict

    async def cycle(self) -> Decision:
        """While no spec with a consensus is applied the etcd members and the site
        controllers are left alone: ``up`` starts them before the spec it then applies
        through them, and the spec applied before may be one without databases (a
        platform that ran with one controller, handing over)."""
        state = self.view.state()
        consensus = state.loaded is not None and state.loaded.spec.has_consensus
        observed = {
            s.spec.id: Observed(
                s.spec.id, s.spec.site, s.spec.service, s.spec.template_hash(), s.phase
            )
            for s in state.running()
            if consensus or s.spec.kind not in CONSENSUS
        }
        snap = Snapshot(
            now=state.now,
            desired=state.desired,
            observed=observed,
            stopping=state.stopping,
            blocked_until=self.instances.blocked_until(),
            crash_reasons=self.instances.crash_reasons(),
        )
        decision = decide(snap)
        for stop in decision.stops:
            new = state.desired.get(stop.id)
            hand_over = self.instances.can_hand_over(new, state.status_of(stop.id))
            self.instances.begin_stop(stop.id, stop.reason, new if hand_over else None)
        if decision.starts:
            self.routes.write_initial(state, [s.spec for s in decision.starts])
            await self.instances.start_all(decision.starts)
        await self.publisher.publish()
        self.cycles += 1
        if decision.verdict != self.verdict:
            log.info("cycle %d: %s", self.cycles, decision.verdict)
            self.verdict = decision.verdict
        return decision

    async def handle(self, event: RuntimeEvent) -> None:
        try:
            intents = await self.instances.handle(event, self.view.state())
        except (TemporaryError, OSError) as exc:
            log.warning(
                "runtime event %s of %s not fully handled: %s",
                event.kind.value,
                event.instance_id,
                exc,
            )
            return
        for intent in intents:
            self.apply_intent(intent)
