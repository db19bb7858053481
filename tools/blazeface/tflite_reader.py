"""A minimal, dependency-free reader for TensorFlow Lite model files (numpy + struct only).

Reads just what ``port.py`` needs from a ``.tflite`` flatbuffer: the operators of the
first subgraph (builtin code, inputs, outputs, options) and the tensors (name, shape,
type, constant data). Field numbers follow TensorFlow Lite's ``schema.fbs``
(tensorflow/lite/schema/schema.fbs, Apache-2.0); only float32 / float16 / int32 tensors
are decoded. ``verify.py`` cross-checks the operator names read here against the TFLite
runtime's own list, so a wrong table below cannot go unnoticed.

Flatbuffers in brief: a table starts with an int32 offset back to its vtable; the vtable
holds (vtable size, table size, one uint16 offset per field, 0 = absent/default).
References (tables, vectors, strings) are uint32 offsets relative to where they are
stored; a vector is a uint32 length followed by its elements.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

# BuiltinOperator values used by the MediaPipe face detectors (schema.fbs)
BUILTIN_OPS = {
    0: "ADD",
    1: "AVERAGE_POOL_2D",
    2: "CONCATENATION",
    3: "CONV_2D",
    4: "DEPTHWISE_CONV_2D",
    6: "DEQUANTIZE",
    9: "FULLY_CONNECTED",
    14: "LOGISTIC",
    17: "MAX_POOL_2D",
    18: "MUL",
    19: "RELU",
    21: "RELU6",
    22: "RESHAPE",
    23: "RESIZE_BILINEAR",
    34: "PAD",
    39: "TRANSPOSE",
    54: "PRELU",
    97: "RESIZE_NEAREST_NEIGHBOR",
    98: "LEAKY_RELU",
}
# TensorType -> numpy dtype (only those the face detectors use)
TENSOR_TYPES = {0: np.float32, 1: np.float16, 2: np.int32, 4: np.int64}
ACTIVATIONS = {0: None, 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH"}
PADDINGS = {0: "SAME", 1: "VALID"}

# options table layouts: (field name, struct format, default) in schema order
_OPTIONS = {
    "CONV_2D": [
        ("padding", "b", 0),
        ("stride_w", "i", 0),
        ("stride_h", "i", 0),
        ("fused_activation_function", "b", 0),
        ("dilation_w_factor", "i", 1),
        ("dilation_h_factor", "i", 1),
    ],
    "DEPTHWISE_CONV_2D": [
        ("padding", "b", 0),
        ("stride_w", "i", 0),
        ("stride_h", "i", 0),
        ("depth_multiplier", "i", 0),
        ("fused_activation_function", "b", 0),
        ("dilation_w_factor", "i", 1),
        ("dilation_h_factor", "i", 1),
    ],
    "MAX_POOL_2D": [
        ("padding", "b", 0),
        ("stride_w", "i", 0),
        ("stride_h", "i", 0),
        ("filter_width", "i", 0),
        ("filter_height", "i", 0),
        ("fused_activation_function", "b", 0),
    ],
    "ADD": [("fused_activation_function", "b", 0)],
    "MUL": [("fused_activation_function", "b", 0)],
    "CONCATENATION": [("axis", "i", 0), ("fused_activation_function", "b", 0)],
    "RESIZE_BILINEAR": [
        ("new_height", "i", 0),
        ("new_width", "i", 0),
        ("align_corners", "?", False),
        ("half_pixel_centers", "?", False),
    ],
    "RESIZE_NEAREST_NEIGHBOR": [("align_corners", "?", False), ("half_pixel_centers", "?", False)],
}
_OPTIONS["AVERAGE_POOL_2D"] = _OPTIONS["MAX_POOL_2D"]


class _Table:
    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf = buf
        self.pos = pos
        vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        vsize = struct.unpack_from("<H", buf, vtable)[0]
        n = (vsize - 4) // 2
        self.offsets = struct.unpack_from(f"<{n}H", buf, vtable + 4)

    def _off(self, slot: int) -> int:
        return self.offsets[slot] if slot < len(self.offsets) else 0

    def scalar(self, slot: int, fmt: str, default: Any = 0) -> Any:
        off = self._off(slot)
        return struct.unpack_from("<" + fmt, self.buf, self.pos + off)[0] if off else default

    def _ref(self, slot: int) -> Optional[int]:
        off = self._off(slot)
        if not off:
            return None
        at = self.pos + off
        return at + struct.unpack_from("<I", self.buf, at)[0]

    def table(self, slot: int) -> Optional[_Table]:
        at = self._ref(slot)
        return None if at is None else _Table(self.buf, at)

    def string(self, slot: int) -> str:
        at = self._ref(slot)
        if at is None:
            return ""
        n = struct.unpack_from("<I", self.buf, at)[0]
        return self.buf[at + 4 : at + 4 + n].decode("utf-8")

    def vector(self, slot: int, fmt: str) -> Tuple[Any, ...]:
        at = self._ref(slot)
        if at is None:
            return ()
        n = struct.unpack_from("<I", self.buf, at)[0]
        return struct.unpack_from(f"<{n}{fmt}", self.buf, at + 4)

    def bytes_vector(self, slot: int) -> bytes:
        at = self._ref(slot)
        if at is None:
            return b""
        n = struct.unpack_from("<I", self.buf, at)[0]
        return self.buf[at + 4 : at + 4 + n]

    def tables(self, slot: int) -> List[_Table]:
        at = self._ref(slot)
        if at is None:
            return []
        n = struct.unpack_from("<I", self.buf, at)[0]
        out = []
        for i in range(n):
            elem = at + 4 + 4 * i
            out.append(_Table(self.buf, elem + struct.unpack_from("<I", self.buf, elem)[0]))
        return out


@dataclass
class Tensor:
    index: int
    name: str
    shape: Tuple[int, ...]
    dtype: Any
    data: Optional[np.ndarray]  # constant data (weights), else None


@dataclass
class Operator:
    index: int
    op: str
    inputs: Tuple[int, ...]
    outputs: Tuple[int, ...]
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class TFLiteModel:
    tensors: List[Tensor]
    operators: List[Operator]
    inputs: Tuple[int, ...]
    outputs: Tuple[int, ...]
    version: int
    description: str


def read_tflite(data: bytes) -> TFLiteModel:
    """Parse a .tflite file's bytes (first subgraph only)."""
    if data[4:8] != b"TFL3":
        raise ValueError("not a TensorFlow Lite flatbuffer (file identifier is not TFL3)")
    model = _Table(data, struct.unpack_from("<I", data, 0)[0])
    version = model.scalar(0, "I")
    codes = []
    for code in model.tables(1):
        deprecated = code.scalar(0, "b", 0)
        builtin = code.scalar(3, "i", 0)
        codes.append(max(deprecated, builtin))  # schema v3a: the larger of the two
    buffers = [b.bytes_vector(0) for b in model.tables(4)]
    subgraphs = model.tables(2)
    if len(subgraphs) != 1:
        raise ValueError(f"expected one subgraph, found {len(subgraphs)}")
    sg = subgraphs[0]

    tensors = []
    for i, t in enumerate(sg.tables(0)):
        shape = tuple(int(v) for v in t.vector(0, "i"))
        ttype = t.scalar(1, "b", 0)
        if ttype not in TENSOR_TYPES:
            raise ValueError(f"tensor {i}: unsupported tensor type {ttype}")
        dtype = TENSOR_TYPES[ttype]
        raw = buffers[t.scalar(2, "I", 0)]
        if t.table(6) is not None:
            raise ValueError(f"tensor {i}: sparse tensors are not supported")
        array = None
        if raw:
            array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)
        tensors.append(Tensor(i, t.string(3), shape, dtype, array))

    operators = []
    for i, o in enumerate(sg.tables(3)):
        code = codes[o.scalar(0, "I", 0)]
        if code not in BUILTIN_OPS:
            raise ValueError(f"operator {i}: unsupported builtin operator code {code}")
        name = BUILTIN_OPS[code]
        options: Dict[str, Any] = {}
        opts = o.table(4)
        if opts is not None:
            for slot, (key, fmt, default) in enumerate(_OPTIONS.get(name, [])):
                options[key] = opts.scalar(slot, fmt, default)
        if name == "RESHAPE" and opts is not None:
            options["new_shape"] = opts.vector(0, "i")
        if "padding" in options:
            options["padding"] = PADDINGS[options["padding"]]
        if "fused_activation_function" in options:
            options["fused_activation_function"] = ACTIVATIONS[options["fused_activation_function"]]
        ins = tuple(int(v) for v in o.vector(1, "i"))
        outs = tuple(int(v) for v in o.vector(2, "i"))
        operators.append(Operator(i, name, ins, outs, options))

    return TFLiteModel(
        tensors,
        operators,
        tuple(sg.vector(1, "i")),
        tuple(sg.vector(2, "i")),
        version,
        model.string(3),
    )
