"""The float64 references live in the package (fusedopt.bench.reference) so the
benchmark's --check uses the very same code as the tests."""

from fusedopt.bench.reference import *  # noqa: F401,F403
