"""Response schemas (pydantic) of the gateway; they document the API in ``/docs``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class Person(BaseModel):
    """One person: box, box score, K keypoints and the person score (image pixels)."""

    bbox: list[float] = Field(
        description="person box [x, y, w, h] in image pixels (bottom-up: "
        "the box around the person's found keypoints)"
    )
    bbox_score: float = Field(
        description="given box score (1.0 if none) or detector score (bottom-up: the person score)"
    )
    keypoints: list[list[float]] = Field(description="K x [x, y, score], image pixels")
    score: float = Field(
        description="top-down: bbox_score x mean of keypoint scores above 0.2 "
        "(MMPose); bottom-up: mean joint value of the grouping"
    )


class PoseResponse(BaseModel):
    """``POST /pose`` result: persons in the order of the boxes, plus keypoint metadata."""

    model: str
    image_size: list[int] = Field(description="[width, height] of the decoded image")
    flip_test: bool
    box_source: Literal["given", "detector", "bottomup"] = Field(
        description="given boxes, the person detector's boxes, or a bottom-up model's people"
    )
    keypoint_names: list[str]
    skeleton: list[list[int]]
    persons: list[Person]
    timing_ms: dict[str, float]


class SegmentResponse(BaseModel):
    """``POST /segment`` JSON result: the label map as base64 PNG plus class statistics."""

    model: str
    width: int
    height: int
    classes: list[str]
    pixel_counts: dict[str, int]
    label_png: str = Field(description="base64 single-channel PNG of class ids (255 = ignore)")
    timing_ms: dict[str, float]


class ErrorDetail(BaseModel):
    """Machine-readable error code and a message naming what is wrong."""

    code: str
    message: str


class ErrorResponse(BaseModel):
    """Body of every 4xx/5xx answer of the gateway."""

    error: ErrorDetail


def error_responses(descriptions: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries: each status with :class:`ErrorResponse` and its meaning."""
    return {
        code: {"model": ErrorResponse, "description": text} for code, text in descriptions.items()
    }


#: Every error status of the inference endpoints (``/pose``, ``/segment``).
INFERENCE_ERRORS = error_responses(
    {
        404: "unknown model (unknown_model)",
        413: "file, image or network input over a configured limit (payload_too_large)",
        415: "not a decodable JPEG, PNG, WebP or BMP image (invalid_image)",
        422: "invalid boxes or parameters, or a model of another task (invalid_boxes, "
        "invalid_parameter, invalid_request, wrong_task)",
        500: "the backend failed on a valid request (inference_failed, internal_error)",
        503: "backend unavailable (backend_unavailable) or the gateway is shutting down "
        "(shutting_down); see Retry-After",
    }
)


class ReloadResponse(BaseModel):
    """``POST /admin/reload`` report, by model name; with refused entries (422) it also carries
    ``error``."""

    added: list[str]
    updated: list[str]
    removed: list[str]
    unchanged: list[str]
    refused: dict[str, str] = Field(
        description="name -> why it was refused; its previous version, if any, still serves"
    )
    error: ErrorDetail | None = None
