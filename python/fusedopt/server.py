"""``fusedopt-server``: a ``tf.distribute.Server`` that can run fusedopt's ops.

Under ``tf.distribute.ParameterServerStrategy`` the fused update ops run on
the parameter-server task that holds each variable, and the workers run the
step functions that contain them: every server process of the cluster needs
fusedopt's op library loaded before it serves (``import fusedopt`` alone loads
nothing). Start each worker and parameter server with::

    fusedopt-server                                   # task and cluster from TF_CONFIG
    fusedopt-server --cluster '{"worker": ["h1:2222"], "ps": ["h2:2222", "h3:2222"]}' \\
        --task ps:0
    python -m fusedopt.server --cluster worker=h1:2222 ps=h2:2222,h3:2222 --task worker:0

The server loads the op library (failing at once, with the loader's
explanation, if it cannot), starts, prints one line saying what it serves and
where, and serves until it is killed. The chief (the process that creates the
strategy and the ``ClusterCoordinator``) is not started this way: it is the
training program itself, which loads the library on its first fused op.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

__all__ = ["parse_cluster", "parse_task", "server_config", "start", "main"]

# Jobs whose tasks serve a ParameterServerStrategy cluster (the chief is the
# training program, started by the user).
SERVER_JOBS = ("worker", "ps")


def parse_cluster(text: str | Sequence[str]) -> dict[str, list[str]]:
    """A cluster spec dict from ``--cluster``: a JSON object (``{"ps": [...]}``)
    or ``job=host:port[,host:port...]`` items (one string or several)."""
    items = [text] if isinstance(text, str) else list(text)
    joined = " ".join(items).strip()
    if joined.startswith("{"):
        try:
            cluster = json.loads(joined)
        except json.JSONDecodeError as e:
            raise ValueError(f"--cluster is not valid JSON: {e}") from e
        if not isinstance(cluster, dict):
            raise ValueError("--cluster JSON must be an object mapping job names to addresses")
    else:
        cluster = {}
        for item in joined.replace(";", " ").split():
            job, sep, addresses = item.partition("=")
            if not sep or not job or not addresses:
                raise ValueError(
                    f"--cluster item {item!r} is not job=host:port[,host:port...]")
            if job in cluster:
                raise ValueError(f"--cluster names job {job!r} twice")
            cluster[job] = [a for a in addresses.split(",") if a]
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
            raise ValueError(f"cluster job {job!r} must list 'host:port' strings")
        if not addresses:
            raise ValueError(f"cluster job {job!r} has no tasks")
    if not cluster:
        raise ValueError("the cluster spec is empty")
    return cluster


def parse_task(text: str) -> tuple[str, int]:
    """``job:index`` (``ps:0``) as (job, index)."""
    job, sep, index = text.partition(":")
    if not sep or not job or not index.isdigit():
        raise ValueError(f"--task must be job:index (e.g. ps:0 or worker:1), got {text!r}")
    return job, int(index)


def server_config(args: argparse.Namespace,
                  environ: dict[str, str] | None = None) -> tuple[dict[str, list[str]], str, int]:
    """(cluster, job, index) from the arguments, else from ``TF_CONFIG``.

    Raises:
        ValueError: naming what is missing or inconsistent.
    """
    environ = os.environ if environ is None else environ
    tf_config: dict[str, Any] = {}
    if environ.get("TF_CONFIG"):
        try:
            tf_config = json.loads(environ["TF_CONFIG"])
        except json.JSONDecodeError as e:
            raise ValueError(f"TF_CONFIG is not valid JSON: {e}") from e
    if args.cluster:
        cluster = parse_cluster(args.cluster)
    elif "cluster" in tf_config:
        cluster = parse_cluster(json.dumps(tf_config["cluster"]))
    else:
        raise ValueError("no cluster: pass --cluster or set TF_CONFIG's \"cluster\"")
    if args.task:
        job, index = parse_task(args.task)
    elif "task" in tf_config:
        task = tf_config["task"]
        job, index = str(task.get("type", "")), int(task.get("index", 0))
    else:
        raise ValueError("no task: pass --task job:index or set TF_CONFIG's \"task\"")
    if job not in cluster:
        raise ValueError(f"task {job}:{index}: the cluster has no job {job!r} "
                         f"(it has {', '.join(sorted(cluster))})")
    if not 0 <= index < len(cluster[job]):
        raise ValueError(f"task {job}:{index}: job {job!r} has {len(cluster[job])} task(s)")
    return cluster, job, index


def start(cluster: dict[str, list[str]], job: str, index: int, *, protocol: str = "grpc",
          inter_op_threads: int | None = None) -> Any:
    """Loads fusedopt's op library and starts a ``tf.distribute.Server`` for
    task ``job:index`` of ``cluster``; returns the started server.

    Raises:
        ImportError: if the op library cannot be loaded (see fusedopt._loader).
    """
    from fusedopt import _loader

    _loader.load()  # before the server runs anything sent to it
    import tensorflow as tf

    config = None
    if inter_op_threads is not None:
        config = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=inter_op_threads)
    return tf.distribute.Server(tf.train.ClusterSpec(cluster), job_name=job, task_index=index,
                                protocol=protocol, config=config, start=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fusedopt-server",
        description="Start a tf.distribute.Server (a ParameterServerStrategy worker or "
                    "parameter server) with fusedopt's op library loaded; serve until killed.")
    p.add_argument("--cluster", nargs="+", metavar="SPEC",
                   help='the cluster: JSON ({"worker": ["h:p"], "ps": ["h:p", "h:p"]}) or '
                        "job=host:port[,host:port] items; default: TF_CONFIG's cluster")
    p.add_argument("--task", metavar="JOB:INDEX",
                   help="this server's task (ps:0, worker:1); default: TF_CONFIG's task")
    p.add_argument("--protocol", default="grpc", help="server protocol (default grpc)")
    p.add_argument("--inter-op-threads", type=int, default=None, metavar="N",
                   help="inter-op thread pool size (TensorFlow's guide advises at least "
                        "workers + 1 on a worker of a machine with fewer cores)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of ``fusedopt-server``."""
    args = _parser().parse_args(argv)
    try:
        cluster, job, index = server_config(args)
    except ValueError as e:
        print(f"fusedopt-server: {e}", file=sys.stderr)
        return 2
    if job not in SERVER_JOBS:
        print(f"fusedopt-server: note: task {job}:{index} is started as a server; under "
              "ParameterServerStrategy the chief is the training program itself",
              file=sys.stderr)
    try:
        server = start(cluster, job, index, protocol=args.protocol,
                       inter_op_threads=args.inter_op_threads)
    except ImportError as e:
        print(f"fusedopt-server: cannot load fusedopt's op library: {e}", file=sys.stderr)
        return 1
    from fusedopt import _loader

    print(f"fusedopt-server: /job:{job}/replica:0/task:{index} serving on "
          f"{cluster[job][index]} ({server.target}), fusedopt op library "
          f"{_loader.library_path()}", flush=True)
    server.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
