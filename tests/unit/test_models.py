"""load_model: every unusable model is one ModelError line naming the file; predict's shape."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from streamer.demo.data import FEATURES, feature_matrix, generate_transactions
from streamer.errors import StreamerError
from streamer.models import ModelError, load_model, session_options
from tests.onnx_models import OnnxFactory


def two_input_model(path: Path) -> Path:
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 4])
    out = helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["sum"])], "two", [a, b], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def assert_one_line_error(exc: pytest.ExceptionInfo[ModelError], path: Path, fragment: str) -> None:
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: "), message
    assert fragment in message, message
    assert isinstance(exc.value, StreamerError)  # the CLI turns it into exit code 1


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.onnx"
    with pytest.raises(ModelError) as exc:
        load_model(path, 4)
    assert_one_line_error(exc, path, "model file not found")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    path = tmp_path / "a_dir.onnx"
    path.mkdir()
    with pytest.raises(ModelError) as exc:
        load_model(path, 4)
    assert_one_line_error(exc, path, "cannot read model")


@pytest.mark.parametrize("blob", [os.urandom(1024), b"", b"not an onnx model\n" * 50])
def test_garbage_bytes(tmp_path: Path, blob: bytes) -> None:
    path = tmp_path / "garbage.onnx"
    path.write_bytes(blob)
    with pytest.raises(ModelError) as exc:
        load_model(path, 4)
    assert_one_line_error(exc, path, "not a loadable ONNX model")


def test_wrong_width(tmp_path: Path, tiny_model: OnnxFactory) -> None:
    path = tiny_model(tmp_path / "three.onnx", width=3)
    with pytest.raises(ModelError) as exc:
        load_model(path, 4)
    assert_one_line_error(exc, path, "takes 3 features, the topology lists 4")


@pytest.mark.parametrize("dtype", ["int64", "double"])
def test_non_float_input(tmp_path: Path, tiny_model: OnnxFactory, dtype: str) -> None:
    path = tiny_model(tmp_path / f"{dtype}.onnx", dtype=dtype)
    with pytest.raises(ModelError) as exc:
        load_model(path, 4)
    assert_one_line_error(exc, path, f"is tensor({dtype}), expected tensor(float)")


def test_rank_three_input(tmp_path: Path, tiny_model: OnnxFactory) -> None:
    path = tiny_model(tmp_path / "rank3.onnx", rank=3)
    with pytest.raises(ModelError) as exc:
        load_model(path, 4)
    assert_one_line_error(exc, path, "has rank 3, expected 2")


def test_two_inputs(tmp_path: Path) -> None:
    path = two_input_model(tmp_path / "two.onnx")
    with pytest.raises(ModelError) as exc:
        load_model(path, 4)
    assert_one_line_error(exc, path, "needs exactly one input, has 2 (a, b)")


def test_missing_output(tmp_path: Path, tiny_model: OnnxFactory) -> None:
    path = tiny_model(tmp_path / "m.onnx")
    with pytest.raises(ModelError) as exc:
        load_model(path, 4, outputs=["score", "label"])
    assert_one_line_error(exc, path, "no output named 'score' (has label, probabilities)")


def test_dynamic_width_is_checked_by_running(tmp_path: Path, tiny_model: OnnxFactory) -> None:
    path = tiny_model(tmp_path / "dynamic.onnx", width=None)  # weights are 4 x 2
    assert load_model(path, 4).output_names == ("label", "probabilities")
    with pytest.raises(ModelError) as exc:
        load_model(path, 3)
    assert_one_line_error(exc, path, "fails on a (1, 3) float32 input")


def test_session_options_use_one_thread() -> None:
    opts = session_options()
    assert opts.intra_op_num_threads == 1
    assert opts.inter_op_num_threads == 1
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL


def test_loaded_session_uses_one_intra_op_thread(tmp_path: Path, tiny_model: OnnxFactory) -> None:
    model = load_model(tiny_model(tmp_path / "m.onnx"), 4)
    assert model.session.get_session_options().intra_op_num_threads == 1
    assert model.session.get_providers() == ["CPUExecutionProvider"]


def test_metadata(tmp_path: Path, tiny_model: OnnxFactory) -> None:
    path = tiny_model(tmp_path / "fraud_v7.onnx")
    model = load_model(path, 4)
    assert model.path == path
    assert model.version == "fraud_v7"
    assert model.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert model.input_name == "features"
    assert model.output_names == ("label", "probabilities")
    assert load_model(path, 4, version="2024-06-01").version == "2024-06-01"


def test_predict_returns_outputs_by_name(tmp_path: Path, tiny_model: OnnxFactory) -> None:
    model = load_model(tiny_model(tmp_path / "m.onnx"), 4)
    x = np.arange(20, dtype=np.float32).reshape(5, 4)
    out = model.predict(x)
    assert list(out) == ["label", "probabilities"]
    assert out["probabilities"].dtype == np.float32
    assert out["probabilities"].shape == (5, 2)
    assert out["label"].dtype == np.int64
    assert out["label"].shape == (5,)
    w = np.array(onnx.numpy_helper.to_array(onnx.load(str(model.path)).graph.initializer[0]))
    np.testing.assert_allclose(out["probabilities"], x @ w, rtol=1e-6)
    np.testing.assert_array_equal(out["label"], np.argmax(x @ w, axis=1))


def test_predict_selected_outputs_only(tmp_path: Path, tiny_model: OnnxFactory) -> None:
    model = load_model(tiny_model(tmp_path / "m.onnx"), 4, outputs=["probabilities"])
    assert model.output_names == ("probabilities",)
    out = model.predict(np.ones((3, 4), dtype=np.float32))
    assert list(out) == ["probabilities"]


def test_predict_with_demo_models(demo_models: dict[str, Path]) -> None:
    x = feature_matrix(generate_transactions(257, seed=3))
    for stem, path in demo_models.items():
        model = load_model(path, len(FEATURES))
        assert model.version == stem
        out = model.predict(x)
        assert set(out) == {"label", "probabilities"}
        assert out["label"].shape == (257,)
        assert out["probabilities"].shape == (257, 2)
        np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
        assert set(np.unique(out["label"]).tolist()) <= {0, 1}
        empty = model.predict(np.empty((0, len(FEATURES)), dtype=np.float32))
        assert empty["probabilities"].shape[0] == 0
