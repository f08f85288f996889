"""Datasets: reading and writing them, the Great Expectations suites and their report, the demo world."""
