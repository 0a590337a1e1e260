"""fusedopt.legacy under tf.distribute.ParameterServerStrategy on a local
cluster of real processes (issue #33).

Workers and parameter servers are ``python -m fusedopt.server`` processes on
free 127.0.0.1 ports; the chief (the coordinator) is a fresh Python process
per scenario, because a process connects to one cluster for its lifetime (a
chief inside the pytest process would leave pytest's TensorFlow context tied to
servers that these tests kill). The chief writes what it trained to an .npz
file that the tests compare.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from fusedopt.bench.ps import cluster_env, free_ports

ROOT = Path(__file__).resolve().parents[1]

CHIEF = r'''
import json, sys
import numpy as np
import tensorflow as tf
import tf_keras
import fusedopt.ops
import fusedopt.legacy as fl
from fusedopt.legacy._parameter_server import ServerWithoutFusedoptError

mode, cluster, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
ROWS, DIM, IDS = 64, 8, 4

# Every fused op the optimizers build (while the chief traces the step):
# its type and device, and the devices of the variables and the kinds of
# gradients it was given.
RECORDS = []


def _recording(name):
    original = getattr(fusedopt.ops, name)

    def wrapper(variables, grads, *args, **kwargs):
        op = original(variables, grads, *args, **kwargs)
        RECORDS.append(dict(
            type=getattr(op, "type", None) or op.op.type, device=op.device,
            variables=[v.name for v in variables], var_devices=[v.device for v in variables],
            sparse=[type(g).__name__ == "IndexedSlices" for g in grads]))
        return op
    setattr(fusedopt.ops, name, wrapper)


for name in ("apply_adam", "apply_adagrad", "apply_ftrl", "apply_sgd"):
    _recording(name)


def make_strategy():
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster), task_type="chief", task_id=0, rpc_layer="grpc")
    # The table (64 x 8 float32, 2 KiB) is sharded over both servers; the
    # dense layers' variables (under 1 KiB) are not.
    partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
        min_shard_bytes=1024, max_shards=2)
    return tf.distribute.ParameterServerStrategy(resolver, variable_partitioner=partitioner)


def optimizer(name, fused):
    module = fl if fused else tf_keras.optimizers.legacy
    cfg = dict(Adagrad=dict(learning_rate=0.1),
               Ftrl=dict(learning_rate=0.1, l1_regularization_strength=0.001,
                         l2_regularization_strength=0.01),
               Adam=dict(learning_rate=0.01))[name]
    return getattr(module, name)(**cfg)


def build_model(strategy, opt):
    with strategy.scope():
        tf_keras.utils.set_random_seed(0)
        inp = tf_keras.Input((IDS,), dtype="int64")
        x = tf_keras.layers.Flatten()(tf_keras.layers.Embedding(ROWS, DIM)(inp))
        x = tf_keras.layers.Dense(4, activation="relu")(x)
        model = tf_keras.Model(inp, tf_keras.layers.Dense(1)(x))
        model.compile(optimizer=opt, loss="mse")
    return model


def data(seed=1, n=128):
    rng = np.random.default_rng(seed)
    # (16 x 4 ids from 64 rows per batch: duplicate rows within a batch)
    return rng.integers(0, ROWS, (n, IDS)), rng.standard_normal((n, 1)).astype("float32")


def dataset_fn(context):
    xs, ys = data()
    return tf.data.Dataset.from_tensor_slices((xs, ys)).batch(16).repeat()


def state(model, init):
    opt = model.optimizer
    return dict(
        init=init,
        weights=[w.numpy() for w in model.weights],
        names=[w.name.split("/", 1)[1] for w in model.weights],
        devices=[w.device for w in model.weights],
        slots=[w.numpy() for w in opt.weights[1:]],
        iterations=int(opt.iterations.numpy()))


def fit(name, fused):
    strategy = make_strategy()
    model = build_model(strategy, optimizer(name, fused))
    init = [w.numpy() for w in model.weights]
    model.fit(tf_keras.utils.experimental.DatasetCreator(dataset_fn), epochs=2,
              steps_per_epoch=4, verbose=0)
    return state(model, init)


def custom_loop(name, fused, steps=6):
    """A custom loop: ClusterCoordinator.schedule of a step on a per-worker
    dataset."""
    strategy = make_strategy()
    model = build_model(strategy, optimizer(name, fused))
    init = [w.numpy() for w in model.weights]
    coordinator = tf.distribute.experimental.coordinator.ClusterCoordinator(strategy)
    loss_fn = tf_keras.losses.MeanSquaredError(reduction="sum")

    @tf.function
    def step(iterator):
        def replica_step(batch):
            xb, yb = batch
            with tf.GradientTape() as tape:
                loss = loss_fn(yb, model(xb, training=True)) / 16.0
            grads = tape.gradient(loss, model.trainable_variables)
            model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
        strategy.run(replica_step, args=(next(iterator),))

    with strategy.scope():
        dataset = coordinator.create_per_worker_dataset(
            lambda: dataset_fn(None))
    iterator = iter(dataset)
    for _ in range(steps):
        coordinator.schedule(step, args=(iterator,))
    coordinator.join()
    return state(model, init)


result = {}


def put(prefix, s):
    for i, w in enumerate(s["weights"]):
        result[f"{prefix}/w{i}"] = w
    for i, w in enumerate(s["init"]):
        result[f"{prefix}/init{i}"] = w
    for i, w in enumerate(s["slots"]):
        result[f"{prefix}/s{i}"] = w
    result[f"{prefix}/iterations"] = np.array(s["iterations"])
    result[f"{prefix}/names"] = np.array(s["names"])
    result[f"{prefix}/devices"] = np.array(s["devices"])


if mode == "compare":
    import keras
    import fusedopt.keras as fk
    try:
        with make_strategy().scope():
            fk.Adam(0.01)
        result["keras3_error"] = np.array("")
    except NotImplementedError as e:
        result["keras3_error"] = np.array(str(e))
    for name in sys.argv[4].split(","):
        RECORDS.clear()
        put(f"{name}/fused", fit(name, True))
        result[f"{name}/records"] = np.array(json.dumps(RECORDS))
        put(f"{name}/builtin", fit(name, False))
    RECORDS.clear()
    put("loop/fused", custom_loop("Adagrad", True))
    result["loop/records"] = np.array(json.dumps(RECORDS))
    put("loop/builtin", custom_loop("Adagrad", False))
elif mode in ("two_workers", "worker_fault"):
    # Every step k adds integer gradients: the accumulators (initial 1.0) end
    # at 1 + the sum of the squared per-step row gradients exactly, in any
    # order of the steps, iff every step was applied exactly once.
    steps = int(sys.argv[4])
    strategy = make_strategy()
    coordinator = tf.distribute.experimental.coordinator.ClusterCoordinator(strategy)
    with strategy.scope():
        table = tf.Variable(tf.zeros([ROWS, DIM]), name="table")
        bias = tf.Variable(tf.zeros([DIM]), name="bias")
        opt = fl.Adagrad(learning_rate=0.01, initial_accumulator_value=1.0)
    variables = list(table.variables) + [bias]

    @tf.function
    def step(ids, weights):
        def replica_step(ids, weights):
            with tf.GradientTape() as tape:
                rows = tf.nn.embedding_lookup(table, ids)
                loss = tf.reduce_sum(rows * weights[:, None]) + tf.reduce_sum(
                    bias * tf.reduce_sum(weights))
            grads = tape.gradient(loss, variables)
            opt.apply_gradients(zip(grads, variables))
        strategy.run(replica_step, args=(ids, weights))

    plan = []
    for k in range(steps):
        ids = np.array([(7 * k + j * 5) % ROWS for j in range(6)] + [(3 * k) % ROWS], np.int64)
        weights = np.array([(k + j) % 3 + 1 for j in range(7)], np.float32)
        plan.append((ids, weights))
        coordinator.schedule(step, args=(tf.constant(ids), tf.constant(weights)))
        if mode == "worker_fault" and k == steps // 2 - 1:
            # Half the steps done; the test kills worker 1 and lets us go on:
            # the closures sent to it fail and the coordinator runs them on
            # worker 0.
            coordinator.join()
            print("HALF", flush=True)
            sys.stdin.readline()
    coordinator.join()
    result["shards"] = np.array(len(table.variables))
    result["shard_rows"] = np.array([int(s.shape[0]) for s in table.variables])
    result["shard_devices"] = np.array([s.device for s in table.variables])
    result["accumulators"] = np.concatenate(
        [opt.get_slot(s, "accumulator").numpy() for s in table.variables])
    result["bias_accumulator"] = opt.get_slot(bias, "accumulator").numpy()
    result["iterations"] = np.array(int(opt.iterations.numpy()))
    result["ids"] = np.stack([p[0] for p in plan])
    result["weights"] = np.stack([p[1] for p in plan])
    result["records"] = np.array(json.dumps(RECORDS))
elif mode in ("ps_save", "ps_restore"):
    # ps_save: 4 steps, a checkpoint, 2 more steps; the test kills ps:1, and
    # the next steps fail (a parameter server's failure ends the run).
    # ps_restore (a new cluster): the model and optimizer restored from the
    # checkpoint, slots included.
    name, directory = sys.argv[4], sys.argv[5]
    strategy = make_strategy()
    model = build_model(strategy, optimizer(name.split(":")[0], not name.endswith(":builtin")))
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)

    def train(steps):
        model.fit(tf_keras.utils.experimental.DatasetCreator(dataset_fn), epochs=1,
                  steps_per_epoch=steps, verbose=0)

    if mode == "ps_save":
        train(4)
        path = checkpoint.write(directory + "/ckpt")
        put("saved", state(model, []))
        train(2)
        put("later", state(model, []))
        print("SAVED", flush=True)
        sys.stdin.readline()
        try:
            train(2)
            result["error"] = np.array("")
        except Exception as e:  # the run must fail: a server is gone
            result["error"] = np.array(f"{type(e).__name__}: {str(e)[:300]}")
    else:
        with strategy.scope():
            model.optimizer._create_all_weights(model.trainable_variables)
        # (Not assert_consumed: tf_keras also records slots under the sharded
        # table itself, which no optimizer creates; its built-ins do the same.
        # Every shard's slots are restored, as compared below.)
        checkpoint.read(directory + "/ckpt").assert_existing_objects_matched()
        put("restored", state(model, []))
        train(2)
        put("resumed", state(model, []))
elif mode == "no_fusedopt":
    strategy = make_strategy()
    model = build_model(strategy, optimizer("Adagrad", True))
    try:
        model.fit(tf_keras.utils.experimental.DatasetCreator(dataset_fn), epochs=1,
                  steps_per_epoch=2, verbose=0)
        result["error"] = np.array("")
    except ServerWithoutFusedoptError as e:
        result["error"] = np.array(str(e))
        result["error_type"] = np.array(type(e).__name__)
np.savez(out, **result)
'''

# A server that has never loaded fusedopt's op library.
PLAIN_SERVER = r'''
import json, sys
import tensorflow as tf
cluster, job, index = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
server = tf.distribute.Server(tf.train.ClusterSpec(cluster), job_name=job, task_index=index)
print(f"plain server {job}:{index} serving", flush=True)
server.join()
'''

TIMEOUT = 240  # seconds, for one chief (a scenario takes ~10-40 s on 2 cores)


class Cluster:
    """A chief address and worker and ps server processes on 127.0.0.1."""

    def __init__(self, workers: int, ps: int, plain: tuple[str, ...] = ()):
        ports = iter(free_ports(1 + workers + ps))
        self.spec = {"chief": [f"127.0.0.1:{next(ports)}"],
                     "worker": [f"127.0.0.1:{next(ports)}" for _ in range(workers)],
                     "ps": [f"127.0.0.1:{next(ports)}" for _ in range(ps)]}
        self.procs: dict[str, subprocess.Popen] = {}
        try:
            for job in ("worker", "ps"):
                for i in range(len(self.spec[job])):
                    task = f"{job}:{i}"
                    if task in plain:
                        cmd = [sys.executable, "-c", PLAIN_SERVER, json.dumps(self.spec), job,
                               str(i)]
                    else:
                        cmd = [sys.executable, "-m", "fusedopt.server", "--cluster",
                               json.dumps(self.spec), "--task", task]
                    self.procs[task] = subprocess.Popen(
                        cmd, env=cluster_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                        text=True)
            self.banners = {task: self._banner(task, p) for task, p in self.procs.items()}
        except BaseException:
            self.close()
            raise

    def _banner(self, task: str, proc: subprocess.Popen) -> str:
        """The server's first line (it serves once printed)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise AssertionError(f"server {task} exited ({proc.poll()})")
            if "serving" in line:
                return line.strip()
        raise AssertionError(f"server {task} did not start within 60 s")

    def run_chief(self, script: Path, mode: str, out: Path, *args: str) -> dict[str, np.ndarray]:
        chief = subprocess.run(
            [sys.executable, str(script), mode, json.dumps(self.spec), str(out), *args],
            env=cluster_env(), capture_output=True, text=True, timeout=TIMEOUT)
        assert chief.returncode == 0, chief.stderr[-4000:]
        with np.load(out) as f:
            return {k: f[k] for k in f.files}

    def run_chief_killing(self, script: Path, mode: str, out: Path, *args: str, marker: str,
                          victim: str) -> str:
        """Runs a chief that prints `marker` and then waits for a line on its
        stdin; SIGKILLs the server `victim` ("worker:1") in between. Returns
        the chief's stderr (its exit status must be 0)."""
        chief = subprocess.Popen(
            [sys.executable, str(script), mode, json.dumps(self.spec), str(out), *args],
            env=cluster_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + TIMEOUT
            line = ""
            while marker not in line and time.monotonic() < deadline:
                line = chief.stdout.readline()
                if not line and chief.poll() is not None:
                    break
            assert marker in line, chief.stderr.read()[-4000:]
            proc = self.procs[victim]
            proc.kill()
            assert proc.wait(timeout=30) == -9
            _, err = chief.communicate("go\n", timeout=TIMEOUT)
            assert chief.returncode == 0, err[-4000:]
            return err
        finally:
            if chief.poll() is None:
                chief.kill()
                chief.communicate()

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
        for p in self.procs.values():
            p.wait(timeout=30)
            p.stdout.close()


@pytest.fixture(scope="module")
def chief_script(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ps") / "chief.py"
    path.write_text(textwrap.dedent(CHIEF))
    return path


def _cluster_run(chief_script: Path, out: Path, workers: int, mode: str, *args: str,
                 plain: tuple[str, ...] = ()) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    cluster = Cluster(workers=workers, ps=2, plain=plain)
    try:
        return cluster.run_chief(chief_script, mode, out, *args), cluster.banners
    finally:
        cluster.close()


COMPARED = ["Adagrad", "Ftrl", "Adam"]


@pytest.fixture(scope="module")
def one_worker(chief_script, tmp_path_factory):
    out = tmp_path_factory.mktemp("ps_out") / "compare.npz"
    return _cluster_run(chief_script, out, 1, "compare", ",".join(COMPARED))


def _assert_same_state(r: dict[str, np.ndarray], prefix: str) -> None:
    fused = sorted(k for k in r if k.startswith(prefix + "/fused/"))
    assert fused, "no state written"
    for k in fused:
        b = k.replace("/fused/", "/builtin/")
        assert r[k].dtype == r[b].dtype and r[k].shape == r[b].shape, k
        np.testing.assert_array_equal(r[k], r[b], err_msg=f"fused and built-in differ in {k}")


# Classes whose default sparse update is tf_keras' own op, which the sparse
# kernels do not reproduce bit for bit (Ftrl: Eigen's per-row powers and
# square roots; docs/parity.md): their table shards take that op on their
# servers, the dense variables the fused kernels.
BUILTIN_SPARSE_BY_DEFAULT = {"Ftrl"}


def _assert_placed_on_servers(r: dict[str, np.ndarray], prefix: str) -> None:
    """The fused ops ran on the ps task holding their variables; the two
    table shards on two servers, each through a sparse kernel (or, for the
    classes in BUILTIN_SPARSE_BY_DEFAULT, not through a fused op at all)."""
    fused_tables = prefix not in BUILTIN_SPARSE_BY_DEFAULT
    records = json.loads(str(r[f"{prefix}/records"]))
    names, devices = list(r[f"{prefix}/fused/names"]), list(r[f"{prefix}/fused/devices"])
    shards = [d for n, d in zip(names, devices) if "embeddings/part_" in n]
    assert len(shards) == 2 and len(set(shards)) == 2, (names, devices)
    assert all(d.startswith("/job:ps/") for d in devices), devices
    assert records, "no fused op was built"
    sparse_seen = set()
    for rec in records:
        assert rec["type"].startswith("Fusedopt>"), rec
        assert rec["device"].startswith("/job:ps/"), rec
        assert set(rec["var_devices"]) == {rec["device"]}, rec
        for v, d, sparse in zip(rec["variables"], rec["var_devices"], rec["sparse"]):
            is_table = "embeddings/part_" in v
            assert sparse == is_table, rec  # the tables never densified
            assert rec["type"].startswith("Fusedopt>SparseApply") == sparse, rec
            if is_table:
                sparse_seen.add(d)
    assert sparse_seen == (set(shards) if fused_tables else set()), (sparse_seen, shards)


@pytest.mark.parametrize("name", COMPARED)
def test_one_worker_fit_equals_builtin_bit_for_bit(one_worker, name):
    """model.fit (DatasetCreator, steps_per_epoch) with one worker and a
    table sharded over two servers: weights, slots and iterations are
    tf_keras' built-in's under the same strategy, bit for bit."""
    r, _ = one_worker
    _assert_placed_on_servers(r, name)
    assert int(r[f"{name}/fused/iterations"]) == 8
    assert list(r[f"{name}/fused/devices"]) == list(r[f"{name}/builtin/devices"])
    # The updates moved both shards of the table (a test that cannot fail is a
    # defect).
    for i in (0, 1):
        assert not np.array_equal(r[f"{name}/fused/w{i}"], r[f"{name}/fused/init{i}"])
    _assert_same_state(r, name)


def test_one_worker_custom_loop_equals_builtin_bit_for_bit(one_worker):
    """A custom loop with ClusterCoordinator.schedule."""
    r, _ = one_worker
    _assert_placed_on_servers(r, "loop")
    assert int(r["loop/fused/iterations"]) == 6
    assert not np.array_equal(r["loop/fused/w0"], r["loop/fused/init0"])
    _assert_same_state(r, "loop")


def test_servers_say_where_they_serve(one_worker):
    _, banners = one_worker
    assert set(banners) == {"worker:0", "ps:0", "ps:1"}
    for task, line in banners.items():
        job, index = task.split(":")
        assert f"/job:{job}/replica:0/task:{index} serving on 127.0.0.1:" in line, line
        assert "_fusedopt_ops.so" in line, line


def test_two_workers_apply_every_step_exactly_once(chief_script, tmp_path):
    steps = 24
    r, _ = _cluster_run(chief_script, tmp_path / "two.npz", 2, "two_workers", str(steps))
    _assert_exactly_once(r, steps)


def _assert_exactly_once(r: dict[str, np.ndarray], steps: int) -> None:
    assert int(r["iterations"]) == steps
    assert int(r["shards"]) == 2 and len(set(r["shard_devices"])) == 2
    expected = np.ones((64, 8), np.float64)
    bias = np.ones(8, np.float64)
    for ids, weights in zip(r["ids"], r["weights"]):
        row_grad = np.zeros(64)
        np.add.at(row_grad, ids, weights)  # duplicates summed within a step
        expected += (row_grad ** 2)[:, None]
        bias += float(weights.sum()) ** 2
    np.testing.assert_array_equal(r["accumulators"], expected.astype(np.float32))
    np.testing.assert_array_equal(r["bias_accumulator"], bias.astype(np.float32))
    records = json.loads(str(r["records"]))
    assert {rec["type"] for rec in records} == {"Fusedopt>SparseApplyAdagrad",
                                                "Fusedopt>ApplyAdagrad"}, records


def test_killed_worker_coordinator_finishes_every_step_once(chief_script, tmp_path):
    """Worker 1 is SIGKILLed between steps (after the first half): the
    coordinator gives the closures that fail on it to worker 0, and the run
    ends with every step applied exactly once."""
    steps = 16
    cluster = Cluster(workers=2, ps=2)
    out = tmp_path / "fault.npz"
    try:
        err = cluster.run_chief_killing(chief_script, "worker_fault", out, str(steps),
                                        marker="HALF", victim="worker:1")
        # The coordinator did see worker 1 fail (a closure went to it and was
        # put back), so the retry was exercised.
        assert "Worker /job:worker/replica:0/task:1 failed" in err, err[-4000:]
    finally:
        cluster.close()
    with np.load(out) as f:
        _assert_exactly_once({k: f[k] for k in f.files}, steps)


def test_killed_parameter_server_resumes_from_checkpoint(chief_script, tmp_path):
    """ps:1 is SIGKILLed after a checkpoint: the run fails; a new cluster
    restores weights, slots and iterations equal to the checkpoint, and two
    more steps from there give the interrupted run's state after them."""
    directory = tmp_path / "ckpt"
    cluster = Cluster(workers=1, ps=2)
    out = tmp_path / "save.npz"
    try:
        cluster.run_chief_killing(chief_script, "ps_save", out, "Adagrad", str(directory),
                                  marker="SAVED", victim="ps:1")
    finally:
        cluster.close()
    with np.load(out) as f:
        saved = {k: f[k] for k in f.files}
    assert str(saved["error"]), "the run went on without ps:1"
    restored, _ = _cluster_run(chief_script, tmp_path / "restore.npz", 1, "ps_restore",
                               "Adagrad", str(directory))
    keys = sorted(k.split("/", 1)[1] for k in saved if k.startswith("saved/"))
    assert any(k.startswith("s") for k in keys) and "iterations" in keys
    for k in keys:
        if k in ("names", "devices"):
            continue
        np.testing.assert_array_equal(restored["restored/" + k], saved["saved/" + k],
                                      err_msg=f"restored {k} differs from the checkpoint")
        np.testing.assert_array_equal(restored["resumed/" + k], saved["later/" + k],
                                      err_msg=f"resumed {k} differs from the run's")


def test_server_without_fusedopt_is_named_with_the_fix(chief_script, tmp_path):
    r, _ = _cluster_run(chief_script, tmp_path / "plain.npz", 1, "no_fusedopt",
                        plain=("ps:1",))
    message = str(r["error"])
    assert "/job:ps/replica:0/task:1" in message, message
    assert "does not have fusedopt's op library loaded" in message
    assert "fusedopt-server" in message


def test_keras3_refuses_parameter_server_strategy(one_worker):
    r, _ = one_worker
    message = str(r["keras3_error"])
    assert "Keras 3 does not support" in message and "fusedopt.legacy" in message, message


def test_server_console_script_is_declared():
    tomllib = pytest.importorskip("tomllib")  # (Python 3.11+)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["fusedopt-server"] == "fusedopt.server:main"
    import fusedopt.server

    assert callable(fusedopt.server.main)


def test_server_arguments():
    from fusedopt import server

    assert server.parse_cluster("worker=a:1 ps=b:2,c:3") == {"worker": ["a:1"],
                                                            "ps": ["b:2", "c:3"]}
    assert server.parse_cluster(['{"ps": ["b:2"]}']) == {"ps": ["b:2"]}
    assert server.parse_task("ps:1") == ("ps", 1)
    with pytest.raises(ValueError, match="job:index"):
        server.parse_task("ps")
    with pytest.raises(ValueError, match="twice"):
        server.parse_cluster("ps=a:1 ps=b:2")
    args = server._parser().parse_args([])
    tf_config = json.dumps({"cluster": {"ps": ["a:1", "b:2"]}, "task": {"type": "ps",
                                                                         "index": 1}})
    assert server.server_config(args, {"TF_CONFIG": tf_config}) == (
        {"ps": ["a:1", "b:2"]}, "ps", 1)
    with pytest.raises(ValueError, match="has 2 task"):
        server.server_config(server._parser().parse_args(["--task", "ps:2"]),
                             {"TF_CONFIG": tf_config})
    with pytest.raises(ValueError, match="no cluster"):
        server.server_config(args, {})
    # Run as a program without a cluster: exit status 2 and the reason.
    done = subprocess.run([sys.executable, "-m", "fusedopt.server"], env=cluster_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "no cluster" in done.stderr, done.stderr
