"""Train the three demo fraud models and export them to ONNX.

Every model takes one float32 input ``features`` of shape ``[N, 4]`` (columns in
``streamer.demo.data.FEATURES`` order) and returns ``label`` (int64 ``[N]``) and
``probabilities`` (float32 ``[N, 2]``, column 1 = fraud). The description, holdout ROC AUC and
training parameters are stored in the ONNX ``metadata_props``.

``ensure_models`` also lays out the demo's model directories (Triton layout, see
``streamer.repository``): ``challenger/1/model.onnx`` starts as a copy of ``fraud_v2``, and
versions added next to it while the demo runs are picked up live.

Needs the ``demo`` extra (scikit-learn, skl2onnx, onnx). Run
``python -m streamer.demo.train [OUT_DIR]`` to (re)train all models into ``models/``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from streamer.demo.data import FEATURES, feature_matrix, generate_dataset
from streamer.repository import MODEL_FILE

DEMO_MODELS: dict[str, str] = {
    "fraud_v1": "logistic regression on standardized features (linear baseline)",
    "fraud_v2": "gradient boosting, 100 rounds of depth-3 trees on 50 % subsamples",
    "fraud_v3": "random forest, 30 trees of max depth 8",
}
"""Model file stem -> short description, weakest first."""

DEMO_DIRECTORIES: dict[str, str] = {"challenger": "fraud_v2"}
"""Model directory -> the model file stem its version 1 is a copy of."""

INPUT_NAME = "features"
OUTPUT_NAMES: tuple[str, str] = ("label", "probabilities")
TARGET_OPSET: dict[str, int] = {"": 17, "ai.onnx.ml": 3}
"""Opsets every onnxruntime >= 1.20 (the project's floor) can load."""

# A different seed keeps the holdout independent of the training draw.
_HOLDOUT_SEED_OFFSET = 1_000
_MIN_HOLDOUT = 2_000
_PARITY_ROWS = 512
_PARITY_ATOL = 1e-5


def build_model(stem: str, seed: int = 7) -> Any:
    """Return the unfitted sklearn estimator for demo model ``stem`` (a ``DEMO_MODELS`` key)."""
    if stem == "fraud_v1":
        return Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=1_000))])
    if stem == "fraud_v2":
        # Not HistGradientBoosting: skl2onnx 1.20 emits bool node attributes for it, which
        # onnx >= 1.19 rejects. Subsampling halves fit time at no cost in AUC on this data.
        return GradientBoostingClassifier(
            n_estimators=100, max_depth=3, learning_rate=0.1, subsample=0.5, random_state=seed
        )
    if stem == "fraud_v3":
        return RandomForestClassifier(
            n_estimators=30, max_depth=8, min_samples_leaf=5, n_jobs=-1, random_state=seed
        )
    raise KeyError(f"unknown demo model {stem!r}; expected one of {sorted(DEMO_MODELS)}")


def holdout_auc(model: Any, features: npt.NDArray[np.float32], labels: npt.NDArray[Any]) -> float:
    """ROC AUC of a fitted classifier's fraud probability on ``features`` vs ``labels``."""
    return float(roc_auc_score(labels, model.predict_proba(features)[:, 1]))


