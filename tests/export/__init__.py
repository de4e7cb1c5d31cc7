"""Tests of the ``export`` package (files mirror its modules)."""
