"""fusedopt.legacy under ``tf.distribute.ParameterServerStrategy`` (tf_keras).

Note [parameter servers]: under ParameterServerStrategy the chief (the
coordinator) traces the step; ``ClusterCoordinator`` runs it on a worker, and
every variable op runs on the parameter-server task that holds the variable.
The fused step needs nothing special for that: ``_distributed_apply`` groups
the variables by device, and the strategy's ``extended.update`` colocates each
group's fused op with the group's first variable, so each op runs on the
server that holds its variables and their slots (tf_keras creates slots
colocated with their variable). A table sharded by a ``variable_partitioner``
reaches the optimizer as its shards, each with an IndexedSlices gradient of
shard-local rows: each shard is updated by its own server's sparse kernel,
never densified.

What does need care is the op library: the workers (which partition and run
the step) and the parameter servers (which run the fused ops) must have it
loaded, and a server that lacks it fails the first step with "Op type not
registered" from deep inside a remote call. So before the first fused step
under a strategy, :func:`check_servers` runs fusedopt's tiny build-info op
eagerly on every worker and parameter-server task, from the chief, and turns a
missing library (or one of another fusedopt or TensorFlow version) into an
error naming the task and the fix (start it with ``fusedopt-server``).
"""

from __future__ import annotations

import json
import threading
import weakref
from typing import Any

import tensorflow as tf

from fusedopt import _loader

# Jobs whose tasks run the step (workers) or its variable ops (ps).
_JOBS = ("worker", "ps")

_checked: "weakref.WeakKeyDictionary[Any, bool]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()

FIX = ("Start every worker and parameter server of the cluster with `fusedopt-server` (or "
       "`python -m fusedopt.server`), which loads fusedopt's op library before serving; a "
       "server started by your own script must call `fusedopt.build_info()` (which loads the "
       "library) before `tf.distribute.Server(...)`: `import fusedopt` alone loads nothing. "
       "See the README, 'Distributed training'.")


class ServerWithoutFusedoptError(RuntimeError):
    """A worker or parameter server of the cluster cannot run fusedopt's ops."""

    # (Raised while a step is traced: AutoGraph re-raises an error of this
    # type, rather than a StagingError, only when its __init__ is Exception's.)
    __init__ = Exception.__init__


def _tasks(strategy: Any) -> list[str]:
    # (ParameterServerStrategy keeps its resolver in `_cluster_resolver`; the
    # public property is None for it in TF 2.21.)
    resolver = strategy.cluster_resolver or getattr(strategy, "_cluster_resolver", None)
    if resolver is None:
        return []
    spec = resolver.cluster_spec().as_dict()
    tasks = []
    for job in _JOBS:
        addresses = spec.get(job, [])
        indices = sorted(addresses) if isinstance(addresses, dict) else range(len(addresses))
        tasks += [f"/job:{job}/replica:0/task:{i}" for i in indices]
    return tasks


def _probe(task: str, library: Any) -> dict[str, Any]:
    with tf.device(f"{task}/device:CPU:0"):
        info = library.fusedopt_build_info()
    return json.loads(info.numpy().decode("utf-8"))


def check_servers(strategy: Any) -> None:
    """Checks, once per strategy, that every worker and parameter server of
    ``strategy``'s cluster runs fusedopt's op library of this process's
    fusedopt and TensorFlow versions.

    Runs eagerly (from inside a trace too) on the chief.

    Raises:
        ServerWithoutFusedoptError: naming the first task that cannot run the
            fused ops, and how to start it.
    """
    with _lock:
        if _checked.get(strategy):
            return
        library = _loader.load()
        with tf.init_scope():
            local = json.loads(library.fusedopt_build_info().numpy().decode("utf-8"))
            for task in _tasks(strategy):
                try:
                    remote = _probe(task, library)
                except tf.errors.NotFoundError as e:
                    # ("Op type not registered", or "neither a type of a
                    # primitive operation nor a name of a function registered")
                    if "registered" not in str(e):
                        raise
                    raise ServerWithoutFusedoptError(
                        f"The server {task} of the ParameterServerStrategy cluster does not "
                        f"have fusedopt's op library loaded, so it cannot run fusedopt's fused "
                        f"updates (the step would fail with \"Op type not registered\"). {FIX}"
                    ) from None
                for key in ("fusedopt_version", "tensorflow_built_against"):
                    if remote.get(key) != local.get(key):
                        raise ServerWithoutFusedoptError(
                            f"The server {task} runs another fusedopt op library than this "
                            f"chief ({key} {remote.get(key)!r} there, {local.get(key)!r} "
                            f"here): install the same fusedopt on every machine of the cluster "
                            f"and restart its servers with `fusedopt-server`.")
        _checked[strategy] = True
