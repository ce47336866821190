"""ONNX models: load and check them against the topology, then score float32 batches."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from streamer.config import Topology
from streamer.errors import StreamerError


class ModelError(StreamerError):
    """A model file that cannot serve this topology; the message is one line."""


def session_options() -> ort.SessionOptions:
    """One intra-op thread, no spinning: the agent, the broker and peers share two cores,
    and parallelism comes from more agent processes, not more threads per call."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


@dataclass(frozen=True)
class Model:
    """A loaded ONNX model whose single input takes (batch, n_features) float32."""

    path: Path
    version: str
    sha256: str
    session: ort.InferenceSession
    input_name: str
    output_names: tuple[str, ...]

    def predict(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """One vectorised call for the whole batch; outputs keyed by ONNX output name."""
        values = self.session.run(list(self.output_names), {self.input_name: features})
        return {name: np.asarray(v) for name, v in zip(self.output_names, values, strict=True)}


def load_model(
    path: Path, n_features: int, outputs: Sequence[str] | None = None, version: str | None = None
) -> Model:
    """Load a model and check it takes `n_features` float32 columns and has `outputs`."""
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"{path}: model file not found") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read model: {exc.strerror}") from None
    try:
        session = ort.InferenceSession(
            blob, sess_options=session_options(), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own hierarchy for invalid graphs
        raise ModelError(f"{path}: not a loadable ONNX model: {first_line(exc)}") from None
    inputs = session.get_inputs()
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise ModelError(f"{path}: needs exactly one input, has {len(inputs)} ({names})")
    spec = inputs[0]
    if spec.type != "tensor(float)":
        raise ModelError(f"{path}: input {spec.name!r} is {spec.type}, expected tensor(float)")
    shape = list(spec.shape)
    if len(shape) != 2:
        raise ModelError(
            f"{path}: input {spec.name!r} has rank {len(shape)}, expected 2 (batch, features)"
        )
    width = shape[1]
    if isinstance(width, int) and width != n_features:
        raise ModelError(
            f"{path}: input {spec.name!r} takes {width} features, the topology lists {n_features}"
        )
    available = tuple(o.name for o in session.get_outputs())
    if outputs is not None:
        missing = [o for o in outputs if o not in available]
        if missing:
            raise ModelError(
                f"{path}: no output named {', '.join(map(repr, missing))} "
                f"(has {', '.join(available)})"
            )
    model = Model(
        path=path,
        version=version or path.stem,
        sha256=hashlib.sha256(blob).hexdigest(),
        session=session,
        input_name=spec.name,
        output_names=tuple(outputs) if outputs is not None else available,
    )
    if not isinstance(width, int):
        # A dynamic width is only checked by running it once.
        try:
            model.predict(np.zeros((1, n_features), dtype=np.float32))
        except Exception as exc:
            raise ModelError(
                f"{path}: fails on a (1, {n_features}) float32 input: {first_line(exc)}"
            ) from None
    return model


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception as one short line (onnxruntime's messages span many lines, or none)."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


def output_types(model: Model) -> dict[str, tuple[str, tuple[int | None, ...]]]:
    """Output name -> (ONNX type, shape without the batch dimension; None where dynamic)."""
    specs = {o.name: o for o in model.session.get_outputs()}
    return {
        name: (
            specs[name].type,
            tuple(d if isinstance(d, int) else None for d in list(specs[name].shape)[1:]),
        )
        for name in model.output_names
    }


def check_compatible(name: str, current: Model, candidate: Model) -> Model:
    """`candidate` with `current`'s output order if it can stand in for it; else ModelError.

    Variants of one topology, and every version of one variant, must publish the same
    fields: the same output names (in any order) with the same types and fixed dimensions.
    """
    have, want = output_types(candidate), output_types(current)
    if set(candidate.output_names) != set(current.output_names):
        raise ModelError(
            f"{candidate.path}: variant {name} has outputs {', '.join(candidate.output_names)}, "
            f"expected {', '.join(current.output_names)}"
        )
    for out, spec in want.items():
        if have[out] != spec:
            raise ModelError(
                f"{candidate.path}: variant {name} output {out!r} is {_shape(have[out])}, "
                f"expected {_shape(spec)}"
            )
    return dataclasses.replace(candidate, output_names=current.output_names)


def _shape(spec: tuple[str, tuple[int | None, ...]]) -> str:
    dims = ", ".join("?" if d is None else str(d) for d in ("N", *spec[1]))
    return f"{spec[0]} ({dims})"


def load_variant_models(topology: Topology) -> tuple[dict[str, Model], dict[int, ModelError]]:
    """Every variant's model checked against the topology's features and outputs and against
    the first loadable variant (`check_compatible`), and the error of each variant (by index
    in `variants`) whose model cannot serve it."""
    models: dict[str, Model] = {}
    errors: dict[int, ModelError] = {}
    reference: Model | None = None
    for i, variant in enumerate(topology.variants):
        try:
            model = load_model(
                variant.model, len(topology.features), topology.outputs, variant.version
            )
            if reference is not None:
                model = check_compatible(variant.name, reference, model)
        except ModelError as exc:
            errors[i] = exc
            continue
        reference = reference or model
        models[variant.name] = model
    return models, errors
