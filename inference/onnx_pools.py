"""Make PyTorch's ceil-mode max-pools that overhang their input explicit, so OpenVINO reads the graph.

torchvision's GoogLeNet ends its last stage with MaxPool(2, stride 2, ceil_mode=True). With the imagenet
stem at 28x28 (Fashion-MNIST) that pool sees a 1x1 map: PyTorch and onnxruntime return one window, while
OpenVINO refuses any kernel larger than the padded input ("Kernel after dilation has size 2 larger than
the data shape after padding 1"). Such a pool is rewritten with end padding that holds its last window
and ceil_mode=0. ONNX MaxPool never picks a padded value, so the outputs are unchanged; the export's
own check compares the file against the PyTorch model. Pools that fit their input stay as exported.
"""
from __future__ import annotations

import math
from pathlib import Path

from moskd.atomic import write_bytes


def _pool_out(size: int, k: int, s: int, pb: int, pe: int, d: int) -> int:
    """PyTorch's ceil-mode output length: the last window must start inside the input or its left pad."""
    span = d * (k - 1) + 1
    out = math.ceil((size + pb + pe - span) / s) + 1
    if (out - 1) * s >= size + pb:
        out -= 1
    return out


def explicit_overhanging_pools(model) -> int:
    """Rewrite, in place, every ceil-mode MaxPool of `model` (an onnx ModelProto) whose dilated kernel is
    larger than its padded input along some axis; returns how many were rewritten. Spatial sizes come
    from ONNX shape inference (the batch axis may be dynamic)."""
    import onnx
    from onnx import helper

    shapes = {}
    inferred = onnx.shape_inference.infer_shapes(model)
    for v in list(inferred.graph.value_info) + list(inferred.graph.input):
        dims = v.type.tensor_type.shape.dim
        shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    fixed = 0
    for node in model.graph.node:
        if node.op_type != "MaxPool":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        spatial = (shapes.get(node.input[0]) or [])[2:]
        k = list(attrs.get("kernel_shape", []))
        if not attrs.get("ceil_mode") or not k or len(spatial) != len(k) or None in spatial:
            continue
        n = len(k)
        s = list(attrs.get("strides") or [1] * n)
        d = list(attrs.get("dilations") or [1] * n)
        pads = list(attrs.get("pads") or [0] * (2 * n))
        if all(d[i] * (k[i] - 1) + 1 <= spatial[i] + pads[i] + pads[n + i] for i in range(n)):
            continue
        for i in range(n):
            out = _pool_out(spatial[i], k[i], s[i], pads[i], pads[n + i], d[i])
            need = (out - 1) * s[i] + d[i] * (k[i] - 1) + 1 - spatial[i] - pads[i]  # end pad for the last window
            pads[n + i] = max(need, 0)
        keep = [a for a in node.attribute if a.name not in ("pads", "ceil_mode")]
        del node.attribute[:]
        node.attribute.extend(keep + [helper.make_attribute("pads", pads), helper.make_attribute("ceil_mode", 0)])
        fixed += 1
    return fixed


def fix_file(path: str | Path) -> int:
    """explicit_overhanging_pools on an ONNX file, saved back only when something changed."""
    import onnx

    model = onnx.load(str(path))
    fixed = explicit_overhanging_pools(model)
    if fixed:
        write_bytes(path, model.SerializeToString())
    return fixed
