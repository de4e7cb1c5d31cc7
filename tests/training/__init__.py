"""Tests of the ``training`` package (files mirror its modules)."""