def onnx_probabilities(
    model_bytes: bytes, features: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """Run a serialized demo model in onnxruntime and return its ``[N, 2]`` probabilities."""
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    (probabilities,) = session.run([OUTPUT_NAMES[1]], {INPUT_NAME: features})
    return np.asarray(probabilities, dtype=np.float32)


def model_metadata(path: Path) -> dict[str, str]:
    """Read the ``metadata_props`` written by ``train_models`` from an ONNX file."""
    model = onnx.load(str(path), load_external_data=False)
    return {prop.key: prop.value for prop in model.metadata_props}


def _to_onnx(model: Any, stem: str, auc: float, n_train: int, seed: int) -> bytes:
    # zipmap must be disabled on the classifier itself, which is the last step of a pipeline.
    classifier = model.steps[-1][1] if hasattr(model, "steps") else model
    onx = convert_sklearn(
        model,
        name=stem,
        initial_types=[(INPUT_NAME, FloatTensorType([None, len(FEATURES)]))],
        options={id(classifier): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    # skl2onnx may list the default domain twice; keep one entry per domain (highest version).
    opsets: dict[str, int] = {}
    for entry in onx.opset_import:
        opsets[entry.domain] = max(entry.version, opsets.get(entry.domain, 0))
    del onx.opset_import[:]
    onx.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in opsets.items())
    onx.doc_string = DEMO_MODELS[stem]
    onnx.helper.set_model_props(
        onx,
        {
            "name": stem,
            "description": DEMO_MODELS[stem],
            "holdout_auc": f"{auc:.4f}",
            "features": ",".join(FEATURES),
            "n_train": str(n_train),
            "seed": str(seed),
        },
    )
    data: bytes = onx.SerializeToString()
    return data


def _write_atomically(path: Path, data: bytes) -> None:
    # Same-directory temp file so os.replace is a rename: readers never see a partial model.
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; models are shared artifacts that other processes must read.
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _train(out_dir: Path, stems: list[str], n_train: int, seed: int) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    if not stems:
        return {}
    events, labels = generate_dataset(n_train, seed=seed)
    features = feature_matrix(events)
    hold_events, hold_labels = generate_dataset(
        max(n_train // 4, _MIN_HOLDOUT), seed=seed + _HOLDOUT_SEED_OFFSET
    )
    hold_features = feature_matrix(hold_events)
    # int64 targets make skl2onnx emit an int64 ``label`` output.
    targets = labels.astype(np.int64)

    paths: dict[str, Path] = {}
    for stem in stems:
        model = build_model(stem, seed).fit(features, targets)
        auc = holdout_auc(model, hold_features, hold_labels)
        data = _to_onnx(model, stem, auc, n_train, seed)
        # Refuse to publish a model whose ONNX scores drift from what was evaluated.
        sample = hold_features[:_PARITY_ROWS]
        drift = np.abs(onnx_probabilities(data, sample) - model.predict_proba(sample)).max()
        if drift > _PARITY_ATOL:
            raise RuntimeError(f"{stem}: ONNX probabilities differ from sklearn by {drift:.2e}")
        path = out_dir / f"{stem}.onnx"
        _write_atomically(path, data)
        paths[stem] = path
    return paths


def train_models(out_dir: Path, n_train: int = 40_000, seed: int = 7) -> dict[str, Path]:
    """Train every model in ``DEMO_MODELS`` and write ``out_dir/<stem>.onnx``, replacing any."""
    return _train(out_dir, list(DEMO_MODELS), n_train, seed)


def ensure_models(out_dir: Path, n_train: int = 40_000, seed: int = 7) -> dict[str, Path]:
    """Return paths of all demo models, training only those whose file is missing, and
    create each ``DEMO_DIRECTORIES`` version 1 that is missing (``ensure_model_directory``)."""
    missing = [stem for stem in DEMO_MODELS if not (out_dir / f"{stem}.onnx").is_file()]
    _train(out_dir, missing, n_train, seed)
    ensure_model_directories(out_dir)
    return {stem: out_dir / f"{stem}.onnx" for stem in DEMO_MODELS}


def ensure_model_directory(out_dir: Path, name: str, stem: str) -> Path:
    """Return ``out_dir/name/1/model.onnx``, first copying ``out_dir/stem.onnx`` there
    (atomically: an agent watching the directory never sees half a file) if it is missing.

    An existing version 1 is kept, even when ``stem`` was retrained since: an agent may be
    serving it, and a new model belongs in a new version directory."""
    path = out_dir / name / "1" / MODEL_FILE
    if not path.is_file():
        data = (out_dir / f"{stem}.onnx").read_bytes()
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, data)
    return path


def ensure_model_directories(out_dir: Path) -> dict[str, Path]:
    """``ensure_model_directory`` for every ``DEMO_DIRECTORIES`` entry: name -> version 1."""
    return {
        name: ensure_model_directory(out_dir, name, stem) for name, stem in DEMO_DIRECTORIES.items()
    }


def main(argv: list[str] | None = None) -> int:
    """Train all demo models into ``argv[0]`` (default ``models``), create the model
    directories that are missing and print a summary."""
    args = sys.argv[1:] if argv is None else argv
    out_dir = Path(args[0] if args else "models")
    started = time.perf_counter()
    paths = train_models(out_dir)
    elapsed = time.perf_counter() - started
    for stem, path in paths.items():
        auc = model_metadata(path)["holdout_auc"]
        print(f"{stem}  auc={auc}  size={path.stat().st_size / 1024:.1f} KiB  {path}")
    print(f"trained {len(paths)} models in {elapsed:.1f} s")
    for name, path in ensure_model_directories(out_dir).items():
        print(f"{name}/1  copy of {DEMO_DIRECTORIES[name]} (an existing one is kept)  {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
