"""MultiWorkerMirroredStrategy with 2 worker processes on 127.0.0.1, and a
training process killed mid-run that resumes with BackupAndRestore.

Each run is a fresh Python process (a strategy and its cluster must be set up
before TensorFlow initializes); the processes write their final weights to
.npz files that the tests compare.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fusedopt.bench.ps import free_ports

WORKER = r'''
import json, os, signal, sys
import numpy as np
import tensorflow as tf

mode, out = sys.argv[1], sys.argv[2]
strategy = (tf.distribute.MultiWorkerMirroredStrategy() if mode.startswith("mw")
            else tf.distribute.get_strategy())
import keras
import fusedopt.keras as fk
import fusedopt.legacy as fl
import tf_keras
from sklearn.datasets import load_digits

x, y = load_digits(return_X_y=True)
x, y = (x[:1024] / 16).astype("float32"), y[:1024]
GLOBAL_BATCH = 64


def dataset():
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    opts = tf.data.Options()
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(opts)


def keras_model(opt=None):
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"),
                          keras.layers.Dense(10)])
    # No clipping by default: Keras 3 (and so fusedopt.keras) clips each
    # replica's gradient before the cross-replica sum, which two workers and
    # one process do not share; clip_after_aggregation=True clips the sum.
    m.compile(optimizer=opt or fk.Adam(0.01, weight_decay=0.004),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return m


def legacy_model():
    tf_keras.utils.set_random_seed(0)
    m = tf_keras.Sequential([tf_keras.layers.Dense(32, activation="relu", input_shape=(64,)),
                             tf_keras.layers.Dense(10)])
    m.compile(optimizer=fl.Adam(0.01, clipnorm=0.5),
              loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return m


def legacy_opt_vars(m):
    # By name: after a restore, tf_keras creates slots in another order.
    # (and names them without the optimizer's "Adam/" prefix).
    return [v.numpy() for v in sorted(m.optimizer.weights, key=lambda v: v.name.split("Adam/")[-1])]


def weights(m, opt_vars):
    return [np.asarray(v) for v in m.get_weights()] + [np.asarray(v) for v in opt_vars]


result = {}
def custom_loop(model, epochs=2):
    """Keras 3 under MultiWorkerMirroredStrategy, trained with strategy.run:
    Keras 3.15's own model.fit fails there for every optimizer (its
    _maybe_symbolic_build reduces a nested PerReplica batch eagerly)."""
    with strategy.scope():
        model.optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")

    @tf.function
    def train_step(xb, yb):
        def step(xb, yb):
            with tf.GradientTape() as tape:
                loss = loss_fn(yb, model(xb, training=True)) / GLOBAL_BATCH
            grads = tape.gradient(loss, model.trainable_variables)
            model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
        strategy.run(step, args=(xb, yb))

    for _ in range(epochs):
        for xb, yb in strategy.experimental_distribute_dataset(dataset()):
            train_step(xb, yb)


if mode in ("mwms", "single"):
    with strategy.scope():
        km = keras_model()
    custom_loop(km)
    with strategy.scope():
        lm = legacy_model()
    lm.fit(dataset(), epochs=2, verbose=0)  # tf_keras' model.fit
    # SGD is not invariant to the gradient's scale (Adam nearly is): a worker
    # that saw the whole batch instead of its half would show here.
    with strategy.scope():
        sm = keras_model(fk.SGD(0.1, momentum=0.9))
    custom_loop(sm)
    # global_clipnorm, with the clipping after the sum and by default.
    with strategy.scope():
        cm = keras_model(fk.Adam(0.01, global_clipnorm=0.2, clip_after_aggregation=True))
    custom_loop(cm)
    with strategy.scope():
        dm = keras_model(fk.Adam(0.01, global_clipnorm=0.2))
    custom_loop(dm)
    result["clipsum"] = weights(cm, [v.value for v in cm.optimizer.variables])
    result["clipdefault"] = weights(dm, [v.value for v in dm.optimizer.variables])
    result["keras"] = weights(km, [v.value for v in km.optimizer.variables])
    result["legacy"] = weights(lm, legacy_opt_vars(lm))
    result["sgd"] = weights(sm, [v.value for v in sm.optimizer.variables])
    result["replicas"] = [np.array(strategy.num_replicas_in_sync)]
elif mode in ("mw_fault", "mw_straight"):
    # tf_keras model.fit on 2 workers; with KILL=1 worker 1 is killed at the
    # start of epoch 3 (after the chief backed up epoch 2).
    class KillWorker(tf_keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
            if epoch == 2 and task == 1 and os.environ.get("KILL") == "1":
                os.kill(os.getpid(), signal.SIGKILL)

    with strategy.scope():
        lm = legacy_model()
    callbacks = [KillWorker()]
    if mode == "mw_fault":
        callbacks.append(tf_keras.callbacks.BackupAndRestore(sys.argv[3]))
    lm.fit(dataset(), epochs=4, verbose=0, callbacks=callbacks)
    result["legacy"] = weights(lm, legacy_opt_vars(lm))
else:  # "fault" (killed at the start of epoch 3 when KILL is set) or "straight"
    class Kill(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2 and os.environ.get("KILL") == "1":
                os.kill(os.getpid(), signal.SIGKILL)

    km = keras_model()
    callbacks = [Kill()]
    if mode == "fault":
        callbacks.append(keras.callbacks.BackupAndRestore(sys.argv[3]))
    km.fit(dataset(), epochs=4, verbose=0, callbacks=callbacks)
    result["keras"] = weights(km, [v.value for v in km.optimizer.variables])
np.savez(out, **{f"{k}_{i}": a for k, arrays in result.items() for i, a in enumerate(arrays)})
'''


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1", **extra)
    return env


def _load(path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    path = tmp_path_factory.mktemp("mw") / "worker.py"
    path.write_text(textwrap.dedent(WORKER))
    return path


def _start_workers(script, mode, out_dir, *extra, **env):
    """Two worker processes of one cluster on free 127.0.0.1 ports."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen(
            [sys.executable, str(script), mode, str(out_dir / f"worker{index}.npz"), *extra],
            env=_env(TF_CONFIG=tf_config, **env), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
    return procs


