"""Tests of the ``service`` package (files mirror its modules)."""
