"""What the table suites (sizes, many, models, sparse, fit) know about each
rule, keyed by its registry name (fusedopt.bench.rules): its Keras classes, a
configuration on which every contender computes the same rule, which of the
registry's slots that configuration uses and the Keras attribute holding each,
the tf.raw_ops loop (where TensorFlow has the rule) and the float64 reference
step used by --check. The configuration is the rule's choice
(fusedopt.reference.RULES[rule].bench.keras, collected in
fusedopt.bench.cases.TABLE); the rest is derived: the classes from the
fusedopt.keras class that runs the rule (its FusedCall), the slots from the
conditions of its FusedCall, the reference and its default hyperparameters
from fusedopt.reference.RULES, TensorFlow's op from the rule's training ops
(fusedopt.bench.cases.raw_op). A rule without a configuration is skipped; a
registry rule fusedopt.reference does not know fails the import."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable

import numpy as np
import tensorflow as tf

import fusedopt.keras as fk
from fusedopt import reference as ref
from fusedopt.bench import cases
from fusedopt.bench.rules import Skip, check_slots, registry, require_known


@dataclass
class Algorithm:
    name: str  # the registry's name
    fused_cls: type
    keras_cls: type
    config: dict
    # The registry slots this configuration uses -> the Keras optimizer
    # attribute holding each one's list (in the registry's op order).
    slot_attrs: dict[str, str]
    # reference(var, grad, slots(dict registry slot -> array), lr, step) -> (var, slots)
    reference: Callable
    # raw(var, slots(list of tf.Variable), grad, lr, step) -> op, lr a scalar tensor of the
    # variable's dtype; None if TF has no raw op
    raw: Callable | None = None
    # Element accesses beyond one read and write of var and each slot and one
    # read of grad (a whole-tensor rule's second pass reads var and every slot
    # again: fusedopt.reference.Reference.whole_tensor).
    extra_accesses: int = 0
    notes: str = ""
    extra: dict = field(default_factory=dict)
    # The rule's scalars but the learning rate, by registry name, as the
    # configuration sets them (the reference's defaults elsewhere).
    hparams: dict = field(default_factory=dict)

    @property
    def slot_names(self) -> list[str]:
        return list(self.slot_attrs)

    @property
    def slots(self) -> list[str]:
        """The Keras attributes of the slots, in op order."""
        return list(self.slot_attrs.values())

    @property
    def bytes_per_element(self) -> int:
        """float32 bytes per element (reads + writes)."""
        return 4 * (2 * (1 + len(self.slot_attrs)) + 1 + self.extra_accesses)

    @property
    def step(self) -> bool:
        return registry()[self.name].step


def _f32(x):
    return float(np.float32(x))


def fused_class(rule: str) -> type | None:
    """The first fusedopt.keras class whose FusedCall runs ``rule``."""
    for name in fk.__all__:
        call = getattr(getattr(fk, name), "_fused_call", None)
        if call is not None and call.rule == rule:
            return getattr(fk, name)
    return None


def _slot_attrs(cls: type, config: dict) -> dict[str, str]:
    """The registry slots a configuration of ``cls`` uses -> the Keras
    attribute of each (its FusedCall's, whose conditions see the built-in's
    constructor defaults updated by ``config``)."""
    init = inspect.signature(cls._fused_builtin().__init__).parameters.values()
    opt = SimpleNamespace(**{**{p.name: p.default for p in init
                                if p.default is not inspect.Parameter.empty}, **config})
    out = {}
    for slot, source in cls._fused_call.slots.items():
        attr, condition = source if isinstance(source, tuple) else (source, None)
        if condition is None or condition(opt):
            out[slot] = attr
    return out


def _hyperparameters(rule: str, cls: type, config: dict) -> dict[str, float]:
    """The rule's scalars but the learning rate, by registry name: the
    reference's defaults, updated by ``config`` (Keras' names, through the
    class's FusedCall)."""
    scalars = set(registry()[rule].scalars) - {"lr"}
    out = {k: v for k, v in ref.rule_defaults(rule).items() if k in scalars}
    by_attr = {attr: op for op, attr in cls._fused_call.hypers.items() if isinstance(attr, str)}
    out.update({by_attr.get(k, k): v for k, v in config.items()
                if by_attr.get(k, k) in scalars})
    return out


def _algorithm(rule: str, case: cases.TableCase) -> Algorithm | Skip:
    cls = fused_class(rule)
    if cls is None:
        return Skip("no fusedopt.keras class runs it as its one op call")
    slot_attrs = _slot_attrs(cls, case.config)
    hp = _hyperparameters(rule, cls, case.config)
    f32_hp = {k: _f32(v) for k, v in hp.items()}

    # reference(var, grad, slots(dict registry slot -> array), lr, step) -> (var, slots)
    def reference(var, g, s, lr, t):
        var, slots = ref.apply_rule(rule, var, g, s, step=t, lr=lr, **f32_hp)
        return var, {k: slots[k] for k in s}

    raw = None
    op = cases.raw_op(rule, slot_attrs)
    if op is not None:
        slot_names = list(slot_attrs)

        def raw(var, slots, g, lr, t):
            # TF's training ops take var, lr and every other scalar as one
            # type T (no float32 scalars with a float64 or float16 var): each
            # scalar in lr's dtype, the variable's, with the value the
            # reference takes (rounded to float32, as Keras' learning rate).
            dtype = lr.dtype

            def c(k):
                return tf.constant(f32_hp[k], dtype)

            return op.call(tf.raw_ops, var.handle, g,
                           {k: v.handle for k, v in zip(slot_names, slots)},
                           scalar=lambda k: lr if k == "lr" else c(k),
                           power=lambda k: tf.pow(c(k), tf.cast(t, dtype)))

    whole = ref.RULES[rule].whole_tensor
    return Algorithm(rule, cls, cls._fused_builtin(), dict(case.config), slot_attrs, reference,
                     raw, extra_accesses=1 + len(slot_attrs) if whole else 0, notes=case.notes,
                     hparams=hp)


require_known(dict.fromkeys(ref.RULES), "fusedopt.reference.RULES")
_TABLE: dict[str, Algorithm | Skip] = {
    rule: _algorithm(rule, cases.TABLE[rule]) if rule in cases.TABLE
    else Skip("not chosen for the table suites (no bench.keras in fusedopt.reference.RULES)")
    for rule in ref.RULES
}
require_known(_TABLE, "fusedopt.bench.algorithms")
for _a in _TABLE.values():
    if isinstance(_a, Algorithm):
        check_slots(_a.name, _a.slot_attrs, f"fusedopt.bench.algorithms[{_a.name!r}]")

# The rules the table suites time, in the table's order.
ALGORITHMS: dict[str, Algorithm] = {k: a for k, a in _TABLE.items() if isinstance(a, Algorithm)}
SKIPPED: dict[str, Skip] = {k: a for k, a in _TABLE.items() if isinstance(a, Skip)}
