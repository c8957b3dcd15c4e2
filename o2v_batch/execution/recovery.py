"""How the pool gets over faults: a mini-batch tried again until its retries run out,
what a lost worker held put back, and a Recovery event told for each.

Nothing here imports torch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from o2v_batch.errors import WorkerError
from o2v_batch.execution.handle import Task
from o2v_batch.execution.protocol import Done, Failed


@dataclass(frozen=True)
class Recovery:
    """The pool got over a fault: it replaced a lost worker, tries a mini-batch again, or both."""

    reason: str  # what went wrong: "worker 4242 was killed by SIGKILL"
    restarted: bool  # a new worker took the lost one's place
    task_id: int | None = None  # the mini-batch tried again, if any
    attempt: int = 0  # its attempt about to start: 2 is the first retry
    process: str = "worker"  # what was lost and replaced: a worker or a device process


class Retries:
    """The pool's mini-batches no worker holds: those waiting for one (those tried
    again first) and the results for the next poll; with the attempts each made and
    the workers lost while loading."""

    def __init__(self, max_retries: int, on_recovery: Callable[[Recovery], None] | None):
        self.max_retries = max_retries
        # Told of every restart and retry as it happens, so the job can say so at once.
        self.on_recovery = on_recovery
        self.waiting: deque[Task] = deque()
        self.events: list[Done | Failed] = []
        self._load_failures = 0

    def raised(self, task: Task, reason: str) -> None:
        """The worker running `task` raised `reason`: try it again, or it failed."""
        reason = f"the worker raised {reason}"
        if self.retry_or_fail(task, reason):
            self.tell(Recovery(reason, False, task.task_id, task.attempts + 1))

    def loading_failed(self, device: str, reason: str) -> None:
        """A worker was lost while loading the model: after max_retries of them the job
        cannot run."""
        self._load_failures += 1
        if self._load_failures > self.max_retries:
            raise WorkerError(f"worker on {device} {reason} while loading the model")

    def lost(self, held: deque[Task], what: str, process: str = "worker") -> Recovery:
        """What a lost worker held goes back: the tasks it never started without using
        a retry, the one it ran (if any) for another attempt if one is left. Returns the
        Recovery to tell once a new worker took its place."""
        head, *rest = held or [None]
        self.waiting.extendleft(reversed(rest))
        # Only a ready worker holds tasks: one that was loading has no head.
        if head is not None and self.retry_or_fail(head, what):
            return Recovery(what, True, head.task_id, head.attempts + 1, process)
        return Recovery(what, True, process=process)

    def retry_or_fail(self, task: Task, reason: str) -> bool:
        """True when the task goes back for another attempt; False when it failed for good."""
        task.attempts += 1
        if task.attempts > self.max_retries:
            self.events.append(
                Failed(task.task_id, f"{reason}; gave up after {task.attempts} attempts")
            )
            return False
        self.waiting.appendleft(task)
        return True

    def tell(self, recovery: Recovery) -> None:
        if self.on_recovery is not None:
            self.on_recovery(recovery)
