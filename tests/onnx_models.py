"""Tiny hand-built ONNX models for tests that need exact control over a model's shape."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OnnxFactory = Callable[..., Path]
"""write(path, *, width=4, dtype="float", rank=2, outputs=("label", "probabilities")) -> path"""

_DTYPES = {"float": TensorProto.FLOAT, "int64": TensorProto.INT64, "double": TensorProto.DOUBLE}


def write_tiny_model(
    path: Path,
    *,
    width: int | None = 4,
    dtype: str = "float",
    rank: int = 2,
    outputs: Sequence[str] = ("label", "probabilities"),
) -> Path:
    """A linear two-class "model" shaped like the demo ones.

    Input `features` is (N, width) of `dtype` ((N, 1, width) for rank 3; width None = dynamic);
    outputs are `probabilities` float32 (N, 2) = features @ W and `label` int64 (N,) = argmax.
    """
    dim: int | str = "F" if width is None else width
    shape: list[int | str] = ["N", dim] if rank == 2 else ["N", 1, dim]
    cols = 4 if width is None else width
    nodes = []
    initializers = [
        helper.make_tensor(
            "w", TensorProto.FLOAT, [cols, 2], np.linspace(-1.0, 1.0, cols * 2).tolist()
        )
    ]
    current = "features"
    if dtype != "float":
        nodes.append(helper.make_node("Cast", [current], ["as_float"], to=TensorProto.FLOAT))
        current = "as_float"
    if rank == 3:
        initializers.append(helper.make_tensor("axes", TensorProto.INT64, [1], [1]))
        nodes.append(helper.make_node("ReduceSum", [current, "axes"], ["flat"], keepdims=0))
        current = "flat"
    nodes.append(helper.make_node("MatMul", [current, "w"], ["probabilities"]))
    if "label" in outputs:
        nodes.append(helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0))
    infos = {
        "probabilities": helper.make_tensor_value_info(
            "probabilities", TensorProto.FLOAT, ["N", 2]
        ),
        "label": helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
    }
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("features", _DTYPES[dtype], shape)],
        [infos[o] for o in outputs],
        initializer=initializers,
    )
    return _save(graph, path)


def write_lookup_model(path: Path, *, table_size: int = 10) -> Path:
    """A model that fails at run time on some inputs, as real graphs can.

    `probabilities` (N, 2) is row int(features[:, 0]) of a (table_size, 2) table and `label`
    its argmax; a first feature outside [-table_size, table_size) makes onnxruntime raise
    (Gather index out of bounds) for the whole call.
    """
    table = np.stack([np.linspace(0, 1, table_size), np.linspace(1, 0, table_size)], axis=1)
    nodes = [
        helper.make_node("Gather", ["features", "first"], ["amount"], axis=1),
        helper.make_node("Cast", ["amount"], ["index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "index"], ["probabilities"], axis=0),
        helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "lookup",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 4])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2]),
        ],
        initializer=[
            helper.make_tensor("first", TensorProto.INT64, [], [0]),
            helper.make_tensor(
                "table", TensorProto.FLOAT, [table_size, 2], table.astype(np.float32).ravel()
            ),
        ],
    )
    return _save(graph, path)


def write_slow_model(path: Path, *, width: int = 1024, layers: int = 8) -> Path:
    """Shaped like `write_tiny_model` (`label`, `probabilities` from (N, 4) float32) but slow:
    `layers` dense (width x width) layers per row, to stand for a model over its budget."""
    rng = np.random.default_rng(0)

    def weights(name: str, rows: int, cols: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.random((rows, cols)) / cols).astype(np.float32), name)

    initializers = [
        weights("w_in", 4, width),
        weights("w", width, width),
        weights("w_out", width, 2),
    ]
    nodes = [helper.make_node("MatMul", ["features", "w_in"], ["h0"])]
    nodes += [helper.make_node("MatMul", [f"h{i}", "w"], [f"h{i + 1}"]) for i in range(layers)]
    nodes += [
        helper.make_node("MatMul", [f"h{layers}", "w_out"], ["probabilities"]),
        helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 4])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2]),
        ],
        initializer=initializers,
    )
    return _save(graph, path)


def write_nan_model(path: Path) -> Path:
    """Shaped like `write_tiny_model` but every output is NaN for a zero row (0 / 0): a
    model that loads and fits, and must still never serve."""
    nodes = [
        helper.make_node("Div", ["features", "features"], ["ratio"]),
        helper.make_node("MatMul", ["ratio", "w"], ["probabilities"]),
        helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "nan",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 4])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2]),
        ],
        initializer=[helper.make_tensor("w", TensorProto.FLOAT, [4, 2], [0.5] * 8)],
    )
    return _save(graph, path)


def write_collapsing_model(path: Path) -> Path:
    """Shaped like `write_tiny_model` on paper, but it sums the whole batch into one row."""
    nodes = [
        helper.make_node("ReduceSum", ["features", "axes"], ["total"], keepdims=1),
        helper.make_node("MatMul", ["total", "w"], ["probabilities"]),
        helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "collapse",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 4])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2]),
        ],
        initializer=[
            helper.make_tensor("w", TensorProto.FLOAT, [4, 2], [0.5] * 8),
            helper.make_tensor("axes", TensorProto.INT64, [1], [0]),
        ],
    )
    return _save(graph, path, check=False)


def _save(graph: onnx.GraphProto, path: Path, *, check: bool = True) -> Path:
    """Write `graph` as a model every onnxruntime the project supports loads (opset 17, IR
    8); `check=False` for a model the checker would refuse on purpose."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if check:
        onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path
