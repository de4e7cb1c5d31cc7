"""glibc malloc arena cap at gateway start-up (service.memory, HRNET_MALLOC_ARENA_MAX)."""

from __future__ import annotations

import ctypes
import platform
import types

import pytest
from pydantic import ValidationError

import service.cli
import service.lifecycle
from service import memory
from service.settings import Settings

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="needs glibc")


@glibc
def test_cap_is_set_through_mallopt():
    assert memory.limit_malloc_arenas(2) is True


def test_zero_leaves_the_default_and_calls_nothing(monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("the C library must not be touched")

    monkeypatch.setattr(ctypes, "CDLL", refuse)
    assert memory.limit_malloc_arenas(0) is False


def test_negative_is_an_error():
    with pytest.raises(ValueError, match="malloc arenas must be >= 0"):
        memory.limit_malloc_arenas(-1)
    with pytest.raises(ValidationError, match="malloc_arena_max"):
        Settings(malloc_arena_max=-1)


def test_without_glibc_it_is_skipped_not_fatal(monkeypatch, caplog):
    monkeypatch.setattr(ctypes.util, "find_library", lambda _name: "libno_such_c_library.so.9")
    with caplog.at_level("INFO", logger="service"):
        assert memory.limit_malloc_arenas(2) is False
    assert "malloc arenas not capped" in caplog.text


def test_refused_by_mallopt_is_false(monkeypatch):
    seen = []

    def mallopt(param, value):
        seen.append((param, value))
        return 0  # glibc's "refused"

    monkeypatch.setattr(ctypes, "CDLL", lambda _name: types.SimpleNamespace(mallopt=mallopt))
    assert memory.limit_malloc_arenas(3) is False
    assert seen == [(memory.M_ARENA_MAX, 3)] and memory.M_ARENA_MAX == -8


def test_hrnet_serve_applies_the_setting_before_serving(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setenv("HRNET_MALLOC_ARENA_MAX", "3")
    monkeypatch.setattr(service.cli, "limit_malloc_arenas", lambda n: calls.append(("cap", n)))
    monkeypatch.setattr(service.lifecycle, "serve", lambda *a, **k: calls.append(("serve",)) or 0)
    assert service.cli.main(["--model-repository", str(tmp_path)]) == 0
    assert calls == [("cap", 3), ("serve",)]
