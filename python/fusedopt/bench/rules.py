"""The benchmark's view of the rule registry.

The rule names, their slots (name, optional) and whether a rule takes the
step come from the registry, ``fusedopt._native.rules()`` (no TensorFlow
needed). The suites keep only what is theirs, keyed by registry name: a
Keras class to compare with, a configuration, a reference call. Each suite's
table names every registry rule, either with its data or with ``Skip(why)``;
:func:`require_known` fails loudly when the registry has a rule a table does
not know (a new rule must be placed in every suite, or skipped with a reason)
or a table names a rule the registry does not have.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class Skip:
    """A registry rule a suite does not time, and why."""

    why: str


@dataclass(frozen=True)
class RuleInfo:
    name: str
    scalars: tuple[str, ...]
    slots: tuple[str, ...]  # every slot, in op order
    required_slots: tuple[str, ...]  # the slots that are not optional
    step: bool


class UnknownRuleError(RuntimeError):
    """The registry and a benchmark table disagree."""


@functools.lru_cache(maxsize=None)
def registry() -> dict[str, RuleInfo]:
    """Every rule of the registry (``fusedopt._native.rules()``)."""
    import fusedopt._native as nat

    return {name: RuleInfo(name, tuple(info["scalars"]), tuple(s for s, _ in info["slots"]),
                           tuple(s for s, optional in info["slots"] if not optional),
                           bool(info["step"]))
            for name, info in nat.rules().items()}


def require_known(table: Mapping[str, Any], what: str) -> None:
    """Raises UnknownRuleError unless ``table`` has exactly the registry's rules."""
    names = set(registry())
    missing, extra = sorted(names - set(table)), sorted(set(table) - names)
    if missing or extra:
        raise UnknownRuleError(
            f"{what} does not match the rule registry (fusedopt._native.rules()):"
            + (f" rules it does not know: {', '.join(missing)} (add each to the table, or "
               "Skip(why) it);" if missing else "")
            + (f" names no registry rule: {', '.join(extra)}" if extra else ""))


def check_slots(rule: str, slots, what: str) -> None:
    """Raises UnknownRuleError unless ``slots`` are registry slots of ``rule``
    in op order and include every required one."""
    info = registry()[rule]
    slots = list(slots)
    order = [s for s in info.slots if s in slots]
    if order != slots or not set(info.required_slots) <= set(slots):
        raise UnknownRuleError(
            f"{what}: slots {slots} of rule {rule!r} do not match the registry's "
            f"{list(info.slots)} (required: {list(info.required_slots)})")
