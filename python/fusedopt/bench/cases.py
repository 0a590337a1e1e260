"""What the benchmark times, by suite: each rule's choices
(``fusedopt.reference.RULES[rule].bench``, a fusedopt.reference.BenchCases:
its configurations, TensorFlow's training ops and torch.optim's counterparts)
collected into one table per suite, in the registry's order.

Everything else about a rule the suites derive: its slots and step from the
registry (fusedopt.bench.rules), its float64 reference and default
hyperparameters from fusedopt.reference.RULES, its Keras and tf_keras classes
and the attribute of each slot from the fusedopt.keras and fusedopt.legacy
classes (each declares the rule it runs), its bytes per element from its
slots. A rule whose entry chooses nothing for a suite is skipped there with a
generic reason; a registry rule that fusedopt.reference does not know fails
every suite (fusedopt.bench.rules.require_known).

This module names no rule; it imports neither TensorFlow nor the op library
(the gpu suite runs without them).
"""

from __future__ import annotations

from dataclasses import dataclass

from fusedopt import reference as ref
from fusedopt.reference import LowBitOptim, TorchOptim, TrainingOp

# ---- the table suites (sizes, many, models, sparse, fit) --------------------------------


@dataclass(frozen=True)
class TableCase:
    """A rule in the table suites: the Keras optimizer's constructor
    arguments (every contender computes the same rule with them)."""

    config: dict
    notes: str = ""


# In the order of the tables and of --algorithms all.
TABLE: dict[str, TableCase] = {
    rule: TableCase(dict(r.bench.keras), notes=r.bench.notes)
    for rule, r in ref.RULES.items() if r.bench.keras is not None}

_featured = [rule for rule, r in ref.RULES.items() if r.bench.featured]
if len(_featured) != 1:
    raise ValueError(f"fusedopt.reference.RULES must mark one rule's bench cases featured, not "
                     f"{_featured or 'none'}")
# The table suites' default --algorithms; the rule of the sparse suite (one
# embedding table, exact and lazy), of the fit suite, of the focused
# keras-apply and multi suites (whose analysis is docs/benchmarks.md).
DEFAULT_ALGORITHM = SPARSE_RULE = FIT_RULE = KERAS_APPLY_RULE = MULTI_RULE = _featured[0]


# ---- TensorFlow's own training ops (the "tf.raw_ops" contenders) --------------------------


def raw_op(rule: str, slots) -> TrainingOp | None:
    """TensorFlow's training op for ``rule`` over exactly ``slots``, if any."""
    return next((op for op in ref.RULES[rule].bench.training_ops
                 if set(op.slots.values()) == set(slots)), None)


# ---- the dense suite ----------------------------------------------------------------------


@dataclass(frozen=True)
class DenseCase:
    """A row of the dense suite: the fused op's arguments besides the
    variable, gradient, slots and step (``lr`` included), the slots it uses
    and those drawn positive (second moments, accumulators)."""

    rule: str
    label: str
    hparams: dict
    slots: tuple[str, ...]
    positive: tuple[str, ...] = ()


DENSE_STEP = 10  # the step of the bias-corrected rules
DENSE: list[DenseCase] = [
    DenseCase(rule, c.label, dict(c.hparams), tuple(c.slots),
              tuple(s for s in c.slots if s in r.positive))
    for rule, r in ref.RULES.items() for c in r.bench.dense]


def positive_slots(rule: str) -> set[str]:
    """The slots of ``rule`` that hold positive values (drawn positive)."""
    return set(ref.RULES[rule].positive)


# ---- the gpu suite ------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuCase:
    """A rule of the gpu suite: ``fusedopt._native.apply``'s hyperparameters
    (as given) and the slots it uses; ``name`` is its row's rule and its
    --algorithms name."""

    name: str
    rule: str
    hparams: dict
    slots: tuple[str, ...]
    torch: TorchOptim | None = None
    low_bit: tuple[LowBitOptim, ...] = ()  # third-party 8-bit-state optimizers of it


GPU: list[GpuCase] = [
    GpuCase(c.label, rule, dict(c.hparams), tuple(c.slots), c.torch, tuple(c.low_bit))
    for rule, r in ref.RULES.items() for c in r.bench.gpu]
# The gpu suite's low-precision state rows: the featured rule's first gpu case.
GPU_STATE: GpuCase | None = next((c for c in GPU if c.rule == DEFAULT_ALGORITHM), None)


# ---- the ps suite -------------------------------------------------------------------------

# The tf_keras constructor arguments of each rule the ps suite times (its
# contenders: fusedopt.bench.ps.contenders()).
PS_CONFIGS: dict[str, dict] = {
    rule: dict(r.bench.ps) for rule, r in ref.RULES.items() if r.bench.ps is not None}
