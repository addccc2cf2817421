"""The watchdog's sleep (util/alarms.py) and how long it may last (deciding.watch_for).

No timing is asserted beyond "it returned": a wait is given a timeout far longer than the
event it waits for, so a wait that ended proves the event ended it. The process-exit wake
is tested with a real child in tests/integration/test_alarms.py.
"""

from __future__ import annotations

import threading

from alwayson.data.deciding import watch_for
from alwayson.data.leases import Tenure
from alwayson.util.alarms import Alarm

LONG = 30.0


def test_a_poke_from_another_thread_ends_the_wait() -> None:
    alarm = Alarm()
    try:
        threading.Timer(0.05, alarm.poke).start()
        assert alarm.wait(None, LONG) is False
        # The poke was consumed: the next wait lasts its timeout.
        assert alarm.wait(None, 0.01) is False
    finally:
        alarm.close()


def test_a_poke_after_close_is_harmless() -> None:
    alarm = Alarm()
    alarm.close()
    alarm.poke()
    alarm.close()


def test_the_watchdog_sleeps_until_the_fencing_time_at_most_idle() -> None:
    tenure = Tenure(epoch=3, ttl=6.0, margin=1.0, renewed_at=100.0)  # fences at 105
    assert watch_for(None, 100.0, 0.25) == 0.25
    assert watch_for(tenure, 100.0, 0.25) == 0.25
    assert abs(watch_for(tenure, 104.9, 0.25) - 0.1) < 1e-9
    # Past its time (fenced already, or no longer primary): no busy loop.
    assert watch_for(tenure, 105.0, 0.25) == 0.25
    assert watch_for(tenure, 200.0, 0.25) == 0.25
