"""Where cross-entropy training runs: one device, `train.devices` devices of one machine, or a cluster of
machines named by the standard `TF_CONFIG` variable (tf.distribute.MultiWorkerMirroredStrategy).

Without `TF_CONFIG` (or with a cluster of one task) nothing here touches the network. With it, every
worker runs the same train stage; each reads only its share of every batch from its own copy of the
features, gradients are summed across workers after each step, and only the chief writes. Self-critical
training (scst.py, a custom loop) is not distributed: the chief runs it alone after cross-entropy.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from captioner.core.errors import CaptionerError
from captioner.core.params import where

TF_CONFIG = "TF_CONFIG"
_TASK_TYPES = ("chief", "worker")  # no parameter servers or evaluators: collective all-reduce only
_CAP_SYNC_BATCHES = 16  # under a cluster, the time cap is agreed on every this many batches (one all-reduce)
COLLECTIVE_TIMEOUT_S = 600  # a step's all-reduce waiting this long for a peer fails the run (a hung worker)
_PEER = re.compile(r"/job:(chief|worker)/replica:\d+/task:(\d+)")


@dataclass(frozen=True)
class Cluster:
    """This process's place in a TF_CONFIG cluster: every task's address in TensorFlow's id order (chief first)."""

    tasks: tuple[tuple[str, int, str], ...]  # (task type, index, host:port) by id in the cluster
    rank: int  # this process's id in the cluster (0 = the chief, which writes)

    @property
    def workers(self) -> int:
        return len(self.tasks)

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    def name(self, task_type: str, index: int) -> str:
        """A task as the error lines name it: `worker 1 (10.0.0.2:12345)`."""
        address = next((a for t, i, a in self.tasks if (t, i) == (task_type, index)), "?")
        return f"{task_type} {index} ({address})"


def read_cluster(environ: Mapping[str, str] = os.environ) -> Cluster | None:
    """The cluster `TF_CONFIG` describes, or None without one (unset, empty, or a cluster of one task).

    A task is chief if it is the `chief` task, or worker 0 where the cluster has no `chief`, as in TensorFlow.
    A malformed TF_CONFIG is a one-line CaptionerError.
    """
    text = environ.get(TF_CONFIG, "").strip()
    if not text:
        return None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CaptionerError(f"{TF_CONFIG}: not valid JSON ({exc.msg} at character {exc.pos})") from None
    cluster, task = (config.get("cluster"), config.get("task")) if isinstance(config, dict) else (None, None)
    if not cluster:
        return None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise CaptionerError(f'{TF_CONFIG}: needs {{"cluster": {{"worker": ["host:port", ...]}}, "task": {{...}}}}')
    unknown = sorted(set(cluster) - set(_TASK_TYPES))
    if unknown:
        raise CaptionerError(f"{TF_CONFIG}: cluster job {unknown[0]!r} is not supported (only chief and worker)")
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not all(isinstance(a, str) and _is_address(a) for a in addresses):
            raise CaptionerError(f'{TF_CONFIG}: cluster.{job} must be a list of "host:port" strings')
    if len(cluster.get("chief", [])) > 1:
        raise CaptionerError(f"{TF_CONFIG}: cluster.chief has {len(cluster['chief'])} tasks (at most 1)")
    tasks = tuple((job, i, a) for job in _TASK_TYPES for i, a in enumerate(cluster.get(job, [])))
    kind, index = task.get("type"), task.get("index")
    if kind not in _TASK_TYPES or not isinstance(index, int) or isinstance(index, bool):
        raise CaptionerError(f'{TF_CONFIG}: task needs "type" (chief or worker) and an integer "index"')
    rank = next((r for r, (t, i, _) in enumerate(tasks) if (t, i) == (kind, index)), None)
    if rank is None:
        raise CaptionerError(f"{TF_CONFIG}: task {kind} {index} is not in the cluster")
    return Cluster(tasks, rank) if len(tasks) > 1 else None


def _is_address(text: str) -> bool:
    host, _, port = text.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


@dataclass
class Placement:
    """The strategy training runs under (None: one device) and how the work is divided."""

    strategy: Any  # a tf.distribute strategy or None
    cluster: Cluster | None  # None: one machine
    replicas: int  # devices training in sync, all workers together

    @property
    def workers(self) -> int:
        return self.cluster.workers if self.cluster else 1

    @property
    def is_chief(self) -> bool:
        return self.cluster is None or self.cluster.is_chief

    def datasets(self, make: Callable[..., Any]):
        """The training input: `make()` on one machine; under a cluster, each worker's own datasets.

        `make(parts, part_ids)` builds a tf.data dataset that yields, for every global batch, the shares
        `part_ids` of `parts` (one per local replica, in order); tf.distribute hands them to this worker's
        replicas as they are, so a worker reads only its own images.
        """
        if self.cluster is None:
            return make()

        def for_worker(context):
            local = context.num_replicas_in_sync // context.num_input_pipelines
            first = context.input_pipeline_id * local
            return make(context.num_replicas_in_sync, tuple(range(first, first + local)))

        return self.strategy.distribute_datasets_from_function(for_worker)

    def scope(self):
        """The strategy's scope (variables are mirrored), or a no-op context on one device."""
        import contextlib

        return self.strategy.scope() if self.strategy else contextlib.nullcontext()


