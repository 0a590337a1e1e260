"""Loads the op library once, lazily, and explains every way that can fail.

Note [loading]: an op library is ABI-tied to the TensorFlow minor version it
was compiled against; loading it into another one fails with undefined symbols
at best. So the version recorded at build time (``_build_config.py``, written
by CMake beside the library) is compared with the running TensorFlow *before*
``tf.load_op_library`` is called, and every failure becomes an ImportError that
says what was expected, what was found and how to rebuild.

``FUSEDOPT_LIBRARY`` may name another build of the library (a developer's
CMake build directory); its ``_build_config.py`` must sit beside it.
"""

from __future__ import annotations

import ast
import json
import os
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

LIBRARY_NAME = "_fusedopt_ops.so"
CONFIG_NAME = "_build_config.py"

REBUILD_HINT = (
    "Rebuild fusedopt against the TensorFlow you run: from a fusedopt source checkout, "
    "`pip install --no-build-isolation --force-reinstall .` (or `./build_pip_pkg.sh` and "
    "`pip install --force-reinstall dist/fusedopt-*.whl`), in the environment that has "
    "tensorflow installed."
)

_lock = threading.Lock()
_library: ModuleType | None = None


def library_path() -> Path:
    """Where the op library is looked for."""
    override = os.environ.get("FUSEDOPT_LIBRARY")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent / LIBRARY_NAME


def read_build_config(library: Path) -> dict[str, Any]:
    """Reads the build record beside ``library`` (without importing it)."""
    config = library.parent / CONFIG_NAME
    try:
        tree = ast.parse(config.read_text(), filename=str(config))
    except OSError as e:
        raise ImportError(
            f"fusedopt's build record {config} is missing ({e.strerror}); the op library "
            f"beside it cannot be checked against TensorFlow. {REBUILD_HINT}"
        ) from e
    values: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                values[target.id] = ast.literal_eval(node.value)
    return values


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def check_tensorflow_version(built_against: str, running: str) -> None:
    """Raises ImportError unless both versions share major.minor."""
    if _minor(built_against) != _minor(running):
        raise ImportError(
            f"fusedopt's op library was built against TensorFlow {built_against}, but "
            f"TensorFlow {running} is running. An op library only loads into the TensorFlow "
            f"minor version it was compiled for ({_minor(built_against)}.x). Install "
            f"tensorflow~={_minor(built_against)}.0, or: {REBUILD_HINT}"
        )


def _load_unlocked(path: Path, running_tf: str) -> ModuleType:
    if not path.is_file():
        raise ImportError(
            f"fusedopt's op library was not found at {path}. The package was installed "
            f"without its compiled kernels (a source tree on sys.path, or a broken install). "
            f"{REBUILD_HINT}"
        )
    config = read_build_config(path)
    check_tensorflow_version(str(config.get("TF_VERSION", "unknown")), running_tf)
    import tensorflow as tf

    try:
        return tf.load_op_library(str(path))
    except (tf.errors.NotFoundError, OSError) as e:
        raise ImportError(
            f"TensorFlow {running_tf} could not load fusedopt's op library {path} "
            f"(built against TensorFlow {config.get('TF_VERSION')}): {e}. {REBUILD_HINT}"
        ) from e


def load() -> ModuleType:
    """Returns the loaded op library module, loading it on first call."""
    global _library
    if _library is not None:
        return _library
    with _lock:
        if _library is None:
            import tensorflow as tf

            _library = _load_unlocked(library_path(), tf.__version__)
    return _library


def build_info() -> dict[str, Any]:
    """See :func:`fusedopt.build_info`."""
    import tensorflow as tf

    lib = load()
    info = json.loads(_evaluate(lib.fusedopt_build_info).decode("utf-8"))
    info["tensorflow_running"] = tf.__version__
    info["library_path"] = str(library_path())
    return info


def _evaluate(make_tensor) -> Any:
    """The value of the tensor ``make_tensor()`` builds, in any TF context.

    Note [evaluating outside the caller's graph]: ``tf.init_scope()`` lifts
    out of a ``tf.function`` but not out of a TF1-style ``tf.Graph()`` (there
    it stays in graph mode, and ``.numpy()`` does not exist), nor out of a
    program that disabled eager execution. So the op is built in eager mode
    when the context allows it, else in a private graph run by a private
    Session: the caller's graph never sees it.
    """
    import tensorflow as tf

    with tf.init_scope():
        if tf.executing_eagerly():
            return make_tensor().numpy()
    graph = tf.Graph()
    with graph.as_default():
        tensor = make_tensor()
    with tf.compat.v1.Session(graph=graph) as session:
        return session.run(tensor)
