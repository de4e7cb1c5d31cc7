"""Tests of the ``benchmarks`` package (files mirror its modules)."""
