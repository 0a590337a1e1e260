"""A rule is named only where it is defined (issue #29): in python/fusedopt, its
float64 reference and benchmark cases (reference.py) and its Keras and legacy
classes; everything else derives from the registry
(fusedopt._native.rules(), with each rule's options), those references and
those classes. So adding a rule touches at most three Python files. The
exceptions are listed here, with why."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "python" / "fusedopt"

# Where any rule may be named.
HOMES = {"reference.py", "keras/_family.py", "legacy/_optimizers.py"}
# The most files of python/fusedopt that may name one rule (issue #29: with
# its three C++ files, at most six source files).
MOST_FILES = 3
EXCEPTIONS = {
    # Keras' Muon makes two op calls whose functions' arguments follow no
    # convention (fusedopt.ops._ARGUMENTS), and fusedopt.ops.muon_scale is
    # Keras Muon's scale. Muon has no tf_keras class, so it stays within
    # MOST_FILES.
    "muon": {"ops.py"},
    "muon_momentum": {"ops.py"},
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


def _where(texts: Mapping[str, str], rules: list[str]) -> dict[str, set[str]]:
    """Each rule -> the files (of ``texts``: path -> text) that name it."""
    where: dict[str, set[str]] = {rule: set() for rule in rules}
    for path, text in texts.items():
        for rule in _names(text, rules):
            where[rule].add(path)
    return where


def _misplaced(texts: Mapping[str, str], rules: list[str]) -> dict[str, list[str]]:
    """The rules named outside their homes and exceptions (or in more than
    MOST_FILES files) -> those files."""
    wrong = {}
    for rule, files in _where(texts, rules).items():
        bad = sorted(files - HOMES - EXCEPTIONS.get(rule, set()))
        if bad or len(files) > MOST_FILES:
            wrong[rule] = bad or sorted(files)
    return wrong


def test_a_rule_named_elsewhere_is_caught():
    rules = ["adam", "adamax", "muon"]
    texts = {"reference.py": "def adam_step(): ...\ndef adamax_step(): ...\ndef muon_step(): ...",
             "keras/_family.py": "class Adam: ...\nclass Muon: ...",
             "ops.py": "def muon_scale(): ...",
             "bench/cases.py": 'DEFAULT = "adam"', "jax.py": "FORMS = ('adamax',)"}
    assert _misplaced(texts, rules) == {"adam": ["bench/cases.py"], "adamax": ["jax.py"]}
    # A fourth file, though each is a home or an exception: over the budget.
    texts["legacy/_optimizers.py"] = "class Muon: ..."
    assert _misplaced(texts, rules)["muon"] == ["keras/_family.py", "legacy/_optimizers.py",
                                                "ops.py", "reference.py"]


def test_each_rule_is_named_only_where_it_is_defined():
    native = pytest.importorskip("fusedopt._native")
    rules = list(native.rules())
    texts = {path.relative_to(PACKAGE).as_posix(): path.read_text()
             for path in sorted(PACKAGE.rglob("*.py"))}
    assert not _misplaced(texts, rules), _misplaced(texts, rules)