def placement(devices: str | int, cluster: Cluster | None = None) -> Placement:
    """Where training runs: MultiWorkerMirroredStrategy for a TF_CONFIG cluster, else `distribution(devices)`."""
    if cluster is None:
        strategy = distribution(devices)
        return Placement(strategy, None, strategy.num_replicas_in_sync if strategy else 1)
    import tensorflow as tf

    # Before TensorFlow runs anything else in this process: collectives are configured at start-up only.
    # It waits until every worker of the cluster has started.
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=COLLECTIVE_TIMEOUT_S)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    local = len(strategy.extended.worker_devices)  # each worker: all its GPUs, else its CPU
    if devices != "auto" and int(devices) != local:
        raise CaptionerError(
            f"{where('train.devices')}: train.devices is {devices} but under {TF_CONFIG} each worker trains on all "
            f"its {local} device(s) (set train.devices: auto)"
        )
    return Placement(strategy, cluster, int(strategy.num_replicas_in_sync))


def distribution(devices: str | int):
    """A MirroredStrategy over `train.devices` devices (GPUs, else logical CPU devices), or None for one device.

    `auto` takes every GPU when there are several and one device otherwise.
    """
    import tensorflow as tf

    gpus, cpus = tf.config.list_logical_devices("GPU"), tf.config.list_logical_devices("CPU")
    n = (len(gpus) if len(gpus) > 1 else 1) if devices == "auto" else int(devices)
    if n == 1:
        return None
    pool = gpus if len(gpus) >= n else cpus
    if len(pool) < n:
        raise CaptionerError(
            f"{where('train.devices')}: train.devices is {n} but TensorFlow sees {len(gpus)} GPU and {len(cpus)} "
            "CPU devices"
        )
    return tf.distribute.MirroredStrategy([d.name for d in pool[:n]])


def worker_share(n: int, workers: int, rank: int) -> slice:
    """The rank-th of `workers` equal consecutive parts of n items (n a multiple of `workers`)."""
    part = n // workers
    return slice(rank * part, (rank + 1) * part)


def agree(place: Placement, flag: bool) -> bool:
    """True on every worker when `flag` is true on any of them (an all-reduce; plain `flag` without a cluster)."""
    if place.cluster is None:
        return flag
    import tensorflow as tf

    strategy = place.strategy
    local = strategy.run(lambda: tf.constant(1.0 if flag else 0.0))
    return bool(strategy.reduce(tf.distribute.ReduceOp.SUM, local, axis=None).numpy() > 0)


def cap_sync_due(batch: int) -> bool:
    """Whether workers agree on the time cap after this batch (0-based index within the epoch)."""
    return (batch + 1) % _CAP_SYNC_BATCHES == 0


def lost_worker(exc: BaseException, cluster: Cluster) -> CaptionerError | None:
    """The one-line error for a collective that failed because a peer went away, or None for another error."""
    import tensorflow as tf

    if not isinstance(exc, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
                            tf.errors.CancelledError, tf.errors.InternalError, tf.errors.FailedPreconditionError)):
        return None
    mine = cluster.tasks[cluster.rank][:2]
    peers = [p for p in dict.fromkeys((t, int(i)) for t, i in _PEER.findall(str(exc))) if p != mine]
    who = cluster.name(*peers[0]) if peers else "another worker"
    if isinstance(exc, tf.errors.DeadlineExceededError):
        return CaptionerError(f"multi-worker training stopped: no answer from {who} for {COLLECTIVE_TIMEOUT_S} s")
    return CaptionerError(f"multi-worker training stopped: {who} is unreachable (its process or machine stopped)")


def prepare_for_cluster(model, place: Placement, feature_shape: tuple[int, ...]) -> None:
    """Let Keras 3's `fit` run a compiled model under MultiWorkerMirroredStrategy (nothing to do without a cluster).

    Keras 3.15 meets that strategy in two places it cannot handle: it builds the model from a sample batch
    that it first reduces across replicas (a nested batch, which the strategy cannot reduce), and it averages
    each step's scalar logs over replicas with `reduce(..., axis=0)` (invalid for a scalar). So the model's
    state is built here from symbolic shapes, in the scope (`fit` then takes the strategy from the scope it
    runs in), and each step's logs come out as 1-element vectors, whose axis-0 mean over the replicas of all
    workers is the cluster's loss: every worker logs, stops early and lowers the learning rate alike.
    """
    if place.cluster is None:
        return
    from keras import ops

    sample = ((np.zeros((1, *feature_shape), np.float32), np.zeros((1, 2), np.int32)), np.ones((1, 2), np.int32))
    with place.strategy.scope():
        model._symbolic_build(data_batch=sample)
    model._distribute_strategy = None  # fit reads tf.distribute.get_strategy(): the scope it runs in

    def as_vectors(step):
        return lambda data: {k: ops.reshape(v, (1,)) for k, v in step(data).items()}

    model.train_step, model.test_step = as_vectors(model.train_step), as_vectors(model.test_step)
