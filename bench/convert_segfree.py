"""Convert HyperLPR's segmentation-free plate recogniser (Caffe) to ONNX: ``python -m bench.convert_segfree PROTOTXT CAFFEMODEL OUT.onnx``.

Why: OpenCV's DNN module held ~28 MB resident for this 5 MB net (the vehicle-lane daemon went from
162 to 186 MB median); onnxruntime, already loaded for the other plate models, runs it without its
arena like them. The graph is the prototxt's, layer for layer; each Caffe BatchNorm + Scale pair is
folded into the convolution before it (``W·k``, ``(b − mean)·k + beta`` with ``k = gamma /
sqrt(var/s + eps)``, ``s`` Caffe's moving-average factor). The weights are read with OpenCV
(``Net.getParam``) and the result is checked against OpenCV's own forward pass on random and
plate-like inputs before it is written: the largest difference of any output probability is
printed and must be under 1e-4.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

OPSET = 13


def _layers(prototxt: str) -> list[dict[str, Any]]:
    """Return the prototxt's layers: name, type, bottoms, top and the numeric parameters we use."""
    out = []
    for block in re.split(r"\blayer\s*\{", prototxt)[1:]:
        layer: dict[str, Any] = {
            "name": re.search(r'name:\s*"([^"]+)"', block).group(1),  # type: ignore[union-attr]
            "type": re.search(r'type:\s*"([^"]+)"', block).group(1),  # type: ignore[union-attr]
            "bottom": re.findall(r'bottom:\s*"([^"]+)"', block),
            "top": re.search(r'top:\s*"([^"]+)"', block).group(1),  # type: ignore[union-attr]
        }
        for key in ("pad_h", "pad_w", "kernel_h", "kernel_w", "stride_h", "stride_w", "axis"):
            m = re.search(rf"\b{key}:\s*(\d+)", block)
            if m:
                layer[key] = int(m.group(1))
        m = re.search(r"\beps:\s*([0-9.eE+-]+)", block)
        layer["eps"] = float(m.group(1)) if m else 1e-5
        m = re.search(r"\bpool:\s*(\w+)", block)
        layer["pool"] = m.group(1) if m else None
        out.append(layer)
    return out


def _params(net: Any, name: str) -> list[np.ndarray]:
    blobs: list[np.ndarray] = []
    while True:
        try:
            b = net.getParam(name, len(blobs))
        except Exception:  # OpenCV raises cv2.error past the last blob
            break
        if b is None or b.size == 0:
            break
        blobs.append(np.asarray(b, dtype=np.float32))
    return blobs


