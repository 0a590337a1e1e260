"""What the benchmark times, by registry rule: its choices, in one table per
suite, and the other implementations it compares with.

Everything else about a rule the suites derive: its slots and step from the
registry (fusedopt.bench.rules), its float64 reference and default
hyperparameters from fusedopt.reference.RULES, its Keras classes and the Keras
attribute of each slot from the fusedopt.keras classes (each declares the
rule it runs), its bytes per element from its slots. A rule no table here
names is skipped with a generic reason, so a new rule needs nothing here
until a suite should time it; a registry rule that fusedopt.reference does
not know fails every suite (fusedopt.bench.rules.require_known).

This module names rules and nothing else does in fusedopt.bench; it imports
neither TensorFlow nor the op library (the gpu suite runs without them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

# ---- the table suites (sizes, many, models, sparse, fit) --------------------------------


@dataclass(frozen=True)
class TableCase:
    """A rule in the table suites: the Keras optimizer's constructor
    arguments (every contender computes the same rule with them)."""

    config: dict
    notes: str = ""


# In the order of the tables and of --algorithms all.
TABLE: dict[str, TableCase] = {
    "adam": TableCase(dict(learning_rate=1e-3)),
    "sgd": TableCase(dict(learning_rate=1e-2, momentum=0.9)),
    "rmsprop": TableCase(dict(learning_rate=1e-3, momentum=0.9)),
    "adagrad": TableCase(dict(learning_rate=1e-2, epsilon=0.0),
                         notes="epsilon=0: TF's AdagradV2 adds it outside the sqrt"),
    "adadelta": TableCase(dict(learning_rate=1.0)),
    "adamax": TableCase(dict(learning_rate=1e-3)),
    "ftrl": TableCase(dict(learning_rate=1e-2)),
    "nadam": TableCase(dict(learning_rate=1e-3)),
    "lion": TableCase(dict(learning_rate=1e-4)),
    "lamb": TableCase(dict(learning_rate=1e-3)),
}
# The table suites' default --algorithms; the rule of the sparse suite (one
# embedding table, exact and lazy), of the fit suite, and of the focused
# keras-apply and multi suites (whose analysis is docs/benchmarks.md).
DEFAULT_ALGORITHM = SPARSE_RULE = FIT_RULE = KERAS_APPLY_RULE = "adam"


# ---- TensorFlow's own training ops (the "tf.raw_ops" contenders) --------------------------


@dataclass(frozen=True)
class RawOp:
    """A TensorFlow training op computing a rule over the slots it names:
    ``tf.raw_ops.<op>(var=..., grad=..., ...)`` with each of TF's arguments
    from a registry slot, a registry scalar, or a scalar raised to the step."""

    op: str
    slots: Mapping[str, str]  # TF's argument -> registry slot
    scalars: Mapping[str, str]  # TF's argument -> registry scalar
    powers: Mapping[str, str] = field(default_factory=dict)  # TF's argument -> scalar^step

    def call(self, raw_ops: Any, var: Any, grad: Any, slots: Mapping[str, Any],
             scalar: Callable[[str], Any], power: Callable[[str], Any]) -> Any:
        """The op from ``raw_ops`` (``tf.raw_ops``) on the resource handles
        ``var`` and ``slots`` (by registry name); ``scalar(name)`` and
        ``power(name)`` make the scalar tensors (a suite's own way)."""
        return getattr(raw_ops, self.op)(
            var=var, grad=grad, **{a: slots[s] for a, s in self.slots.items()},
            **{a: power(s) for a, s in self.powers.items()},
            **{a: scalar(s) for a, s in self.scalars.items()})


_ADAM_SCALARS = {"lr": "lr", "beta1": "beta_1", "beta2": "beta_2", "epsilon": "epsilon"}
_ADAM_POWERS = {"beta1_power": "beta_1", "beta2_power": "beta_2"}
RAW_OPS: dict[str, tuple[RawOp, ...]] = {
    "adam": (RawOp("ResourceApplyAdam", {"m": "m", "v": "v"}, _ADAM_SCALARS, _ADAM_POWERS),
             RawOp("ResourceApplyAdamWithAmsgrad", {"m": "m", "v": "v", "vhat": "vhat"},
                   _ADAM_SCALARS, _ADAM_POWERS)),
    "sgd": (RawOp("ResourceApplyKerasMomentum", {"accum": "momenta"},
                  {"lr": "lr", "momentum": "momentum"}),),
    "rmsprop": (RawOp("ResourceApplyRMSProp", {"ms": "velocity", "mom": "momenta"},
                      {"lr": "lr", "rho": "rho", "momentum": "momentum", "epsilon": "epsilon"}),),
    "adagrad": (RawOp("ResourceApplyAdagradV2", {"accum": "accumulator"},
                      {"lr": "lr", "epsilon": "epsilon"}),),
    "adadelta": (RawOp("ResourceApplyAdadelta",
                       {"accum": "accumulated_grad", "accum_update": "accumulated_delta_var"},
                       {"lr": "lr", "rho": "rho", "epsilon": "epsilon"}),),
    "adamax": (RawOp("ResourceApplyAdaMax", {"m": "m", "v": "u"}, _ADAM_SCALARS,
                     {"beta1_power": "beta_1"}),),
    "ftrl": (RawOp("ResourceApplyFtrl", {"accum": "accumulator", "linear": "linear"},
                   {"lr": "lr", "l1": "l1", "l2": "l2", "lr_power": "learning_rate_power"}),),
}


def raw_op(rule: str, slots) -> RawOp | None:
    """TensorFlow's training op for ``rule`` over exactly ``slots``, if any."""
    return next((op for op in RAW_OPS.get(rule, ()) if set(op.slots.values()) == set(slots)),
                None)


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
    DenseCase("adam", "Adam", dict(lr=1e-3), ("m", "v"), ("v",)),
    DenseCase("adam", "AMSGrad", dict(lr=1e-3), ("m", "v", "vhat"), ("v", "vhat")),
    DenseCase("sgd", "SGD momentum", dict(lr=0.01, momentum=0.9), ("momenta",)),
    DenseCase("rmsprop", "RMSprop momentum", dict(lr=1e-3, momentum=0.9),
              ("velocity", "momenta"), ("velocity",)),
    DenseCase("adagrad", "Adagrad", dict(lr=1e-3, epsilon=0.0), ("accumulator",),
              ("accumulator",)),
    DenseCase("adadelta", "Adadelta", dict(lr=1.0),
              ("accumulated_grad", "accumulated_delta_var"),
              ("accumulated_grad", "accumulated_delta_var")),
    DenseCase("ftrl", "Ftrl", dict(lr=1e-3, l1=0.01, l2=0.01), ("accumulator", "linear"),
              ("accumulator",)),
    DenseCase("adamax", "Adamax", dict(lr=1e-3), ("m", "u"), ("u",)),
    DenseCase("nadam", "Nadam", dict(lr=1e-3, u_product=0.3), ("m", "v"), ("v",)),
    DenseCase("lion", "Lion", dict(lr=1e-4), ("m",)),
    DenseCase("lamb", "LAMB (2 passes)", dict(lr=1e-3), ("m", "v"), ("v",)),
]
# The multi suite: the first dense case of this rule over many variables.
MULTI_RULE = "adam"


