"""``fusedopt-bench --suite ps``: training steps per second of a recommender
under ``tf.distribute.ParameterServerStrategy`` on a local cluster of real
processes, fusedopt.legacy's fused optimizers against tf_keras' built-ins.

The model: an embedding table (default 1,000,000 x 64 float32) sharded row-wise
over the parameter servers by a ``variable_partitioner``, looked up with a
batch of ``batch x ids`` ids (default 512 x 8 = 4,096 rows per step, skewed so
that rows repeat), concatenated and fed to a small dense tower
(ids*dim -> 256 -> 64 -> 1, ReLU) with a sigmoid cross-entropy loss. A custom
loop: the chief (the ``ClusterCoordinator``) schedules the step, a worker runs
the forward and backward passes, and each variable's update runs on the
parameter server that holds it.

Contenders, each on its own copy of the model in the same cluster
(:func:`contenders`): per rule the suite times (fusedopt.bench.cases.PS_CONFIGS),
the fusedopt.legacy class with the lazy semantics (only the rows in the batch
move, as TF Addons' lazy optimizers: ``sparse_mode="lazy"``) and with its
built-in's semantics (its default), one contender where the two are one, and
the tf_keras legacy built-in it is a drop-in for.

Method, as the rest of fusedopt-bench: each contender first takes one step from
a known state (non-zero slots, so the lazy and exact semantics differ) on a known
batch, and the rows that batch touched, 256 rows it did not, and every dense
variable (and all their slots) are compared with a float64 reference computed
on the chief (the gradient by float64 autodiff of the same forward pass, then
the update rule in NumPy, per the contender's semantics); a contender that
fails is reported WRONG and not timed. Then, after ``warmup`` untimed rounds,
``repeats`` rounds run the contenders interleaved; in a round each contender
schedules ``steps`` steps and joins (so a round's time / steps is the time per
step with the coordinator's pipelining, as in ``model.fit``). The median over
rounds is reported, with its spread, and steps/s = 1000 / median ms.

Where the time goes is measured in the same rounds (rows named ``split: ...``):

* ``empty closure``: a scheduled step that only takes the next batch: the
  coordinator's scheduling, the RPC to the worker and the input pipeline;
* ``lookup only``: that plus the embedding lookup (gathers from every
  parameter server, over RPC) and a reduction;
* ``step without update``: the whole forward and backward pass, gradients
  computed on the worker and not applied (not sent to the servers);
* ``update alone on ps:0, <contender>``: the contender's per-variable update
  hook on one table shard with a fixed gradient of ``batch*ids/num_ps`` rows
  (with repeats), ``steps`` updates in one function run on the server, minus
  the same call with 0 updates: the kernel time, no worker and no RPC.

A full step minus ``step without update`` is the cost of sending the gradients
to the servers and applying them; the ``update alone`` rows say how much of that
is the update itself.

:func:`run_cluster_benchmark` (what ``fusedopt-bench --suite ps`` calls)
starts the servers, runs the chief in a fresh process (a process connects to
one cluster for its lifetime: ``python -m fusedopt.bench --ps-chief JSON``, the
CLI's hidden entry to :func:`chief_main`, which connects to the cluster, runs
the plan and writes its results) and kills every process it started. The
rounds are timed by fusedopt.bench.timing, each contender timing itself (a
round's scheduled steps and join).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from fusedopt.bench import cases, timing

# ---- the plan -------------------------------------------------------------------


@dataclass
class PSConfig:
    """What the ps suite runs (``fusedopt-bench --ps-*`` options)."""

    rows: int = 1_000_000  # table rows
    dim: int = 64  # embedding width
    batch: int = 512  # examples per step
    ids: int = 8  # ids per example
    steps: int = 20  # scheduled steps per contender per round
    repeats: int = 5  # timed rounds
    warmup: int = 1  # untimed rounds
    workers: int = 1
    ps: int = 2
    check: bool = True
    inject_wrong: bool = False
    seed: int = 0

    @property
    def label(self) -> str:
        return (f"{self.rows:,} x {self.dim} table on {self.ps} ps, batch {self.batch} x "
                f"{self.ids} ids, {self.workers} worker{'s' if self.workers > 1 else ''}")


@dataclass(frozen=True)
class PsContender:
    """A contender of the ps suite: its row's name, the rule, the semantics
    of its sparse update ("lazy": only the listed rows move), and whether it
    is tf_keras' built-in (else fusedopt.legacy's class, with ``sparse_mode``
    when given)."""

    name: str
    rule: str
    semantics: str
    builtin: bool = False
    sparse_mode: str | None = None


BUILTIN = "tf_keras"  # the built-ins' contender name


def legacy_class(rule: str) -> type:
    """The first fusedopt.legacy class whose FusedCall runs ``rule``."""
    import fusedopt.legacy as fl

    return next(getattr(fl, n) for n in fl.__all__
                if getattr(getattr(fl, n), "_fused_call", None) is not None
                and getattr(fl, n)._fused_call.rule == rule)


def _builtin_semantics(rule: str) -> str:
    """The sparse semantics of ``rule``'s fused class as configured, in its
    default mode (its built-in's)."""
    semantics = legacy_class(rule)(**cases.PS_CONFIGS[rule])._effective_sparse_mode()
    if semantics not in ("lazy", "exact"):
        raise ValueError(f"the ps suite times {rule} (fusedopt.reference.RULES), whose tf_keras "
                         f"built-in's sparse update is neither lazy nor exact")
    return semantics


def contenders() -> list[PsContender]:
    """Per rule of fusedopt.bench.cases.PS_CONFIGS, in its order: the fused
    class with the lazy semantics and with its built-in's (one contender,
    "fusedopt", where the built-in's is lazy), then the built-in."""
    out = []
    for rule in cases.PS_CONFIGS:
        semantics = _builtin_semantics(rule)
        if semantics == "lazy":
            out.append(PsContender("fusedopt", rule, "lazy"))
        else:
            out += [PsContender("fusedopt lazy", rule, "lazy", sparse_mode="lazy"),
                    PsContender(f"fusedopt {semantics}", rule, semantics)]
        out.append(PsContender(BUILTIN, rule, semantics, builtin=True))
    return out


def injected() -> PsContender:
    """--inject-wrong's contender: the first exact rule's lazy update judged
    against the exact semantics (the check must reject it)."""
    rule = next(r for r in cases.PS_CONFIGS if _builtin_semantics(r) == "exact")
    return PsContender("injected-wrong", rule, "exact", sparse_mode="lazy")

HIDDEN = (256, 64)
CHECK_UNTOUCHED = 256  # rows the check batch does not touch, compared too

# ---- the local cluster (the parent process) ------------------------------------------


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (released at once: a server
    binds them a moment later)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def cluster_env() -> dict[str, str]:
    """The environment of a local cluster's servers and chief: this process's
    fusedopt first on the path, quiet TensorFlow, no TF_CONFIG (the tests
    start their clusters with it too)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    import fusedopt

    path = str(Path(fusedopt.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([path] + [p for p in [env.get("PYTHONPATH")] if p])
    env.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    return env


class LocalCluster:
    """A chief address plus ``workers`` worker and ``ps`` parameter-server
    processes (``python -m fusedopt.server``) on 127.0.0.1, each logging to a
    file in ``logdir``. A context manager: leaving it kills every server."""

    def __init__(self, workers: int, ps: int, logdir: Path, start_timeout: float = 120.0):
        ports = iter(free_ports(1 + workers + ps))
        self.spec = {"chief": [f"127.0.0.1:{next(ports)}"],
                     "worker": [f"127.0.0.1:{next(ports)}" for _ in range(workers)],
                     "ps": [f"127.0.0.1:{next(ports)}" for _ in range(ps)]}
        self.logdir = logdir
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        try:
            for job in ("ps", "worker"):
                for i in range(len(self.spec[job])):
                    task = f"{job}:{i}"
                    self.logs[task] = logdir / f"{job}{i}.log"
                    with open(self.logs[task], "w") as log:
                        self.procs[task] = subprocess.Popen(
                            [sys.executable, "-m", "fusedopt.server", "--cluster",
                             json.dumps(self.spec), "--task", task],
                            env=cluster_env(), stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
            self._wait_serving(start_timeout)
        except BaseException:
            self.close()
            raise

    def log_tail(self, task: str, chars: int = 2000) -> str:
        try:
            return self.logs[task].read_text()[-chars:]
        except OSError:
            return ""

    def _wait_serving(self, timeout: float) -> None:
        """Waits until every server has printed its 'serving' line."""
        deadline = time.monotonic() + timeout
        waiting = set(self.procs)
        while waiting:
            for task in sorted(waiting):
                if "serving on" in self.log_tail(task, 100_000):
                    waiting.discard(task)
                elif self.procs[task].poll() is not None:
                    raise RuntimeError(f"fusedopt-server {task} exited with status "
                                       f"{self.procs[task].returncode}:\n{self.log_tail(task)}")
            if waiting and time.monotonic() > deadline:
                raise RuntimeError(f"fusedopt-server {', '.join(sorted(waiting))} did not start "
                                   f"within {timeout:.0f} s")
            time.sleep(0.2)

    def dead(self) -> list[str]:
        """Tasks whose process has exited."""
        return [t for t, p in self.procs.items() if p.poll() is not None]

    def close(self) -> None:
        """Kills every server process this cluster started, and reaps it."""
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
        for p in self.procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def run_cluster_benchmark(config: PSConfig, progress: Callable[[str], None] = print,
                          timeout: float = 1800.0) -> dict[str, Any]:
    """Starts a local cluster, runs the chief (``python -m fusedopt.bench --ps-chief``)
    on it and returns the chief's results; every process started is killed.

    ``progress`` receives the chief's progress lines. Raises RuntimeError
    (with the chief's or a server's output) if the run fails or takes longer
    than ``timeout`` seconds."""
    with tempfile.TemporaryDirectory(prefix="fusedopt-bench-ps-") as tmp:
        logdir = Path(tmp)
        progress(f"starting {config.ps} parameter servers and {config.workers} worker(s) "
                 "(python -m fusedopt.server)")
        with LocalCluster(config.workers, config.ps, logdir) as cluster:
            out = logdir / "result.json"
            chief_log = logdir / "chief.log"
            cmd = [sys.executable, "-m", "fusedopt.bench", "--ps-chief",
                   json.dumps(dict(cluster=cluster.spec, config=asdict(config), out=str(out)))]
            with open(chief_log, "w") as err:
                chief = subprocess.Popen(cmd, env=cluster_env(), stdout=subprocess.PIPE, stderr=err,
                                         stdin=subprocess.DEVNULL, text=True)
                try:
                    deadline = time.monotonic() + timeout
                    for line in _lines(chief, deadline):
                        if line.startswith("PROGRESS "):
                            progress(line[len("PROGRESS "):].rstrip())
                        dead = cluster.dead()
                        if dead:
                            raise RuntimeError(
                                f"server {dead[0]} died during the ps suite:\n"
                                f"{cluster.log_tail(dead[0])}")
                    if chief.poll() is None:
                        raise RuntimeError(f"the ps suite's chief did not finish within "
                                           f"{timeout:.0f} s:\n{chief_log.read_text()[-3000:]}")
                finally:
                    if chief.poll() is None:
                        chief.kill()
                    chief.wait(timeout=30)
                    chief.stdout.close()
            if chief.returncode != 0 or not out.exists():
                raise RuntimeError(f"the ps suite's chief failed (exit status "
                                   f"{chief.returncode}):\n{chief_log.read_text()[-4000:]}")
            result = json.loads(out.read_text())
            result["cluster"] = cluster.spec
            return result


def _lines(proc: subprocess.Popen, deadline: float) -> Iterator[str]:
    """The lines ``proc`` prints until it exits or ``deadline`` passes."""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf = ""
    while time.monotonic() < deadline:
        if not sel.select(timeout=1.0):
            if proc.poll() is not None:
                break
            yield ""  # (lets the caller look at the servers)
            continue
        chunk = os.read(proc.stdout.fileno(), 65536).decode("utf-8", "replace")
        if not chunk:
            break
        buf += chunk
        while "\n" in buf:
            line, buf = buf.split("\n", 1)
            yield line
    sel.close()
    if buf:
        yield buf
    if proc.poll() is None:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass


# ---- the chief (a separate process) ---------------------------------------------------


def _say(message: str) -> None:
    print(f"PROGRESS {message}", flush=True)


class Chief:
    """Builds every contender on the cluster, checks and times them."""

    def __init__(self, cluster: dict[str, list[str]], config: PSConfig):
        import numpy as np
        import tensorflow as tf

        self.np, self.tf, self.cfg = np, tf, config
        num_ps = len(cluster["ps"])
        table_shape = (config.rows, config.dim)

        def partitioner(shape, dtype):
            # Only the table is sharded (row-wise, over every server).
            if tuple(shape) == table_shape:
                return [num_ps] + [1] * (len(shape) - 1)
            return [1] * len(shape)

        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(cluster), task_type="chief", task_id=0, rpc_layer="grpc")
        self.strategy = tf.distribute.ParameterServerStrategy(
            resolver, variable_partitioner=partitioner)
        self.coordinator = tf.distribute.experimental.coordinator.ClusterCoordinator(
            self.strategy)
        cfg = config

        def dataset_fn(_=None):
            rows = cfg.rows

            def batch(i):
                seed = tf.stack([i, tf.constant(cfg.seed + 1, tf.int64)])
                u = tf.random.stateless_uniform([cfg.batch, cfg.ids], seed, dtype=tf.float64)
                # Skewed popularity (low ranks far more frequent: ids repeat
                # within a batch), ranks scattered over the table, so both
                # shards see traffic.
                rank = tf.cast(tf.floor(u * u * rows), tf.int64)
                ids = (rank * 1_000_003 + 17) % rows
                labels = tf.cast(tf.random.stateless_uniform([cfg.batch, 1], seed + 7) < 0.5,
                                 tf.float32)
                return ids, labels

            return tf.data.Dataset.range(1 << 62).map(batch).prefetch(2)

        with self.strategy.scope():
            self.dataset = self.coordinator.create_per_worker_dataset(dataset_fn)
        self.iterator = iter(self.dataset)
        self.models: dict[str, dict[str, Any]] = {}
        self._gathers: dict[int, Any] = {}

    # -- the model ---------------------------------------------------------------

    def forward(self, emb, dense, labels):
        """The loss of a batch: ``emb`` [batch, ids, dim] looked-up rows,
        ``dense`` the tower's [w1, b1, w2, b2, w3, b3]. Shared by the workers'
        step and the float64 reference."""
        tf = self.tf
        x = tf.reshape(emb, [tf.shape(emb)[0], -1])
        w1, b1, w2, b2, w3, b3 = dense
        h = tf.nn.relu(tf.matmul(x, w1) + b1)
        h = tf.nn.relu(tf.matmul(h, w2) + b2)
        logits = tf.matmul(h, w3) + b3
        return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels,
                                                                      logits=logits))

    def _optimizer(self, contender: PsContender):
        cls = legacy_class(contender.rule)
        kwargs = dict(cases.PS_CONFIGS[contender.rule])
        if contender.builtin:
            cls = cls._fused_builtin()
        elif contender.sparse_mode is not None:
            kwargs["sparse_mode"] = contender.sparse_mode
        return cls(**kwargs)

    def build(self, key: str, contender: PsContender) -> dict[str, Any]:
        """A fresh model and optimizer; slots set to a non-zero state."""
        tf, cfg = self.tf, self.cfg
        index = len(self.models)
        seed = cfg.seed * 1000 + 10 * index

        def table_init(shard_info):
            offset = shard_info.offset[0]
            return tf.random.stateless_uniform(shard_info.shape, [seed, offset], -0.05, 0.05)

        def dense_init(shape, s):
            fan_in = shape[0] if len(shape) > 1 else 1
            scale = (2.0 / fan_in) ** 0.5 if len(shape) > 1 else 0.05
            return lambda: tf.random.stateless_normal(shape, [seed + s, 1]) * scale

        widths = [cfg.ids * cfg.dim, *HIDDEN, 1]
        with self.strategy.scope():
            table = tf.Variable(table_init, shape=(cfg.rows, cfg.dim), dtype=tf.float32,
                                name=f"table{index}")
            dense = []
            for layer, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
                dense.append(tf.Variable(dense_init((a, b), 2 * layer + 1), name=f"w{layer}"))
                dense.append(tf.Variable(dense_init((b,), 2 * layer + 2), name=f"b{layer}"))
            opt = self._optimizer(contender)
            variables = list(table.variables) + dense
            opt._create_all_weights(variables)
        algorithm = contender.rule
        # The optimizer's slot of each registry slot it uses (its fused class's
        # FusedCall, whose conditions the optimizer answers).
        registry_slots = {}
        for op_slot, source in legacy_class(algorithm)._fused_call.slots.items():
            name, condition = source if isinstance(source, tuple) else (source, None)
            if condition is None or condition(opt):
                registry_slots[name] = op_slot
        slot_names = list(registry_slots)
        positive = cases.positive_slots(algorithm)
        # Non-zero starting slots (so the check tells the lazy semantics from the
        # exact ones), drawn on each slot's own server.
        for i, var in enumerate(variables):
            for j, name in enumerate(slot_names):
                slot = opt.get_slot(var, name)
                with tf.device(slot.device):
                    z = tf.random.stateless_normal(slot.shape, [seed + 100 + i, j])
                    slot.assign(0.1 + tf.abs(z) if registry_slots[name] in positive else 0.1 * z)
        model = dict(table=table, dense=dense, variables=variables, opt=opt,
                     slot_names=slot_names, registry_slots=registry_slots, algorithm=algorithm)
        model["step"] = self._train_fn(model, "full")
        self.models[key] = model
        return model

    def _replica_body(self, model: dict[str, Any], mode: str, ids, labels):
        tf = self.tf
        if mode == "empty":
            return tf.reduce_sum(labels) + tf.cast(tf.reduce_sum(ids), tf.float32)
        if mode == "lookup":
            return tf.reduce_sum(tf.nn.embedding_lookup(model["table"], ids))
        with tf.GradientTape() as tape:
            emb = tf.nn.embedding_lookup(model["table"], ids)
            loss = self.forward(emb, model["dense"], labels)
        grads = tape.gradient(loss, model["variables"])
        if mode == "no_update":
            # (The gradients feed the output, so none of the backward pass is pruned.)
            return loss + tf.add_n([tf.reduce_sum(g.values if isinstance(g, tf.IndexedSlices)
                                                  else g) for g in grads])
        model["opt"].apply_gradients(zip(grads, model["variables"]))
        return loss

    def _train_fn(self, model: dict[str, Any], mode: str):
        tf, strategy = self.tf, self.strategy

        @tf.function
        def step(iterator):
            ids, labels = next(iterator)
            return strategy.run(lambda i, y: self._replica_body(model, mode, i, y),
                                args=(ids, labels))

        return step

    def _given_batch_fn(self, model: dict[str, Any]):
        tf, strategy = self.tf, self.strategy

        @tf.function
        def step(ids, labels):
            return strategy.run(lambda i, y: self._replica_body(model, "full", i, y),
                                args=(ids, labels))

        return step

    def update_alone_fn(self, model: dict[str, Any]):
        """A function that applies the optimizer's per-variable sparse hook
        ``n`` times to shard 0 of the table, on its server, with a fixed
        gradient of about a step's share of rows (with repeats)."""
        tf, cfg = self.tf, self.cfg
        shard = model["table"].variables[0]
        opt = model["opt"]
        rows_per_server = max(1, cfg.batch * cfg.ids // cfg.ps)
        shard_rows = int(shard.shape[0])

        @tf.function
        def run(n):
            with tf.device(shard.device):
                u = tf.random.stateless_uniform([rows_per_server], [5, 6], dtype=tf.float64)
                indices = tf.cast(tf.floor(u * u * shard_rows), tf.int64)
                values = 1e-3 * tf.random.stateless_normal([rows_per_server, cfg.dim], [7, 8])
                apply_state = opt._prepare([shard])
                for _ in tf.range(n):
                    opt._resource_apply_sparse_duplicate_indices(values, shard, indices,
                                                                 apply_state=apply_state)
            return tf.constant(0)

        return run

    # -- the check ----------------------------------------------------------------

    def _gather(self, variable, idx):
        """``variable``'s rows ``idx``, gathered on its server from a read of
        the whole value (a ResourceGather would put the variable in
        copy-on-read mode, and change how later steps update it)."""
        tf = self.tf
        fn = self._gathers.get(id(variable))
        if fn is None:
            @tf.function
            def fn(i):
                with tf.device(variable.device):
                    return tf.gather(variable.read_value(), i)

            self._gathers[id(variable)] = fn
        return fn(idx).numpy()

    def _read_rows(self, model, rows):
        """The table's and its slots' values at ``rows`` (sorted global ids),
        gathered on their servers: {name: array [len(rows), dim]}."""
        np, tf = self.np, self.tf
        shards = model["table"].variables
        offsets = np.cumsum([0] + [int(s.shape[0]) for s in shards])
        out: dict[str, list] = {"var": []}
        for name in model["slot_names"]:
            out[name] = []
        for k, shard in enumerate(shards):
            local = rows[(rows >= offsets[k]) & (rows < offsets[k + 1])] - offsets[k]
            idx = tf.constant(local, tf.int64)
            out["var"].append(self._gather(shard, idx))
            for name in model["slot_names"]:
                out[name].append(self._gather(model["opt"].get_slot(shard, name), idx))
        return {k: np.concatenate(v).astype(np.float64) for k, v in out.items()}

    def _read_dense(self, model):
        np = self.np
        return [dict(var=v.numpy().astype(np.float64),
                     **{s: model["opt"].get_slot(v, s).numpy().astype(np.float64)
                        for s in model["slot_names"]}) for v in model["dense"]]

    def _rule(self, model, var, grad, slots, step):
        """The float64 reference of one update (tf_keras' legacy formulas: the
        forms its fused class sets)."""
        from fusedopt import reference as ref

        f = lambda x: float(self.np.float32(x))  # noqa: E731  (hyperparameters as float32)
        rule, to_registry = model["algorithm"], model["registry_slots"]
        defaults = ref.rule_defaults(rule)
        config = cases.PS_CONFIGS[rule]
        hp = {k: f(v) for k, v in config.items() if k in defaults}
        forms = {k: v for k, v in legacy_class(rule)._fused_call.flags.items()
                 if k in defaults}
        var, new = ref.apply_rule(rule, var, grad, {to_registry[k]: v for k, v in slots.items()},
                                  step=step, lr=f(config["learning_rate"]), **hp, **forms)
        return var, {k: new[to_registry[k]] for k in slots}

    @staticmethod
    def _compare(np, got, want, before) -> tuple[int, int, float]:
        """(bad, total, worst): values off by more than 1e-4 of the largest
        change in the array plus 2e-6 of their size. Deltas, not values, are
        compared: a lazy step moves a row by as little as ~1e-5."""
        moved = float(np.max(np.abs(want - before))) if want.size else 0.0
        err = np.abs(got - want)
        tol = 1e-4 * moved + 2e-6 * np.abs(want) + 1e-12
        worst = float(np.max(err / tol)) if want.size else 0.0
        return int(np.sum(err > tol)), int(want.size), worst

    def check(self, key: str, semantics: str) -> str:
        """One step on a known batch, against the float64 reference."""
        np, tf, cfg = self.np, self.tf, self.cfg
        model = self.models[key]
        rng = np.random.default_rng(cfg.seed + 99)
        ids = rng.integers(0, cfg.rows, (cfg.batch, cfg.ids))
        ids.flat[: ids.size // 8] = ids.flat[ids.size // 8: ids.size // 4]  # duplicates
        labels = (rng.random((cfg.batch, 1)) < 0.5).astype(np.float32)
        touched = np.unique(ids)
        others = np.setdiff1d(rng.choice(cfg.rows, min(cfg.rows, CHECK_UNTOUCHED + len(touched)),
                                         replace=False), touched)[:CHECK_UNTOUCHED]
        rows = np.union1d(touched, others)
        step = int(model["opt"].iterations.numpy()) + 1
        before = self._read_rows(model, rows)
        before_dense = self._read_dense(model)
        # The gradient in float64: the same forward pass on the chief.
        emb = tf.constant(before["var"])
        dense = [tf.constant(d["var"]) for d in before_dense]
        pos = np.searchsorted(rows, ids)
        with tf.GradientTape() as tape:
            tape.watch([emb] + dense)
            loss = self.forward(tf.gather(emb, pos), dense, tf.constant(labels, tf.float64))
        grads = tape.gradient(loss, [emb] + dense)
        g_rows = tf.convert_to_tensor(grads[0]).numpy()
        # The update each semantics asks for, on the compared rows.
        want = dict(var=before["var"].copy(), **{s: before[s].copy() for s in model["slot_names"]})
        if semantics == "lazy":
            sel = np.isin(rows, touched)
        else:  # exact: every row, the untouched ones with a zero gradient
            sel = np.ones(len(rows), bool)
        var, slots = self._rule(model, before["var"][sel], g_rows[sel],
                                {s: before[s][sel] for s in model["slot_names"]}, step)
        want["var"][sel] = var
        for s in model["slot_names"]:
            want[s][sel] = slots[s]
        # The scheduled step, on a worker.
        self.coordinator.schedule(self._given_batch_fn(model),
                                  args=(tf.constant(ids, tf.int64), tf.constant(labels)))
        self.coordinator.join()
        after = self._read_rows(model, rows)
        after_dense = self._read_dense(model)
        bad = total = 0
        worst = 0.0
        problems = []
        for name in want:
            b, t, w = self._compare(np, after[name], want[name], before[name])
            bad, total, worst = bad + b, total + t, max(worst, w)
            if b:
                problems.append(f"table {name}")
        for i, (d_before, d_after, g) in enumerate(zip(before_dense, after_dense, grads[1:])):
            var, slots = self._rule(model, d_before["var"], g.numpy(),
                                    {s: d_before[s] for s in model["slot_names"]}, step)
            for name, value in [("var", var), *slots.items()]:
                b, t, w = self._compare(np, d_after[name], value, d_before[name])
                bad, total, worst = bad + b, total + t, max(worst, w)
                if b:
                    problems.append(f"dense {i} {name}")
        if int(model["opt"].iterations.numpy()) != step:
            return f"WRONG: iterations {int(model['opt'].iterations.numpy())}, expected {step}"
        if bad:
            return (f"WRONG: {bad} of {total} values off ({', '.join(problems[:4])}; worst "
                    f"{worst:.1f}x the tolerance)")
        return "ok"

    # -- timing -----------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        tf, cfg = self.tf, self.cfg
        plan = contenders() + ([injected()] if cfg.inject_wrong else [])
        results: list[dict[str, Any]] = []
        timed: dict[str, Callable[[], float]] = {}
        for contender in plan:
            name, algorithm, semantics = contender.name, contender.rule, contender.semantics
            key = f"{algorithm}/{name}"
            _say(f"building {name} ({algorithm}): {cfg.rows:,} x {cfg.dim} table")
            model = self.build(key, contender)
            status = self.check(key, semantics) if cfg.check else "skipped"
            _say(f"check {name} ({algorithm}): {status}")
            results.append(dict(name=name, algorithm=algorithm, semantics=semantics, kind="step",
                                check=status, tensors=len(model["variables"]),
                                elements=int(sum(int(self.np.prod(v.shape))
                                                 for v in model["variables"]))))
            if status.startswith("WRONG"):
                continue
            timed[key] = self._scheduled(model["step"])
            update = self.update_alone_fn(model)
            update(tf.constant(1, tf.int64))  # (traced and run once before timing)
            split = f"split: update alone on ps:0, {name}"
            results.append(dict(name=split, algorithm=algorithm, semantics=semantics,
                                kind="split", check="n/a", tensors=1,
                                elements=int(self.np.prod(model["table"].variables[0].shape))))
            timed[f"{algorithm}/{split}"] = self._called(update)
        # The step's parts, on the first contender's model (the same shapes for all).
        base = self.models[f"{plan[0].rule}/{plan[0].name}"]
        for mode, label in [("empty", "split: empty closure"), ("lookup", "split: lookup only"),
                            ("no_update", "split: step without update")]:
            results.append(dict(name=label, algorithm="-", semantics="-", kind="split",
                                check="n/a", tensors=len(base["variables"]),
                                elements=int(sum(int(self.np.prod(v.shape))
                                                 for v in base["variables"]))))
            timed[f"-/{label}"] = self._scheduled(self._train_fn(base, mode))
        def progress(r: int, rounds: int, is_timed: bool) -> None:
            what = "timed" if is_timed else "warm-up"
            _say(f"round {r}/{rounds} ({what}): {len(timed)} contenders x {cfg.steps} steps")

        times = timing.rounds(timed, cfg.repeats, cfg.warmup, clock=timing.reported,
                              per=cfg.steps, on_round=progress)
        for res in results:
            res["seconds_per_step"] = times.get(f"{res['algorithm']}/{res['name']}")
        return dict(config=asdict(cfg), label=cfg.label, results=results)

    def _scheduled(self, fn) -> Callable[[], float]:
        """``steps`` scheduled calls of ``fn`` and a join; returns seconds."""
        coordinator, iterator, steps = self.coordinator, self.iterator, self.cfg.steps

        def go(n: int = steps) -> float:
            t0 = time.perf_counter()
            for _ in range(n):
                coordinator.schedule(fn, args=(iterator,))
            coordinator.join()
            return time.perf_counter() - t0

        go(1)  # (traced, and run once before any round)
        return go

    def _called(self, fn) -> Callable[[], float]:
        """``fn(steps)`` minus ``fn(0)`` (the remote call's own cost), in seconds."""
        n, zero = self.tf.constant(self.cfg.steps, self.tf.int64), self.tf.constant(0, self.tf.int64)

        def go() -> float:
            t0 = time.perf_counter()
            fn(n).numpy()
            t1 = time.perf_counter()
            fn(zero).numpy()
            return (t1 - t0) - (time.perf_counter() - t1)

        return go


def chief_main(spec: str) -> int:
    """The chief process: ``python -m fusedopt.bench --ps-chief JSON`` with
    JSON = {"cluster": cluster spec, "config": PSConfig fields, "out": results
    path} (started by run_cluster_benchmark)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    plan = json.loads(spec)
    config = PSConfig(**plan["config"])
    result = Chief(plan["cluster"], config).run()
    Path(plan["out"]).write_text(json.dumps(result, indent=1))
    return 0
