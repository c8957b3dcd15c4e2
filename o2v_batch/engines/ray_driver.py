"""The driver of an `--engine ray` job: actors started as the plan says, shards handed
to them as they free up (largest first; a GPU's actor takes several), progress polled,
an actor stuck past --invocation-timeout restarted, and each shard's report kept."""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from o2v_batch import io
from o2v_batch.config import TransformConfig
from o2v_batch.engines.shard import ShardTask, mini_batch_cap, total_bytes
from o2v_batch.errors import ConfigError, WorkerError, describe
from o2v_batch.execution.planning import plan_workers
from o2v_batch.execution.protocol import HOST
from o2v_batch.execution.worker import splitting
from o2v_batch.reporting.messages import batch_failure, recovered, shard_failed
from o2v_batch.reporting.progress import Progress
from o2v_batch.reporting.report import Faults, ShardReport

# How often the driver looks at the actors while shards are running.
POLL_S = 0.5
# How long a stopped job waits for its actors to stop committing and say which
# outputs they committed.
STOP_S = 2.0


@dataclass(eq=False)  # compared and hashed by identity
class _Slot:
    """One actor as the driver sees it."""

    actor: Any
    device: str
    pids: set[int] = field(default_factory=set)
    shards: list[int] = field(default_factory=list)  # the shards it is serving
    hung: str | None = None  # why the driver last restarted it, while that shard runs