def positive_slots(rule: str) -> set[str]:
    """The slots of ``rule`` that hold positive values (the dense cases')."""
    return {s for case in DENSE if case.rule == rule for s in case.positive}


# ---- the gpu suite ------------------------------------------------------------------------


@dataclass(frozen=True)
class TorchOptim:
    """torch.optim's implementation of a gpu case: ``torch.optim.<cls>(params,
    **{its argument: the case's scalar (a tuple of names: a tuple of them)})``."""

    cls: str
    args: Mapping[str, str | tuple[str, ...]]


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


_TORCH_ADAM = {"lr": "lr", "betas": ("beta_1", "beta_2"), "eps": "epsilon"}
GPU: list[GpuCase] = [
    GpuCase("adam", "adam", dict(lr=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8), ("m", "v"),
            TorchOptim("Adam", _TORCH_ADAM)),
    GpuCase("adamw", "adam", dict(lr=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                                  weight_decay=0.01), ("m", "v"),
            TorchOptim("AdamW", dict(_TORCH_ADAM, weight_decay="weight_decay"))),
    GpuCase("sgd_momentum", "sgd", dict(lr=1e-2, momentum=0.9), ("momenta",),
            TorchOptim("SGD", {"lr": "lr", "momentum": "momentum"})),
    GpuCase("lion", "lion", dict(lr=1e-4, beta_1=0.9, beta_2=0.99), ("m",)),
    GpuCase("rmsprop", "rmsprop", dict(lr=1e-3, rho=0.9, momentum=0.0, epsilon=1e-7),
            ("velocity",), TorchOptim("RMSprop", {"lr": "lr", "alpha": "rho", "eps": "epsilon"})),
    GpuCase("lamb", "lamb", dict(lr=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-6), ("m", "v")),
]


# ---- the ps suite -------------------------------------------------------------------------


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


# The tf_keras constructor arguments of each rule the ps suite times.
PS_CONFIGS: dict[str, dict] = {
    "adam": dict(learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7),
    "adagrad": dict(learning_rate=0.05, initial_accumulator_value=0.1, epsilon=1e-7),
}
PS_BUILTIN = "tf_keras"  # the built-ins' contender name
PS_CONTENDERS: list[PsContender] = [
    PsContender("fusedopt lazy", "adam", "lazy", sparse_mode="lazy"),
    PsContender("fusedopt exact", "adam", "exact"),
    PsContender(PS_BUILTIN, "adam", "exact", builtin=True),
    # (The built-in's sparse rule touches only the listed rows.)
    PsContender("fusedopt", "adagrad", "lazy"),
    PsContender(PS_BUILTIN, "adagrad", "lazy", builtin=True),
]
# --inject-wrong: the lazy update judged against the exact semantics (the
# check must reject it).
PS_INJECTED = PsContender("injected-wrong", "adam", "exact", sparse_mode="lazy")
