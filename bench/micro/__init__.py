"""pytest-benchmark micro benches of ``kongtask._core``, compiled vs pure; see summary.py."""
