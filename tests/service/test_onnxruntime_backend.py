"""Embedded backend edge cases (review finding 10): a card without ONNX answers 503, unknown models
stay BackendErrors, repositories without models (service.backends.onnxruntime, service.repository).
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.backends.base import BackendError, BackendUnavailable
from service.repository import ModelRepository
from tests.support.gateway import backend, client, error_of, gateway_settings, png_image, repo


def test_card_without_onnx_is_503(repo):
    # the real embedded backend skips carded models without model.onnx (all of them here)
    with TestClient(create_app(gateway_settings(repo))) as c:
        r = c.post(
            "/pose", files={"image": ("x.png", png_image())}, data={"boxes": "[[1, 1, 50, 80]]"}
        )
    assert "fake_pose" in error_of(r, 503, "backend_unavailable")
    assert "Retry-After" in r.headers


def test_unknown_model_in_ort_backend_is_still_a_backend_error(repo):
    from service.backends.onnxruntime import OnnxRuntimeBackend

    be = OnnxRuntimeBackend(ModelRepository(repo))
    asyncio.run(be.start())
    with pytest.raises(BackendUnavailable):
        asyncio.run(be.infer("fake_pose", {"image": np.zeros((1, 3, 256, 192), np.float32)}))
    with pytest.raises(BackendError) as exc:
        asyncio.run(be.infer("not_carded", {"image": np.zeros((1, 3, 2, 2), np.float32)}))
    assert not isinstance(exc.value, BackendUnavailable)
    asyncio.run(be.close())


def test_repository_has_no_model_dir():
    assert not hasattr(ModelRepository, "model_dir")
