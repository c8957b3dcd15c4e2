"""Ray actors that build a test's server instead of the product's.

An actor runs in one of Ray's worker processes, which a test's replace_servers does not
reach: the server travels in the model folder instead (SERVERS, written by the test
into its own copy of the model), read by the actor as it starts. Loaded by name in the
actors, as the servers themselves are.
"""

from __future__ import annotations

from pathlib import Path

from o2v_batch.engines.ray_actor import ShardWorker
from o2v_batch.execution import worker

SERVERS = "servers.txt"  # "module:function", in the model folder


class ShardWorkerWithServers(ShardWorker):
    """A ShardWorker whose server is the one its model folder names, if any."""

    def __init__(self, config, model: str, device: str, threads: int, node=None):
        named = Path(model) / SERVERS
        worker._replaced_factory = named.read_text().strip() if named.exists() else None
        super().__init__(config, model, device, threads, node)
