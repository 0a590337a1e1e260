"""A rule is named only where it is defined (issue #29): in python/fusedopt, its
float64 reference (reference.py), its Keras and legacy classes, and the
benchmark's choice of what to time (bench/cases.py); everything else derives
from the registry, those references and those classes. The exceptions are
listed here, with why."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "python" / "fusedopt"

# Where any rule may be named (bench/cases.py: the configurations, labels and
# comparisons the suites time, choices that no registry entry implies).
HOMES = {"reference.py", "keras/_family.py", "legacy/_optimizers.py", "bench/cases.py"}
EXCEPTIONS = {
    # Keras' Muon makes two op calls whose functions' arguments follow no
    # convention, and fusedopt.ops.muon_scale is Keras Muon's scale.
    "muon": {"ops.py"},
    "muon_momentum": {"ops.py"},
    # tf_training_op_form is TensorFlow's order of operations, which no
    # float64 reference shows; fusedopt._native.rules() does not report the
    # registry's attributes yet.
    "adadelta": {"jax.py"},
    "adamax": {"jax.py"},
    "nadam": {"jax.py"},
    "rmsprop": {"jax.py"},
}

_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")


def _names(text: str, rules: list[str]) -> set[str]:
    """The rules a text names: in any identifier or word, split at underscores
    and camelCase, a run of parts spelling a rule's name (AdamW, apply_lion,
    ResourceApplyAdaMax, RMSprop), a longer rule before a shorter one in it."""
    found = set()
    for word in re.findall(r"[A-Za-z0-9_]+", text):
        parts = [p.lower() for piece in word.split("_") for p in _PART.findall(piece)]
        used = [False] * len(parts)
        for rule in sorted(rules, key=len, reverse=True):
            key = rule.replace("_", "")
            for i in range(len(parts)):
                spelled, j = "", i
                while j < len(parts) and len(spelled) < len(key):
                    spelled += parts[j]
                    j += 1
                if spelled == key and not any(used[i:j]):
                    found.add(rule)
                    used[i:j] = [True] * (j - i)
    return found


def test_the_name_finder():
    rules = ["adam", "adamax", "schedule_free_adamw", "muon", "muon_momentum", "rmsprop", "lamb"]
    assert _names("ScheduleFreeAdamW", rules) == {"schedule_free_adamw"}
    assert _names("ResourceApplyAdaMax apply_muon_momentum", rules) == {"adamax", "muon_momentum"}
    assert _names("fusedopt.keras.AdamW; RMSprop's; lambda", rules) == {"adam", "rmsprop"}


def test_each_rule_is_named_only_where_it_is_defined():
    native = pytest.importorskip("fusedopt._native")
    rules = list(native.rules())
    where: dict[str, set[str]] = {rule: set() for rule in rules}
    for path in sorted(PACKAGE.rglob("*.py")):
        for rule in _names(path.read_text(), rules):
            where[rule].add(path.relative_to(PACKAGE).as_posix())
    wrong = {rule: sorted(files - HOMES - EXCEPTIONS.get(rule, set()))
             for rule, files in where.items()}
    assert not any(wrong.values()), {r: f for r, f in wrong.items() if f}
