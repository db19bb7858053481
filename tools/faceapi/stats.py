#!/usr/bin/env python3
"""Parameter count and compute of the bundled ONNX graphs, read from the graphs themselves.

    python3 tools/faceapi/stats.py [engines/models/*.onnx]

Conventions (per image, batch 1):
  params  = number of float values in the weight initializers (the two preprocessing
            constants, the 3 mean values and the /255 divisor, are not counted);
  MACs    = multiply-accumulates of Conv (N*Cout*Hout*Wout*Cin/group*kh*kw) and Gemm (K*M);
  FLOPs   = 2 * MACs (the usual convention; bias adds, activations, pooling and the
            preprocessing are left out -- they add well under 1 %).
Needs only onnx.
"""

from __future__ import annotations

import glob
import os
import sys

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

PREPROCESSING_CONSTANTS = {"mean_bgr", "pixel_divisor"}


def _dims(value_info):
    out = []
    for d in value_info.type.tensor_type.shape.dim:
        out.append(d.dim_value if d.HasField("dim_value") else 1)  # symbolic batch -> 1
    return out


def graph_stats(path):
    model = onnx.load(path)
    inferred = shape_inference.infer_shapes(model)
    shapes = {}
    g = inferred.graph
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        shapes[vi.name] = _dims(vi)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    params = sum(int(a.size) for n, a in inits.items() if n not in PREPROCESSING_CONSTANTS)
    macs = 0
    ops = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
        if node.op_type == "Conv":
            w = inits[node.input[1]]
            out = shapes[node.output[0]]  # [N, Cout, H, W]
            macs += int(np.prod(out)) * int(np.prod(w.shape[1:]))
        elif node.op_type == "Gemm":
            w = inits[node.input[1]]
            macs += int(np.prod(shapes[node.output[0]])) * int(w.shape[0])
        elif node.op_type == "MatMul":
            raise NotImplementedError("MatMul not expected in these graphs")
    return {
        "file": os.path.basename(path),
        "params": params,
        "macs": macs,
        "flops": 2 * macs,
        "nodes": len(model.graph.node),
        "ops": dict(sorted(ops.items())),
        "input": (model.graph.input[0].name, _shape_str(model.graph.input[0])),
        "output": (model.graph.output[0].name, _shape_str(model.graph.output[0])),
        "bytes": os.path.getsize(path),
    }


def _shape_str(vi):
    return (
        "[" + ",".join(d.dim_param or str(d.dim_value) for d in vi.type.tensor_type.shape.dim) + "]"
    )


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    paths = argv or sorted(
        glob.glob(
            os.path.join(
                os.path.dirname(os.path.abspath(__file__)),
                "..",
                "..",
                "engines",
                "models",
                "*.onnx",
            )
        )
    )
    print("| model | input | output | params | MACs | FLOPs (2*MACs) | nodes | file bytes |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for p in paths:
        s = graph_stats(p)
        (in_name, in_shape), (out_name, out_shape) = s["input"], s["output"]
        print(
            f"| {s['file']} | `{in_name}` {in_shape} | `{out_name}` {out_shape} "
            f"| {s['params']:,} | {s['macs']:,} | {s['flops']:,} ({s['flops'] / 1e9:.3f} G) "
            f"| {s['nodes']} | {s['bytes']:,} |"
        )
    for p in paths:
        s = graph_stats(p)
        ops = ", ".join(f"{op} x{n}" for op, n in s["ops"].items())
        print(f"{s['file']} ops: {ops}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