def start_actors(
    ray: Any, config: TransformConfig, shards: int, model: str
) -> tuple[ActorPlan, list[_Slot]]:
    """The actors plan_actors sizes for the cluster, each loading `model`, started."""
    from o2v_batch.engines.ray_actor import ShardWorker

    resources = ray.cluster_resources()
    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    node_cpus = max((node.get("CPU", 0.0) for node in nodes), default=0.0)
    # A GPU's actor asks for its share of its node's cores: the smallest share of any
    # GPU node, so that every GPU's actor can start.
    shares = [node.get("CPU", 0.0) // node["GPU"] for node in nodes if node.get("GPU")]
    actors = plan_actors(
        config,
        shards,
        resources.get("CPU", 0.0),
        node_cpus,
        int(resources.get("GPU", 0)),
        cores_per_gpu=min(shares, default=None),
        split=splitting(),
    )
    remote = ray.remote(ShardWorker).options(
        **actors.resources,
        # Two threads: one serves a shard while the other answers progress().
        max_concurrency=2,
        # Enough restarts for every shard to use all its retries.
        max_restarts=(config.max_retries + 1) * shards,
        max_task_retries=config.max_retries,
    )
    return actors, [
        _Slot(
            remote.remote(config, model, actors.device, actors.threads, actors.node),
            actors.device,
        )
        for _ in range(actors.count)
    ]


class Driver:
    """Hands shards to actors as they free up, largest first, and keeps their reports."""

    def __init__(
        self,
        ray: Any,
        config: TransformConfig,
        log: Callable[[str], None],
        tasks,
        faults: Faults,
        signals: Callable[[], None] = lambda: None,
    ):
        self.ray = ray
        self.signals = signals  # runs the handlers of signals that arrived in Ray's calls
        self.config = config
        self.log = log
        self.tasks: list[ShardTask] = tasks
        self.faults = faults
        self.shown = [0] * len(tasks)  # records on the progress bar, per shard
        # Reports of shards an actor has finished while its call still serves others.
        self.finished: dict[int, ShardReport] = {}
        self.read_bytes = 0  # stored bytes of the shards finished
        self.progress: Progress  # drawn once the actors are asked for

    def run(self, model: str) -> None:
        ray = self.ray
        plan, slots = start_actors(ray, self.config, len(self.tasks), model)
        take = _taker(self.config, plan, [max(0, task.shard.size) for task in self.tasks])
        # Drawn from here on (the actors start in the loop below), closed in the finally.
        self.progress = Progress(self.config.progress, total_bytes(self.tasks))
        starting = {slot.actor.ready.remote(): slot for slot in slots}
        running: dict[Any, _Slot] = {}
        pings: dict[Any, _Slot] = {}
        idle: list[_Slot] = []
        todo = deque(sorted(range(len(self.tasks)), key=lambda i: -self.tasks[i].shard.size))
        try:
            while todo or running:
                while todo and idle:
                    slot = idle.pop()
                    slot.shards = take(todo)
                    running[self._submit(slot)] = slot
                done, _ = ray.wait([*starting, *running], num_returns=1, timeout=POLL_S)
                for ref in done:
                    if ref in starting:
                        idle.append(self._ready(ref, starting.pop(ref)))
                    else:
                        slot = running.pop(ref)
                        self._finished(ref, slot)
                        slot.shards, slot.hung = [], None
                        idle.append(slot)
                self._poll(running.values(), pings)
                self.signals()
        finally:
            # Stopped: the calls that ended meanwhile still count, and of those still
            # running, the shards whose outputs their actors committed.
            with contextlib.suppress(ray.exceptions.RayError):
                ended = (
                    ray.wait([*running], num_returns=len(running), timeout=0)[0] if running else []
                )
                for ref in ended:
                    self._finished(ref, running.pop(ref))
            busy = [i for slot in running.values() for i in slot.shards]
            if busy:
                self._stop_actors(running.values())
            for slot in slots:
                ray.kill(slot.actor, no_restart=True)
            for idx in busy:
                if idx in self.finished:
                    self._report(idx, self.finished.pop(idx))
            # The killed actors' half-written outputs go, --resume redoes them (a
            # committed output stays: only temp files and open uploads go).
            io.discard_partial([self.tasks[i].report.output for i in busy])
            self.progress.close()

    def _ready(self, ref: Any, slot: _Slot) -> _Slot:
        try:
            pid, fatal = self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:
            raise WorkerError(
                f"worker could not start on {slot.device}: {_describe_ray_error(exc)}"
            ) from None
        if fatal:
            raise WorkerError(fatal)
        self._saw(slot, pid)
        return slot

    def _submit(self, slot: _Slot) -> Any:
        # retry_exceptions: a model that raises is retried like a process that died,
        # as the local engine does.
        method = slot.actor.serve_shards.options(retry_exceptions=True)
        return method.remote([(i, self.tasks[i]) for i in slot.shards])

    def _finished(self, ref: Any, slot: _Slot) -> None:
        shards = slot.shards
        self.read_bytes += sum(max(0, self.tasks[i].shard.size) for i in shards)
        exceptions = self.ray.exceptions
        gave_up = f"gave up after {self.config.max_retries + 1} attempts"
        try:
            pid, results, faults, lines = self.ray.get(ref)
        except exceptions.RayTaskError as exc:
            cause = describe(exc.cause) if exc.cause is not None else _describe_ray_error(exc)
            self._fail(shards, f"{cause}; {gave_up}")
            return
        except exceptions.RayActorError as exc:
            reason = slot.hung or f"its Ray actor died ({type(exc).__name__}; Ray's logs say why)"
            # The actor died each time: whatever it had written is still there.
            io.discard_partial([self.tasks[i].report.output for i in shards])
            self._fail(shards, f"{reason}; {gave_up}")
            return
        except exceptions.RayError as exc:
            self._fail(shards, _describe_ray_error(exc))
            return
        self._saw(slot, pid)
        # A node's pool restarts its workers and retries mini-batches itself.
        self.faults.worker_restarts += faults.worker_restarts
        self.faults.mini_batch_retries += faults.mini_batch_retries
        for line in lines:
            self.log(line)
        for idx, result in zip(shards, results, strict=True):
            self.finished.pop(idx, None)
            self._report(idx, result)

    def _report(self, idx: int, result: ShardReport) -> None:
        """What an actor reported for shard `idx`."""
        report = self.tasks[idx].report
        report.take(result)
        self._show(idx, report.records_in)
        if report.status == "failed":
            self.log(shard_failed(report.reason))

    def _fail(self, shards: list[int], reason: str) -> None:
        """Shards of a call that failed, each with `reason` after its name; but those
        its actor had finished before, as it said then (a committed output is whole)."""
        for idx in shards:
            if idx in self.finished:
                self._report(idx, self.finished.pop(idx))
                continue
            report = self.tasks[idx].report
            report.status, report.reason = "failed", f"{io.shown(report.shard)}: {reason}"
            self.log(shard_failed(report.reason))

    def _poll(self, busy, pings: dict[Any, _Slot]) -> None:
        """Asks the busy actors how far they are: moves the bar, and restarts an actor stuck
        on one mini-batch past --invocation-timeout (Ray then retries its shard; a node
        actor's pool times its mini-batches out itself)."""
        ray = self.ray
        if pings:
            answered, _ = ray.wait(list(pings), num_returns=len(pings), timeout=0)
            for ref in answered:
                slot = pings.pop(ref)
                try:
                    pid, records, pos, seconds, finished = ray.get(ref)
                except ray.exceptions.RayError:  # asked just before it died: Ray restarts it
                    continue
                self._saw(slot, pid)
                if not records or not records.keys() <= set(slot.shards):  # asked earlier
                    continue
                for idx, count in records.items():
                    self._show(idx, count)
                self._heard(slot, finished)
                if seconds > self.config.invocation_timeout:
                    self._restart_hung(slot, pid, pos)
        asked = set(pings.values())
        for slot in busy:
            if slot not in asked:
                pings[slot.actor.progress.remote()] = slot

    def _stop_actors(self, busy) -> None:
        """Stops the actors still serving: each commits nothing more and says which of
        its shards' outputs it has committed, for a stopped job's reports. At most
        STOP_S seconds, then the job stops anyway."""
        ray = self.ray
        asked = {slot.actor.stop.remote(): slot for slot in busy}
        with contextlib.suppress(ray.exceptions.RayError):
            answered, _ = ray.wait(list(asked), num_returns=len(asked), timeout=STOP_S)
            for ref in answered:
                with contextlib.suppress(ray.exceptions.RayError):  # it died meanwhile
                    self._heard(asked[ref], ray.get(ref))

    def _heard(self, slot: _Slot, finished: dict[int, ShardReport]) -> None:
        """Keeps the reports of the shards an actor says it has finished, of those it
        serves now (an answer to an earlier call's question names others)."""
        self.finished.update((i, report) for i, report in finished.items() if i in slot.shards)

    def _restart_hung(self, slot: _Slot, pid: int, pos: int) -> None:
        """Worded as the local engine words a hung worker, for when the retries run out."""
        timeout = f"{self.config.invocation_timeout:g} s (--invocation-timeout)"
        content_type = self.tasks[slot.shards[0]].content_type  # an actor of one shard
        slot.hung = batch_failure(pos, content_type, f"worker {pid} timed out after {timeout}")
        self.ray.kill(slot.actor, no_restart=False)

    def _saw(self, slot: _Slot, pid: int) -> None:
        """An actor answered from `pid`: a new one means Ray replaced a lost actor."""
        if slot.pids and pid not in slot.pids:
            self.faults.worker_restarts += 1
            self.log(recovered(f"a Ray actor on {slot.device} was lost", True, None))
        slot.pids.add(pid)

    def _show(self, idx: int, records: int) -> None:
        # A retried shard starts again from 0: the bar only ever moves forward.
        self.shown[idx] = max(self.shown[idx], records)
        self.progress.show(self.read_bytes, sum(self.shown))


def _taker(
    config: TransformConfig, plan: ActorPlan, sizes: list[int]
) -> Callable[[deque[int]], list[int]]:
    """How an actor takes its next shards from the front of the queue (largest first):
    a CPU actor one at a time. A node actor (a GPU's) serves several at once, as the
    local engine does, so that small shards keep its host workers busy too: enough for
    every host worker's mini-batches in flight, but within an even share of what is
    left among the actors."""
    if plan.node is None:
        return lambda todo: [todo.popleft()]
    hosts = sum(role == HOST for role, _, _ in plan.node)
    most = max(1, hosts * config.max_concurrent_transforms)
    fill = most * mini_batch_cap(config)
    left = sum(sizes)

    def take(todo: deque[int]) -> list[int]:
        nonlocal left
        share = left / plan.count
        group = [todo.popleft()]
        size = sizes[group[0]]
        while todo and len(group) < most and size < fill and size + sizes[todo[0]] <= share:
            group.append(todo.popleft())
            size += sizes[group[-1]]
        left -= size
        return group

    return take


def _describe_ray_error(exc: Exception) -> str:
    """A Ray error's class and the first line of its message (Ray's run to many lines)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


# CPUs (and torch threads) of one CPU actor when --workers does not say.
CPUS_PER_ACTOR = 2


@dataclass(frozen=True)
class ActorPlan:
    """How many actors, the device each sees, its torch threads and its Ray resources;
    and for an actor that runs a node of the local engine (a GPU's), its workers' plan
    (planning.plan_workers: role, device, torch threads)."""

    count: int
    device: str
    threads: int
    resources: dict[str, float]
    node: tuple[tuple[str, str, int], ...] | None = None


def plan_actors(
    config: TransformConfig,
    shards: int,
    cluster_cpus: float,
    node_cpus: float,
    gpus: int,
    cores_per_gpu: float | None = None,
    split: bool = False,
) -> ActorPlan:
    """One actor per GPU, each running the local engine's pipeline there: host workers
    on its share of the node's cores (`cores_per_gpu`: the fewest any GPU node has per
    GPU) feeding a device process on the GPU. Without GPUs, CPU actors of
    CPUS_PER_ACTOR cores each (and where `split` says, tests', one node actor on CPU).
    Never more actors than shards.

    `node_cpus` is the largest node's: an actor asking for more could never start.
    """
    devices = config.devices.strip().lower()
    if devices not in ("auto", "cpu", "cuda"):
        raise ConfigError(
            f"--devices {config.devices}: with --engine ray, Ray assigns the GPUs "
            "(use auto, cuda or cpu)"
        )
    if devices == "cuda" and not gpus:
        raise ConfigError(f"--devices {config.devices}: the Ray cluster has no GPUs")
    if devices == "cuda" or (devices == "auto" and gpus):
        cores = min(node_cpus, cluster_cpus // gpus) if cores_per_gpu is None else cores_per_gpu
        # Ray sets CUDA_VISIBLE_DEVICES per actor: its one GPU is cuda:0.
        return _node_actors(config, shards, gpus, "cuda:0", cores, {"num_gpus": 1})
    if split:
        return _node_actors(config, shards, 1, "cpu", node_cpus, {})
    node_cpus = max(node_cpus, 1.0)
    if config.workers is None:
        per_actor = min(float(CPUS_PER_ACTOR), node_cpus)
        count = max(1, int(cluster_cpus // per_actor))
    else:
        count = config.workers
        per_actor = min(node_cpus, max(cluster_cpus, 1.0) / count)
    return ActorPlan(min(count, shards), "cpu", max(1, int(per_actor)), {"num_cpus": per_actor})


def _node_actors(
    config: TransformConfig,
    shards: int,
    devices: int,
    device: str,
    cores: float,
    resources: dict[str, float],
) -> ActorPlan:
    """An actor per device, each a node of the local engine on `cores` cores: --workers
    host workers in all, shared among them (by default one per core left after the
    device process)."""
    count = min(devices, shards)
    cores = max(1, int(cores))
    hosts = -(-config.workers // count) if config.workers else None
    node = plan_workers([device], hosts, cpu_count=cores, split=True)
    return ActorPlan(count, device, 1, {**resources, "num_cpus": cores}, tuple(node))
