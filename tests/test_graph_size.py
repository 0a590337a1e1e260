"""The graph a fused step adds (issue #32, Note [one check per kind] in
fusedopt/_atomic.py): it grows with the number of variables no faster than the
built-in's, and holds no duplicated op.

A *duplicate* is a stateless op whose type, device, data inputs, control
inputs and attributes (a constant's value included; the colocation attribute
``_class`` aside) equal an earlier op's: what Grappler's common-subexpression
elimination would fold. Stateful ops (variable reads, assignments,
assertions) are never duplicates: running one twice is not running it once.

tf_keras' own graph has duplicates: its ``_prepare_local`` builds ``1 - x``
with a new constant 1 each time, once per (device, dtype), and its sparse
updates rebuild their slicing constants per variable. The fused classes
inherit the first and, where they run the built-in's sparse ops, the second.
So the test asks: where the fused kernels run, no duplicate per variable
(their number does not grow with N); the step's checks have none at all; and
never more than the built-in's graph has. (The few left are constants equal
to one of tf_keras' ``_prepare_local``: the fused op's ``grad_scale`` 1.0,
the step's ``iterations + 1``.)
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

tf_keras = pytest.importorskip("tf_keras")

import fusedopt.keras as fk  # noqa: E402
import fusedopt.legacy as fl  # noqa: E402
from tf_keras.optimizers import legacy as L  # noqa: E402


def duplicates(ops) -> list[str]:
    """The ops among ``ops`` that duplicate an earlier one (see the module doc)."""
    seen: dict[tuple, str] = {}
    out = []
    for op in ops:
        if op.op_def is None or op.op_def.is_stateful or op.type == "Placeholder":
            continue  # (a function's arguments are distinct values too)
        attrs = tuple(sorted((k, v.SerializeToString()) for k, v in op.node_def.attr.items()
                             if k != "_class"))
        key = (op.type, op.device, tuple(t.name for t in op.inputs),
               tuple(sorted(c.name for c in op.control_inputs)), attrs)
        if key in seen:
            out.append(f"{op.name} ({op.type}) duplicates {seen[key]}")
        else:
            seen[key] = op.name
    return out


def legacy_step_ops(make_opt, n_sparse: int, n_dense: int = 2, sparse_dtype=tf.float32):
    """The ops one apply_gradients adds to a TF1 graph (slots made before):
    ``n_sparse`` embedding tables with IndexedSlices gradients, ``n_dense``
    dense variables (one of them float64: three groups)."""
    with tf.Graph().as_default() as graph:
        tables = [tf.Variable(tf.ones([30, 4], sparse_dtype), name=f"emb{i}")
                  for i in range(n_sparse)]
        dense = [tf.Variable(tf.ones([5], tf.float64 if i % 2 else tf.float32), name=f"w{i}")
                 for i in range(n_dense)]
        grads = [tf.IndexedSlices(tf.ones([3, 4], sparse_dtype) * float(i + 1),
                                  tf.constant([0, 7, 0]), tf.constant([30, 4]))
                 for i in range(n_sparse)]
        grads += [tf.ones_like(v) for v in dense]
        opt = make_opt()
        opt._create_all_weights(tables + dense)
        before = set(graph.get_operations())
        opt.apply_gradients(zip(grads, tables + dense))
        return [op for op in graph.get_operations() if op not in before]


LEGACY = [("Adam", {}), ("Adam", dict(amsgrad=True)), ("SGD", dict(momentum=0.9)), ("SGD", {}),
          ("Adagrad", {}), ("RMSprop", {}), ("RMSprop", dict(momentum=0.5)), ("Nadam", {}),
          ("Adamax", {}), ("Adadelta", {}), ("Ftrl", {})]
# Whose default sparse update runs the fused kernels (the others run tf_keras'
# own sparse op per variable, with its per-variable constants).
FUSED_SPARSE = {("Adam", ()), ("Adam", (("amsgrad", True),)), ("SGD", (("momentum", 0.9),)),
                ("Adagrad", ()), ("RMSprop", ()), ("Adamax", ())}
CHECK_TYPES = {"Assert", "All", "LogicalAnd", "Less", "GreaterEqual", "ConcatV2", "Equal"}


@pytest.mark.parametrize("name,cfg", LEGACY,
                         ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in c.items()) or 'default'}"
                              for n, c in LEGACY])
def test_legacy_step_graph_grows_no_faster_and_has_no_duplicates(name, cfg):
    small, large = 2, 12
    fused = {n: legacy_step_ops(lambda: getattr(fl, name)(**cfg), n) for n in (small, large)}
    builtin = {n: legacy_step_ops(lambda: getattr(L, name)(**cfg), n) for n in (small, large)}
    per_var_fused = (len(fused[large]) - len(fused[small])) / (large - small)
    per_var_builtin = (len(builtin[large]) - len(builtin[small])) / (large - small)
    assert per_var_fused <= per_var_builtin, (per_var_fused, per_var_builtin)
    dups = {n: duplicates(fused[n]) for n in (small, large)}
    builtin_dups = {n: duplicates(builtin[n]) for n in (small, large)}
    assert len(dups[large]) - len(dups[small]) <= (
        len(builtin_dups[large]) - len(builtin_dups[small]))
    if (name, tuple(sorted(cfg.items()))) in FUSED_SPARSE:
        assert dups[large] == dups[small], dups[large]  # none per variable
    by_name = {op.name: op for op in fused[large]}
    assert not [d for d in dups[large] if by_name[d.split(" ")[0]].type in CHECK_TYPES]


def test_the_issue_case_fifty_embeddings():
    """50 embedding tables and dense variables in one step: 301 of 6687 ops
    were duplicates (the per-variable checks)."""
    ops = legacy_step_ops(fl.Adam, 50)
    builtin = legacy_step_ops(L.Adam, 50)
    assert len(duplicates(ops)) <= 10 < len(duplicates(builtin))
    assert duplicates(ops) == duplicates(legacy_step_ops(fl.Adam, 2))
    assert len(ops) < len(builtin)


def test_duplicates_finds_what_it_should():
    with tf.Graph().as_default() as graph:
        x = tf.constant(1.0)
        tf.constant(2.0), tf.constant(2.0)
        tf.math.add(x, x), tf.math.add(x, x)
        v = tf.Variable(5.0)
        v.read_value(), v.read_value()  # stateful: not duplicates
    assert len(duplicates(graph.get_operations())) == 2


def keras_step_ops(cls, n_sparse: int, **kwargs):
    """The ops of one traced Keras step (the optimizer built before)."""
    tables = [tf.Variable(tf.ones([30, 4]), name=f"emb{i}") for i in range(n_sparse)]
    dense = [tf.Variable(tf.ones([5]), name="w0"), tf.Variable(tf.ones([3, 2]), name="w1")]
    variables = tables + dense
    opt = cls(**kwargs)
    opt.build(variables)
    if "weight_decay" in kwargs:
        opt.exclude_from_weight_decay(var_list=[dense[0]])

    @tf.function
    def step(values):
        indices, dense_shape = tf.constant([0, 7, 0]), tf.constant([30, 4])
        grads = [tf.IndexedSlices(values[i], indices, dense_shape) for i in range(n_sparse)]
        grads += [tf.ones_like(v) for v in dense]
        opt.apply(grads, variables)

    values = [tf.ones([3, 4]) * float(i + 1) for i in range(n_sparse)]
    graph = step.get_concrete_function(values).graph
    return graph.get_operations()


@pytest.mark.parametrize("name,kwargs", [("Adam", {}), ("AdamW", dict(weight_decay=0.01)),
                                         ("SGD", dict(momentum=0.9)), ("Adagrad", {})])
def test_keras_step_graph_grows_no_faster_and_has_no_duplicates(name, kwargs):
    small, large = 2, 10
    fused = {n: keras_step_ops(getattr(fk, name), n, **kwargs) for n in (small, large)}
    builtin = {n: keras_step_ops(getattr(keras.optimizers, name), n, **kwargs)
               for n in (small, large)}
    per_var_fused = (len(fused[large]) - len(fused[small])) / (large - small)
    per_var_builtin = (len(builtin[large]) - len(builtin[small])) / (large - small)
    assert per_var_fused <= per_var_builtin, (per_var_fused, per_var_builtin)
    fused_dups = duplicates(fused[large])
    assert len(fused_dups) <= len(duplicates(builtin[large])), fused_dups
    assert fused_dups == duplicates(fused[small])  # none per variable


def test_keras_checks_have_no_duplicates_with_many_groups():
    """The step's checks (several groups: dense, sparse, weight decay or not)
    build each constant once and one assertion per (device, row count)."""
    ops = keras_step_ops(fk.AdamW, 12, weight_decay=0.01)
    asserts = [op for op in ops if op.type == "Assert"]
    assert len(asserts) == 1  # 12 tables of 30 rows: one range check
    assert not [d for d in duplicates(ops) if "Const" in d or "Assert" in d]
