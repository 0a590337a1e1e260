"""fusedopt.ops' rule functions are made from the op definitions (Note [wrappers
from the registry] in ops.py); these agree with the registry as
fusedopt._native.rules() gives it, and every rule has its function."""

import inspect

import pytest

from fusedopt import ops


def test_every_rule_has_a_function_made_from_its_op():
    native = pytest.importorskip("fusedopt._native")
    for rule, info in native.rules().items():
        function = getattr(ops, f"apply_{rule}")
        assert function.__name__ == f"apply_{rule}" and function.__module__ == "fusedopt.ops"
        inputs = ops._op_inputs(rule)
        assert list(inputs.scalars) == list(info["scalars"]), rule
        assert [tuple(s) for s in inputs.slots] == [tuple(s) for s in info["slots"]], rule
        assert inputs.step == info["step"], rule
        parameters = inspect.signature(function).parameters
        for slot, optional in info["slots"]:
            assert (parameters[slot].default is None) == optional, (rule, slot)
        assert ("step" in parameters) == info["step"], rule
