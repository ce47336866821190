"""Tests for demo model training, ONNX export and the demo's model directory (small training
sets to stay fast)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from streamer.config import load_topology
from streamer.demo.data import FEATURES, feature_matrix, generate_dataset, generate_transactions
from streamer.demo.runner import missing_models
from streamer.demo.train import (
    DEMO_DIRECTORIES,
    DEMO_MODELS,
    build_model,
    ensure_model_directory,
    ensure_models,
    model_metadata,
    train_models,
)
from streamer.models import load_variant_models

ROOT = Path(__file__).resolve().parents[2]

N_TRAIN = 4_000
SEED = 7


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return train_models(tmp_path_factory.mktemp("models"), n_train=N_TRAIN, seed=SEED)


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_writes_one_small_file_per_model(trained: dict[str, Path]) -> None:
    assert list(trained) == ["fraud_v1", "fraud_v2", "fraud_v3"] == list(DEMO_MODELS)
    for stem, path in trained.items():
        assert path.name == f"{stem}.onnx"
        assert 0 < path.stat().st_size < 2 * 1024 * 1024
        assert path.stat().st_mode & 0o444 == 0o444  # readable by the serving processes
    out_dir = trained["fraud_v1"].parent
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(f"{s}.onnx" for s in DEMO_MODELS)


def test_onnx_signature(trained: dict[str, Path]) -> None:
    for path in trained.values():
        session = _session(path)
        (inp,) = session.get_inputs()
        assert (inp.name, inp.type) == ("features", "tensor(float)")
        assert inp.shape[1:] == [len(FEATURES)]
        outputs = {o.name: o.type for o in session.get_outputs()}
        assert outputs == {"label": "tensor(int64)", "probabilities": "tensor(float)"}

        x = feature_matrix(generate_transactions(64, seed=99))
        label, probabilities = session.run(["label", "probabilities"], {"features": x})
        assert label.shape == (64,)
        assert label.dtype == np.int64
        assert probabilities.shape == (64, 2)
        assert probabilities.dtype == np.float32
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
        assert np.array_equal(label, probabilities.argmax(axis=1))


def test_onnx_matches_sklearn(trained: dict[str, Path]) -> None:
    # Same data and seed as train_models, so the refit estimator is the exported one.
    events, labels = generate_dataset(N_TRAIN, seed=SEED)
    x = feature_matrix(events)
    sample = feature_matrix(generate_transactions(1_000, seed=123))
    for stem, path in trained.items():
        model = build_model(stem, seed=SEED).fit(x, labels.astype(np.int64))
        (probabilities,) = _session(path).run(["probabilities"], {"features": sample})
        np.testing.assert_allclose(probabilities, model.predict_proba(sample), atol=1e-5)


def test_metadata_and_tree_models_beat_linear(trained: dict[str, Path]) -> None:
    aucs = {}
    for stem, path in trained.items():
        meta = model_metadata(path)
        assert meta["description"] == DEMO_MODELS[stem]
        assert meta["features"] == ",".join(FEATURES)
        assert meta["n_train"] == str(N_TRAIN)
        aucs[stem] = float(meta["holdout_auc"])
    assert 0.6 < aucs["fraud_v1"] < 0.9
    assert aucs["fraud_v2"] > aucs["fraud_v1"] + 0.05
    assert aucs["fraud_v3"] > aucs["fraud_v1"] + 0.05


def test_ensure_models_trains_only_missing(trained: dict[str, Path], tmp_path: Path) -> None:
    for path in trained.values():
        shutil.copy2(path, tmp_path / path.name)
    (tmp_path / "fraud_v2.onnx").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}

    paths = ensure_models(tmp_path, n_train=N_TRAIN, seed=SEED)

    assert paths == {stem: tmp_path / f"{stem}.onnx" for stem in DEMO_MODELS}
    after = _files(tmp_path)
    assert sorted(after) == sorted(  # v2 is back, and the challenger's directory is there
        [f"{stem}.onnx" for stem in DEMO_MODELS] + ["challenger/1/model.onnx"]
    )
    assert {name: after[name] for name in before} == before  # the others were not touched
    # Second call finds everything present and touches nothing, the new v2 included.
    ensure_models(tmp_path, n_train=N_TRAIN, seed=SEED)
    assert _files(tmp_path) == after


def _files(root: Path) -> dict[str, int]:
    """Every file under `root` (relative path) -> its mtime."""
    return {
        p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()
    }


def test_ensure_models_skips_training_when_all_present(
    trained: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for path in trained.values():
        shutil.copy2(path, tmp_path / path.name)
    monkeypatch.setattr("streamer.demo.train.generate_dataset", _fail)
    paths = ensure_models(tmp_path)
    assert {stem: p.read_bytes() for stem, p in paths.items()} == {
        stem: p.read_bytes() for stem, p in trained.items()
    }


def test_ensure_models_copies_fraud_v2_into_the_challenger_directory(
    trained: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for path in trained.values():
        shutil.copy2(path, tmp_path / path.name)
    monkeypatch.setattr("streamer.demo.train.generate_dataset", _fail)  # nothing to train
    ensure_models(tmp_path)
    version_1 = tmp_path / "challenger" / "1" / "model.onnx"
    assert DEMO_DIRECTORIES == {"challenger": "fraud_v2"}
    assert version_1.read_bytes() == trained["fraud_v2"].read_bytes()
    assert version_1.stat().st_mode & 0o444 == 0o444  # readable by the serving processes
    assert [p.name for p in version_1.parent.iterdir()] == ["model.onnx"]  # no temp file left


def test_ensure_model_directory_keeps_an_existing_version(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    shutil.copy2(trained["fraud_v2"], tmp_path / "fraud_v2.onnx")
    existing = tmp_path / "challenger" / "1" / "model.onnx"
    existing.parent.mkdir(parents=True)
    existing.write_bytes(trained["fraud_v3"].read_bytes())
    (tmp_path / "challenger" / "2").mkdir()

    assert ensure_model_directory(tmp_path, "challenger", "fraud_v2") == existing
    assert existing.read_bytes() == trained["fraud_v3"].read_bytes()
    assert not (tmp_path / "challenger" / "2" / "model.onnx").exists()  # only version 1


def test_ensure_model_directory_needs_its_source_model(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"fraud_v2\.onnx"):
        ensure_model_directory(tmp_path, "challenger", "fraud_v2")
    assert not (tmp_path / "challenger").exists()  # no empty version directory left behind


def test_demo_topology_is_served_once_its_models_are_prepared(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    # The repository's demo topology, against a models/ directory of its own.
    shutil.copytree(ROOT / "schemas", tmp_path / "schemas")
    (tmp_path / "topologies").mkdir()
    shutil.copy2(ROOT / "topologies" / "fraud.yaml", tmp_path / "topologies" / "fraud.yaml")
    topology = load_topology(tmp_path / "topologies" / "fraud.yaml")
    models = tmp_path / "models"
    challenger = next(v for v in topology.variants if v.name == "challenger")
    assert challenger.model == models / "challenger"
    assert topology.routing.control_topic == "fraud-control"

    assert missing_models(topology) == {models: ["fraud_v1.onnx", "challenger", "fraud_v3.onnx"]}
    models.mkdir()
    for path in trained.values():
        shutil.copy2(path, models / path.name)
    (models / "challenger").mkdir()  # an empty model directory has nothing to serve either
    assert missing_models(topology) == {models: ["challenger"]}

    ensure_models(models)

    assert missing_models(topology) == {}
    loaded = load_variant_models(topology)
    assert loaded.errors == {}
    assert {name: m.version for name, m in loaded.models.items()} == {
        "champion": "fraud_v1",
        "challenger": "1",
        "candidate": "fraud_v3",
    }
    assert loaded.models["challenger"].path == models / "challenger" / "1" / "model.onnx"


def _fail(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("ensure_models retrained a model that already exists")


def test_unknown_model_is_rejected() -> None:
    with pytest.raises(KeyError, match="fraud_v9"):
        build_model("fraud_v9")
