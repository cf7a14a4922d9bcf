"""The commands under ``processes:``: started with the gateway, restarted when they die.

This is Twisted's own process monitor (:mod:`twisted.runner.procmon`): it
restarts a process that exits, waiting longer after each quick death (1 s
doubling up to 30 s), logs every output line with the process name, and on
shutdown sends SIGTERM, then SIGKILL after 5 s.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import TYPE_CHECKING, Sequence

from gateway.core.config import ConfigError, ProcessConfig

if TYPE_CHECKING:
    from twisted.runner.procmon import ProcessMonitor


def process_environment() -> dict[str, str]:
    """The gateway's environment, with the Python environment's bin folder first on PATH.

    So ``gunicorn ...`` finds the Gunicorn installed beside the gateway even
    when the virtual environment is not activated.
    """
    env = dict(os.environ)
    bin_dir = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", os.defpath)])
    return env


def build_process_monitor(processes: Sequence[ProcessConfig], source: str, reactor) -> ProcessMonitor:
    """A ProcessMonitor for *processes*; raises ConfigError for a command that does not exist."""
    # Imported here: procmon imports the global reactor, which must not happen at import time.
    from twisted.internet.defer import Deferred
    from twisted.internet.task import LoopingCall
    from twisted.runner.procmon import ProcessMonitor

    class SupervisedProcesses(ProcessMonitor):
        """A ProcessMonitor whose stop waits until every process has exited.

        Twisted's own sends SIGTERM, schedules SIGKILL after killTime and
        returns at once, so twistd would exit before the SIGKILL, leaving a
        process that ignores SIGTERM behind (holding its port).
        """

        def stopService(self) -> Deferred:
            super().stopService()
            stopped: Deferred = Deferred()
            deadline = self._clock.seconds() + self.killTime + 2

            def check() -> None:
                if not self.protocols or self._clock.seconds() >= deadline:
                    poll.stop()
                    stopped.callback(None)

            poll = LoopingCall(check)
            poll.clock = self._clock
            poll.start(0.1, now=True)
            return stopped

    env = process_environment()
    monitor = SupervisedProcesses(reactor=reactor)
    monitor.setName("processes")
    monitor.threshold = 1  # a process that lives less than this many seconds died "quickly"
    monitor.minRestartDelay = 1
    monitor.maxRestartDelay = 30
    monitor.killTime = 5
    cwd = os.getcwd()
    for process in processes:
        executable = shutil.which(process.argv[0], path=env["PATH"])
        if executable is None:
            raise ConfigError(f"{source}: processes.{process.name}: command {process.argv[0]!r} not found "
                              f"(looked in PATH, including {os.path.dirname(sys.executable)})")
        monitor.addProcess(process.name, [executable, *process.argv[1:]], env=env, cwd=cwd)
    return monitor

