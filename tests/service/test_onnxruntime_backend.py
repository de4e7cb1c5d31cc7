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


def test_runs_per_core_threads_by_input_shape_and_warm_up_at_the_largest_batches(tmp_path):
    """``concurrent_runs=0``: one run per core, the batcher's instances follow; fixed-shape models
    get cores / runs intra-op threads, dynamic-shape ones every core. Warm-up runs a fixed-shape
    model ``runs`` times at its batch cap at once (here 2 runs x 3 items), dynamic ones never."""
    from prometheus_client import REGISTRY

    from service.backends.embedded import cpu_cores
    from service.backends.onnxruntime import OnnxRuntimeBackend
    from service.batching import BatchConfig
    from tests.fake_cards import seg_card
    from tests.tiny_onnx import write_constant_pose_entry, write_conv_seg_onnx

    write_constant_pose_entry(tmp_path, "pose_a", 0.5)
    (tmp_path / "seg_a").mkdir()
    seg_card("seg_a", ["x", "y", "z"]).save(tmp_path / "seg_a")
    write_conv_seg_onnx(tmp_path / "seg_a" / "1" / "model.onnx")

    auto = OnnxRuntimeBackend(
        ModelRepository(tmp_path), concurrent_runs=0, batching=BatchConfig(instances=0)
    )
    asyncio.run(auto.start())
    cores = cpu_cores()
    assert auto.concurrent_runs == cores and auto.batcher("pose_a").config.instances == cores
    fixed = auto.sessions["pose_a"].get_session_options().intra_op_num_threads
    dynamic = auto.sessions["seg_a"].get_session_options().intra_op_num_threads
    assert (fixed, dynamic) == (max(1, cores // cores), cores)
    assert auto.batcher("seg_a") is None
    asyncio.run(auto.close())

    be = OnnxRuntimeBackend(
        ModelRepository(tmp_path), concurrent_runs=2, batching=BatchConfig(instances=0, max_size=3)
    )

    def runs() -> tuple[float, float]:
        count = REGISTRY.get_sample_value("hrnet_batch_size_count", {"model": "pose_a"}) or 0
        items = REGISTRY.get_sample_value("hrnet_batch_size_sum", {"model": "pose_a"}) or 0
        return count, items

    async def main():
        await be.start()
        before = runs()
        await be.warm_up()
        after = runs()
        await be.close()
        return before, after

    before, after = asyncio.run(main())
    assert (after[0] - before[0], after[1] - before[1]) == (2, 6)