@pytest.fixture(scope="module")
def multiworker_results(script, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mw_out")
    procs = _start_workers(script, "mwms", tmp)
    single = subprocess.run([sys.executable, str(script), "single", str(tmp / "single.npz")],
                            env=_env(), capture_output=True, text=True, timeout=600)
    try:
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert single.returncode == 0, single.stderr[-3000:]
    return [_load(tmp / f"worker{i}.npz") for i in range(2)], _load(tmp / "single.npz")


@pytest.mark.parametrize("family", ["keras", "legacy", "sgd", "clipsum"])
def test_two_workers_end_identical_and_equal_to_one_process(multiworker_results, family):
    """("clipsum": fusedopt.keras.Adam with global_clipnorm and
    clip_after_aggregation=True.)"""
    (w0, w1), single = multiworker_results
    assert int(w0["replicas_0"]) == 2 and int(single["replicas_0"]) == 1
    keys = sorted(k for k in w0 if k.startswith(family + "_"))
    assert keys, "no weights written"
    for k in keys:
        np.testing.assert_array_equal(w0[k], w1[k], err_msg=f"workers differ in {k}")
        np.testing.assert_allclose(w0[k], single[k], rtol=1e-5, atol=1e-6,
                                   err_msg=f"2 workers vs 1 process differ in {k}")
    # Training happened: the weights moved from their initial values' scale.
    assert float(np.abs(w0[keys[-1]]).max()) > 0


def test_two_workers_clip_partial_gradients_by_default(multiworker_results):
    """Without clip_after_aggregation, global_clipnorm clips each worker's
    partial gradient (Keras' numbers): two workers end away from one process,
    where with it they end within the test above's tolerance."""
    (w0, w1), single = multiworker_results
    keys = sorted(k for k in w0 if k.startswith("clipdefault_"))
    assert keys
    for k in keys:
        np.testing.assert_array_equal(w0[k], w1[k], err_msg=k)
    assert max(float(np.abs(w0[k] - single[k]).max()) for k in keys) > 1e-3


def test_killed_run_resumes_with_backup_and_restore(script, tmp_path):
    backup = tmp_path / "backup"
    straight = subprocess.run([sys.executable, str(script), "straight", str(tmp_path / "s.npz")],
                              env=_env(), capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = subprocess.run(
        [sys.executable, str(script), "fault", str(tmp_path / "f.npz"), str(backup)],
        env=_env(KILL="1"), capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, (killed.returncode, killed.stderr[-3000:])
    assert not (tmp_path / "f.npz").exists()
    assert backup.exists()  # the backup of the finished epochs is there
    resumed = subprocess.run(
        [sys.executable, str(script), "fault", str(tmp_path / "f.npz"), str(backup)],
        env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = _load(tmp_path / "f.npz"), _load(tmp_path / "s.npz")
    assert sorted(a) == sorted(b)
    for k in a:  # weights, and every optimizer variable (iterations and slots)
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7, err_msg=k)


def test_killed_worker_resumes_with_backup_and_restore(script, tmp_path):
    """2 workers (tf_keras model.fit): worker 1 is SIGKILLed at the start of
    epoch 3; the cluster is restarted and resumes from the backup, ending with
    the weights and slots of an uninterrupted 2-worker run."""
    straight_dir, fault_dir, backup = tmp_path / "s", tmp_path / "f", tmp_path / "backup"
    straight_dir.mkdir(), fault_dir.mkdir()
    procs = _start_workers(script, "mw_straight", straight_dir)
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]

    procs = _start_workers(script, "mw_fault", fault_dir, str(backup), KILL="1")
    try:
        procs[1].wait(timeout=600)
        assert procs[1].returncode == -9, procs[1].stderr.read()[-3000:]
        # The surviving worker cannot finish alone: it fails or blocks in a
        # collective; a cluster restart is how BackupAndRestore recovers.
        try:
            procs[0].wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    finally:
        for p in procs:
            p.kill()
            p.communicate()
    assert not (fault_dir / "worker0.npz").exists() and backup.exists()

    procs = _start_workers(script, "mw_fault", fault_dir, str(backup))
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    resumed, straight = _load(fault_dir / "worker0.npz"), _load(straight_dir / "worker0.npz")
    other = _load(fault_dir / "worker1.npz")
    assert sorted(resumed) == sorted(straight) and resumed
    for k in resumed:
        np.testing.assert_array_equal(resumed[k], other[k], err_msg=k)
        np.testing.assert_allclose(resumed[k], straight[k], rtol=1e-6, atol=1e-7, err_msg=k)
