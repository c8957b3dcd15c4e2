"""How a worker process ended: its exit status or signal, the kernel's OOM killer
(counted by the cgroup), an interpreter that could not start. Nothing here imports torch.
"""

from __future__ import annotations

import os
import signal
import subprocess
from multiprocessing import spawn

from o2v_batch.execution.protocol import DEVICE_LOST

# How long the interpreter of a worker that could not start may take to show why.
PROBE_TIMEOUT_S = 30.0
# The last lines of its stderr that a start-up failure quotes.
STDERR_LINES = 3


def exit_reason(code: int | None, oom_killed: bool = False) -> str:
    """How a worker process ended, as the end of a sentence naming it."""
    if code is None:
        return "stopped answering"
    if code < 0:
        name = signal.Signals(-code).name
        cause = " (out of memory: the kernel's OOM killer)" if oom_killed else ""
        return f"was killed by {name}{cause}"
    if code == DEVICE_LOST:
        return "lost its device process"
    return f"exited with status {code}"


# Where this process's cgroup counts the processes the kernel's OOM killer killed in it.
_OOM_COUNTERS = {
    "": ("/sys/fs/cgroup", "memory.events"),  # cgroup v2: the line "0::<path>"
    "memory": ("/sys/fs/cgroup/memory", "memory.oom_control"),  # v1's memory controller
}


def oom_kills() -> int | None:
    """How many processes of this process's cgroup (its workers' too) the kernel's OOM
    killer has killed, or None where no cgroup counts them or they cannot be read."""
    for path in _oom_counter_files():
        count = _oom_kill_count(path)
        if count is not None:
            return count
    return None


def _oom_counter_files() -> list[str]:
    try:
        with open("/proc/self/cgroup") as lines:
            cgroups = [line.rstrip("\n").split(":", 2) for line in lines]
    except OSError:
        return []
    files = []
    for _, controllers, path in (cgroup for cgroup in cgroups if len(cgroup) == 3):
        for controller in controllers.split(","):
            if controller in _OOM_COUNTERS:
                root, name = _OOM_COUNTERS[controller]
                files.append(f"{root}{path.rstrip('/')}/{name}")
    return files


def _oom_kill_count(path: str) -> int | None:
    try:
        with open(path) as counters:
            for line in counters:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    except (OSError, ValueError):
        pass
    return None


def oom_killed_since(before: int | None) -> bool:
    """The OOM killer has killed in this cgroup since it counted `before` (from oom_kills)."""
    now = oom_kills()
    return now is not None and before is not None and now > before


def start_failure(code: int | None) -> str:
    """Why a worker ended before its own code ran. Its interpreter (the one
    multiprocessing spawns) is run once more with its output captured, for the exec
    error or the last lines it wrote; when that one runs fine, the worker's exit says it."""
    executable = os.fsdecode(spawn.get_executable())
    try:
        probe = subprocess.run(
            [executable, "-c", "import multiprocessing.spawn"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=PROBE_TIMEOUT_S,
        )
    except OSError as exc:
        return f"cannot run {executable}: {exc.strerror or exc}"
    except subprocess.TimeoutExpired:
        return exit_reason(code)
    if probe.returncode == 0:
        return exit_reason(code)
    return f"{executable} {exit_reason(probe.returncode)}{_last_lines(probe.stderr)}"


def _last_lines(stderr: bytes) -> str:
    lines = [line.strip() for line in stderr.decode(errors="replace").splitlines()]
    last = [line for line in lines if line][-STDERR_LINES:]
    return f": {' | '.join(last)}" if last else ""
