"""pytest settings for benchmarks/: the pytest-benchmark microbenchmarks run only when asked for,

    pytest benchmarks --benchmark-only

so that a plain `pytest` from the repository root does not spend minutes timing. (The regular
suite, `pytest tests`, never collects this folder; its one benchmark smoke test is
tests/test_benchmarks_smoke.py.)
"""

import pytest


def pytest_collection_modifyitems(config, items):
    try:
        asked = config.getoption("benchmark_only")
    except ValueError:  # pytest-benchmark not installed
        asked = False
    if asked:
        return
    skip = pytest.mark.skip(reason="microbenchmark: run with `pytest benchmarks --benchmark-only`")
    for item in items:
        if "benchmarks" in item.path.parts:
            item.add_marker(skip)
