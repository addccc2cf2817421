"""The watchdog's sleep ends the moment the watched process exits (Linux pidfd)."""

from __future__ import annotations

import subprocess
import sys

from alwayson.util.alarms import Alarm

LONG = 30.0


def test_the_watched_process_exit_ends_the_wait_once() -> None:
    alarm = Alarm()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.1)"])
    try:
        assert alarm.wait(child.pid, LONG) is True
        assert child.wait(timeout=5) == 0
        # An exited pid is not watched again (its pidfd would stay readable forever).
        assert alarm.wait(child.pid, 0.01) is False
    finally:
        child.kill()
        child.wait()
        alarm.close()


def test_a_pid_already_gone_is_not_an_error() -> None:
    alarm = Alarm()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    try:
        assert alarm.wait(child.pid, 0.01) is False
    finally:
        alarm.close()
