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
from streamer.repository import is_directory, scan, version_key


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

    def predict(
        self, features: np.ndarray, run_options: ort.RunOptions | None = None
    ) -> dict[str, np.ndarray]:
        """One vectorised call for the whole batch; outputs keyed by ONNX output name.
        `run_options` lets another thread stop the call (`terminate`)."""
        values = self.session.run(list(self.output_names), {self.input_name: features}, run_options)
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


def probe(model: Model, rows: np.ndarray) -> None:
    """Run `model` on `rows` (recent real events, or zero rows when there are none yet);
    ModelError unless it runs and every float output is finite."""
    if len(rows) < 2:  # two rows at least: a model that collapses the batch shows
        rows = np.zeros((2, rows.shape[1] if rows.ndim == 2 else 0), dtype=np.float32)
    try:
        outputs = model.predict(rows)
    except Exception as exc:  # onnxruntime raises many types at run time
        raise ModelError(f"{model.path}: fails on a probe batch: {first_line(exc)}") from None
    for name, value in outputs.items():
        if value.ndim == 0 or value.shape[0] != len(rows):
            raise ModelError(
                f"{model.path}: output {name!r} has shape {value.shape} for {len(rows)} rows "
                "(one row out per row in)"
            )
        if value.dtype.kind in "fc" and not np.isfinite(value).all():
            raise ModelError(f"{model.path}: output {name!r} is NaN or infinite on a probe batch")


@dataclass(frozen=True)
class LoadedVariants:
    """The models a topology starts with, and what could not be loaded."""

    models: dict[str, Model]
    """Variant -> the model it serves first."""
    errors: dict[int, ModelError]
    """Index in `variants` -> why that variant has no model to serve."""
    refused: dict[str, dict[str, str]]
    """Variant -> model-directory version -> why it cannot serve (another version does)."""
    versions: dict[str, list[str]]
    """Variant -> every version found on disk, lowest first."""


def load_variant_models(topology: Topology, *, every_version: bool = False) -> LoadedVariants:
    """Every variant's model checked against the topology's features and outputs and against
    the first loadable variant (`check_compatible`).

    A model directory serves its pinned version (`version`), else its highest version that
    loads; `every_version` also loads the rest, to report each one that could not serve.
    """
    n = len(topology.features)
    loaded = LoadedVariants({}, {}, {}, {})
    reference: Model | None = None
    for i, variant in enumerate(topology.variants):
        found = scan(variant)
        loaded.versions[variant.name] = list(found)
        if not found:
            what = (
                "model directory has no N/model.onnx"
                if is_directory(variant)
                else "model file not found"
            )
            loaded.errors[i] = ModelError(f"{variant.model}: {what}")
            continue
        if is_directory(variant) and variant.version is not None:
            if variant.version not in found:
                loaded.errors[i] = ModelError(
                    f"{variant.model}: version {variant.version} not found (has {', '.join(found)})"
                )
                continue
            candidates = [found[variant.version]]
        else:
            candidates = sorted(found.values(), key=lambda f: version_key(f.version), reverse=True)
        refused: dict[str, str] = {}
        serving: Model | None = None
        for file in candidates:
            if serving is not None and not every_version:
                break
            try:
                model = load_model(file.path, n, topology.outputs, file.version)
                model = check_compatible(variant.name, reference or serving or model, model)
                # What a running agent checks before a swap, a starting one checks too.
                probe(model, np.zeros((0, n), dtype=np.float32))
            except ModelError as exc:
                refused[file.version] = str(exc)
                continue
            serving = serving or model
        if serving is None:
            loaded.errors[i] = ModelError(refused[candidates[0].version])
            continue
        if is_directory(variant) and refused:
            loaded.refused[variant.name] = refused
        reference = reference or serving
        loaded.models[variant.name] = serving
    return loaded
