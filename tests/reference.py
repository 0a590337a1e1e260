"""The float64 references live in the package (fusedopt.reference) so the
benchmark's --check uses the very same code as the tests."""

from fusedopt.reference import *  # noqa: F401,F403
