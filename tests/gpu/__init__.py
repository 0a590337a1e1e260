# A package, so that pytest imports tests/gpu/conftest.py as gpu.conftest and
# never replaces tests/conftest.py's `conftest` module that other tests import.
