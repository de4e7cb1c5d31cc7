"""Tensor data-type names: the card's (Triton's datatype strings without ``TYPE_``), NumPy's and
ONNX Runtime's, in one table shared by the gateway's backends and the exporter.

Card dtypes are the names of Triton's ``DataType`` enum without its ``TYPE_`` prefix (``FP32``,
``FP16``, ``INT64``, ``INT32``, ``UINT8``), which are also the datatype strings of Triton's
inference protocol (KServe v2) and ``tritonclient.InferInput``.
"""

from __future__ import annotations

import numpy as np

#: card / Triton datatype name -> NumPy dtype
NUMPY_DTYPES: dict[str, type] = {
    "FP32": np.float32,
    "FP16": np.float16,
    "INT64": np.int64,
    "INT32": np.int32,
    "UINT8": np.uint8,
}

#: ONNX Runtime type string (``NodeArg.type``) -> card / Triton datatype name
ORT_DTYPES: dict[str, str] = {
    "tensor(float)": "FP32",
    "tensor(float16)": "FP16",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(uint8)": "UINT8",
}

#: prefix of the data types in Triton's ``config.pbtxt`` (``TYPE_FP32``)
CONFIG_DTYPE_PREFIX = "TYPE_"


def config_dtype(dtype: str) -> str:
    """Card dtype (``"FP32"``) -> Triton ``config.pbtxt`` data type (``"TYPE_FP32"``)."""
    return CONFIG_DTYPE_PREFIX + dtype


def card_dtype(config_type: str) -> str:
    """Triton ``config.pbtxt`` data type (``"TYPE_FP32"``) -> card dtype (``"FP32"``); a name
    without the prefix is returned as is."""
    return str(config_type).removeprefix(CONFIG_DTYPE_PREFIX)
