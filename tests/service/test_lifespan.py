"""Start-up cleanup (review finding 9): the lifespan closes a backend whose start fails; a failed
Triton start closes its client and destroys its shared memory (service.app,
service.backends.triton).
"""

from __future__ import annotations

import asyncio
import os

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.backends.base import BackendError
from service.cards import CodecSpec, ModelCard, Normalization, TensorSpec, make_card
from tests.support.gateway import FakeBackend, backend, client, gateway_settings, repo


class FailingStart(FakeBackend):
    async def start(self, cards):
        raise RuntimeError("cannot reach the inference server")


def test_lifespan_closes_the_backend_when_start_fails(repo):
    be = FailingStart()
    with pytest.raises(RuntimeError, match="cannot reach"):
        with TestClient(create_app(gateway_settings(repo), backend=be)):
            pass
    assert be.closed


def _toy_pose_card() -> ModelCard:
    return make_card(
        name="toy_pose",
        task="topdown_pose",
        input_size=(12, 16),
        inputs=[TensorSpec(name="image", dims=[3, 16, 12])],
        outputs=[TensorSpec(name="heatmaps", dims=[4, 8, 6])],
        max_batch_size=4,
        normalization=Normalization(mean=(0, 0, 0), std=(1, 1, 1)),
        codec=CodecSpec(input_size=(12, 16), heatmap_size=(6, 8)),
        keypoint_names=["a", "b", "c", "d"],
    )


class FakeTritonClient:
    def __init__(self, batch: int = 4):
        self.batch, self.closed, self.registered = batch, False, []

    async def is_server_ready(self, **kw):
        return True

    async def is_model_ready(self, name, version="", **kw):
        return True

    async def get_model_config(self, name, version="", **kw):
        return {
            "config": {
                "name": name,
                "backend": "onnxruntime",
                "max_batch_size": self.batch,
                "input": [{"name": "image", "data_type": "TYPE_FP32", "dims": ["3", "16", "12"]}],
                "output": [{"name": "heatmaps", "data_type": "TYPE_FP32", "dims": ["4", "8", "6"]}],
            }
        }

    async def unregister_system_shared_memory(self, name="", **kw):
        return None

    async def register_system_shared_memory(self, name, key, byte_size, **kw):
        raise RuntimeError("shared memory registration refused")

    async def close(self):
        self.closed = True


def _shm_regions() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith(f"hrnet_{os.getpid()}_")}


@pytest.mark.parametrize("batch", [4, 8])
def test_triton_start_failure_closes_client_and_destroys_shm(batch):
    """batch 8 disagrees with the card (TritonModelMismatch before shared memory exists); batch 4
    matches, the shared-memory region is created, and its registration with Triton fails."""
    pytest.importorskip("tritonclient")
    from service.backends.triton import TritonBackend, TritonModelMismatch

    fake = FakeTritonClient(batch)
    be = TritonBackend("127.0.0.1:1", shared_memory=True, startup_timeout_s=0)
    be._make_client = lambda: fake
    before = _shm_regions()
    with pytest.raises(BackendError) as exc:
        asyncio.run(be.start({"toy_pose": _toy_pose_card()}))
    assert isinstance(exc.value, TritonModelMismatch) is (batch == 8)
    if batch == 4:
        assert "registration refused" in str(exc.value)
    assert fake.closed and be._client is None and be._shm is None
    assert _shm_regions() == before
