"""Distribution strategies of `tnbc train`: one device, MirroredStrategy, MultiWorkerMirroredStrategy.

Several machines (`multi_worker`): every worker runs the same `tnbc train` command with the same
`--run-dir` and its own TF_CONFIG. The chief (task "chief", else worker 0) alone writes the run folder;
each other worker trains in a temporary folder that is removed when it ends, reading only the chief's
resume state. The input pipeline (data.pipeline.make_dataset) is sharded by data, so each global batch is
split across the workers and every crop of it is seen once per step; every worker validates on the whole valid set itself
(callbacks.WholeValidation).
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

from tnbc_pipeline.errors import TnbcError
from tnbc_pipeline.tf_env import tf


def make_strategy(name: str) -> tf.distribute.Strategy:
    """auto: MirroredStrategy over several GPUs, else the default (one device). multi_worker must be made
    before any other TensorFlow work (collective ops are configured at program start): `train` makes it
    first -- even listing devices would be too late."""
    if name == "multi_worker":
        check_tf_config(os.environ.get("TF_CONFIG"))
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    return tf.distribute.get_strategy()


def check_tf_config(text: str | None) -> dict[str, Any]:
    """TF_CONFIG for multi_worker, checked before TensorFlow reads it: JSON with a cluster of worker
    addresses and this task's type and index within it. Anything else is a one-line TnbcError."""
    if not text:
        raise TnbcError("strategy multi_worker needs the TF_CONFIG environment variable (cluster and task)")
    try:
        cfg = json.loads(text)
    except ValueError as exc:
        raise TnbcError(f"TF_CONFIG: not JSON ({str(exc)[:100]})") from None
    cluster, task = (cfg.get("cluster"), cfg.get("task")) if isinstance(cfg, dict) else (None, None)
    if not (isinstance(cluster, dict) and cluster and all(
            isinstance(k, str) and isinstance(v, list) and v and all(isinstance(a, str) for a in v)
            for k, v in cluster.items())):
        raise TnbcError("TF_CONFIG: 'cluster' must map job names to lists of 'host:port' addresses")
    if not (isinstance(task, dict) and task.get("type") in cluster and type(task.get("index")) is int
            and 0 <= task["index"] < len(cluster[task["type"]])):
        raise TnbcError("TF_CONFIG: 'task' must name a job of the cluster and an index within it")
    return cfg


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run folder: always, except a multi-worker task that is neither
    the "chief" nor, in a cluster without one, worker 0."""
    if not is_multi_worker(strategy):
        return True
    resolver = strategy.cluster_resolver
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in resolver.cluster_spec().jobs


def _logs_of_rank_one(step):
    @functools.wraps(step)
    def wrapped(data):
        return {name: tf.reshape(value, (1,)) for name, value in step(data).items()}

    return wrapped


def fit_under_multi_worker(model) -> None:
    """Let Keras 3's `fit` (3.15) run `model` under MultiWorkerMirroredStrategy; fit must then be called
    inside `strategy.scope()`. Two failures inside Keras (keras-team/keras#20585), measured with two workers:
    1. fit first probes the input shapes with `strategy.reduce("MEAN", batch, axis=None)` of a PerReplica
       batch, which MultiWorkerMirroredStrategy cannot convert. A model that records no strategy defers that
       probe to the step's tracing and takes the strategy from the enclosing scope (`distribute_strategy`).
    2. each step reduces every log across workers with `reduce("MEAN", value, axis=0)`, which fails on
       Keras' scalar logs: the steps return them as shape (1,), reduced back to scalars.
    Private Keras state, pinned by the two-worker test (tests/model/test_multi_worker.py)."""
    model._distribute_strategy = None
    model.train_step = _logs_of_rank_one(model.train_step)
    model.test_step = _logs_of_rank_one(model.test_step)