def convert(prototxt: Path, caffemodel: Path) -> Any:
    """Return the ONNX model of the Caffe net (see the module doc)."""
    import cv2
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    text = prototxt.read_text(encoding="utf-8")
    dims = [int(v) for v in re.findall(r"input_dim:\s*(\d+)", text)]
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    layers = _layers(text)
    alias: dict[str, str] = {}  # Caffe blob name -> the ONNX value now holding it (in-place layers move it on)
    folded: dict[str, list[np.ndarray]] = {}  # conv name -> [W, b], BatchNorm + Scale folded in as they come
    owner: dict[str, str] = {}  # ONNX value -> the conv that produces it
    pending_bn: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # conv name -> (mean, 1/std) waiting for its Scale
    nodes = []
    for layer in layers:
        kind, name, top = layer["type"], layer["name"], layer["top"]
        src = [alias.get(b, b) for b in layer["bottom"]]
        if kind == "Convolution":
            w, b = _params(net, name)
            folded[name] = [w, b.reshape(-1)]
            pads = [layer["pad_h"], layer["pad_w"]] * 2
            kernel, strides = [layer["kernel_h"], layer["kernel_w"]], [layer["stride_h"], layer["stride_w"]]
            inputs = [src[0], f"{name}_W", f"{name}_b"]
            nodes.append(helper.make_node("Conv", inputs, [name], name=name, kernel_shape=kernel, strides=strides, pads=pads))
            alias[top], owner[name] = name, name
        elif kind == "BatchNorm":
            mean, var, factor = _params(net, name)
            s = float(factor.ravel()[0]) or 1.0
            pending_bn[owner[src[0]]] = (mean.reshape(-1) / s, 1.0 / np.sqrt(var.reshape(-1) / s + layer["eps"]))
            alias[top] = src[0]
        elif kind == "Scale":
            gamma, beta = (p.reshape(-1) for p in _params(net, name))
            conv = owner[src[0]]
            mean, inv_std = pending_bn.pop(conv)
            w, b = folded[conv]
            k = gamma * inv_std
            folded[conv] = [w * k[:, None, None, None], (b - mean) * k + beta]
            alias[top] = src[0]
        elif kind == "ReLU":
            nodes.append(helper.make_node("Relu", src, [f"{name}_out"], name=name))
            alias[top] = f"{name}_out"
        elif kind == "Pooling":
            if layer["pool"] != "MAX":
                raise ValueError(f"{name}: only MAX pooling is converted")
            kernel, strides = [layer["kernel_h"], layer["kernel_w"]], [layer["stride_h"], layer["stride_w"]]
            pads = [layer.get("pad_h", 0), layer.get("pad_w", 0)] * 2
            nodes.append(helper.make_node("MaxPool", src, [f"{name}_out"], name=name, kernel_shape=kernel, strides=strides, pads=pads))
            alias[top] = f"{name}_out"
        elif kind == "Concat":
            nodes.append(helper.make_node("Concat", src, [f"{name}_out"], name=name, axis=layer.get("axis", 1)))
            alias[top] = f"{name}_out"
        elif kind == "Softmax":
            nodes.append(helper.make_node("Softmax", src, [f"{name}_out"], name=name, axis=1))
            alias[top] = f"{name}_out"
        else:
            raise ValueError(f"{name}: layer type {kind} is not converted")
    if pending_bn:
        raise ValueError(f"BatchNorm without its Scale after {sorted(pending_bn)}")
    inits = [
        numpy_helper.from_array(v.astype(np.float32), f"{conv}_{part}")
        for conv, (w, b) in folded.items()
        for part, v in (("W", w), ("b", b))
    ]
    final = alias[layers[-1]["top"]]
    graph = helper.make_graph(
        nodes,
        "hyperlpr_segmentation_free",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info(final, TensorProto.FLOAT, [1, 84, None, None])],
        inits,
    )
    opsets = [helper.make_opsetid("", OPSET)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="checkpoint-station bench.convert_segfree")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def max_difference(prototxt: Path, caffemodel: Path, model_bytes: bytes, samples: int = 8) -> float:
    """Return the largest difference of any output probability between OpenCV's forward pass and onnxruntime's."""
    import cv2
    import onnxruntime as ort

    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    worst = 0.0
    for i in range(samples):
        x = rng.random((1, 3, 160, 40), dtype=np.float32)
        if i % 2:  # plate-like: dark characters in bands on a light field
            x = np.where(rng.random((1, 1, 160, 40)) < 0.3, 0.1, 0.9).astype(np.float32) * np.ones((1, 3, 1, 1), np.float32)
        net.setInput(x)
        ref = net.forward()
        got = sess.run(None, {"data": x})[0]
        worst = max(worst, float(np.abs(ref - got).max()))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.convert_segfree", description=__doc__.splitlines()[0])
    ap.add_argument("prototxt", type=Path)
    ap.add_argument("caffemodel", type=Path)
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    model = convert(args.prototxt, args.caffemodel)
    data = model.SerializeToString()
    worst = max_difference(args.prototxt, args.caffemodel, data)
    print(f"largest difference from OpenCV's forward pass: {worst:.2e}")
    if worst >= 1e-4:
        sys.exit(f"not written: the converted net differs from the original by {worst:.2e}")
    args.out.write_bytes(data)
    print(f"wrote {args.out} ({len(data)} bytes)")


if __name__ == "__main__":
    main()
