"""Ray actors that build a test's server instead of the product's.

An actor runs in one of Ray's worker processes, which a test's replace_servers does not
reach: the server travels in the model folder instead (SERVERS, written by the test
into its own copy of the model), read by the actor as it starts. Loaded by name in the
actors, as the servers themselves are.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from o2v_batch.engines import writer
from o2v_batch.engines.ray_actor import ShardWorker
from o2v_batch.execution import worker

SERVERS = "servers.txt"  # "module:function", in the model folder


class ShardWorkerWithServers(ShardWorker):
    """A ShardWorker whose server is the one its model folder names, if any."""

    def __init__(self, config, model: str, device: str, threads: int, node=None):
        named = Path(model) / SERVERS
        worker._replaced_factory = named.read_text().strip() if named.exists() else None
        super().__init__(config, model, device, threads, node)


class _ShardWorkerLeavingItsLastShard(ShardWorker):
    """A node actor (a GPU's) that serves every shard of a call but the last, then does
    what `then` does, as if that shard were still being served."""

    def __init__(self, config, model: str, device: str, threads: int, node=None):
        super().__init__(config, model, device, threads, node)
        serve = self.node.serve

        def serve_all_but_the_last(tasks, *args):
            serve(tasks[:-1], *args)
            self.then()

        self.node.serve = serve_all_but_the_last

    def then(self) -> None:
        raise NotImplementedError


class ShardWorkerHoldingItsLastShard(_ShardWorkerLeavingItsLastShard):
    """Holds the call open until it is killed."""

    def then(self) -> None:
        time.sleep(3600)


class ShardWorkerLostWithItsLastShard(_ShardWorkerLeavingItsLastShard):
    """Dies, a few of the driver's polls later (engines.ray_driver.POLL_S)."""

    def then(self) -> None:
        time.sleep(2.0)
        os._exit(3)


class ShardWorkerCommittingAsItIsStopped(ShardWorker):
    """An actor whose commit of the output named HELD waits until its driver stops the
    job, and goes on once the actor has answered that: the commit the stop races."""

    HELD = "c.jsonl.out"

    def __init__(self, config, model: str, device: str, threads: int, node=None):
        super().__init__(config, model, device, threads, node)
        self.asked, self.tried = threading.Event(), threading.Event()
        commit = writer._Outputs._commit  # this actor's process alone

        def commit_once_asked(outputs, idx):
            held = outputs._outputs[idx].uri.endswith(self.HELD)
            if held:
                self.asked.wait(60)
            commit(outputs, idx)
            if held:
                self.tried.set()

        writer._Outputs._commit = commit_once_asked

    def stop(self):
        answer = super().stop()
        self.asked.set()
        self.tried.wait(10)  # the driver kills the actor once answered: not before the try
        return answer
