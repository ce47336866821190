"""Model directories: which versions are on disk, which are settled, which one serves."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamer.config import VariantSpec
from streamer.repository import (
    MODEL_FILE,
    SETTLE_S,
    ModelFile,
    is_directory,
    preferred,
    scan,
    settled,
    version_key,
)

T0 = 1_700_000_000.0
"""The mtime every test file gets (epoch seconds); clocks are set relative to it."""


def put(path: Path, blob: bytes = b"onnx bytes", mtime: float = T0) -> Path:
    """A file with given content and modification time (no ONNX needed: scan never loads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)
    os.utime(path, (mtime, mtime))
    return path


def spec(model: Path, version: str | None = None) -> VariantSpec:
    return VariantSpec(name="fraud", model=model, version=version)


def test_versions_are_sorted_by_number_not_by_name(tmp_path: Path) -> None:
    for v in ("10", "2", "1", "9"):
        put(tmp_path / "fraud" / v / MODEL_FILE)
    found = scan(spec(tmp_path / "fraud"))
    assert list(found) == ["1", "2", "9", "10"]
    assert found["10"].path == tmp_path / "fraud" / "10" / MODEL_FILE
    assert found["10"].version == "10"


def test_only_positive_numbered_directories_with_a_model_file_count(tmp_path: Path) -> None:
    root = tmp_path / "fraud"
    put(root / "1" / MODEL_FILE)
    put(root / "3" / MODEL_FILE)
    put(root / "0" / MODEL_FILE)  # versions start at 1
    put(root / "00" / MODEL_FILE)
    put(root / "latest" / MODEL_FILE)
    put(root / "v4" / MODEL_FILE)
    put(root / "-5" / MODEL_FILE)
    put(root / "2" / "model.onnx.tmp")  # no model.onnx (yet)
    put(root / "4" / "other.onnx")
    (root / "5").mkdir()  # empty
    (root / "6" / MODEL_FILE).mkdir(parents=True)  # a directory named like the file
    put(root / "7")  # a file, not a directory
    put(root / MODEL_FILE)  # a model file at the top of the directory is not a version
    assert list(scan(spec(root))) == ["1", "3"]


def test_a_non_ascii_digit_directory_is_ignored(tmp_path: Path) -> None:
    root = tmp_path / "fraud"
    put(root / "1" / MODEL_FILE)
    put(root / "²" / MODEL_FILE)
    assert list(scan(spec(root))) == ["1"]


def test_a_file_modified_within_settle_s_is_not_offered_yet(tmp_path: Path) -> None:
    root = tmp_path / "fraud"
    put(root / "1" / MODEL_FILE, mtime=T0 - 60)
    put(root / "2" / MODEL_FILE, mtime=T0)  # still being written, maybe
    found = scan(spec(root))
    assert list(found) == ["1", "2"]  # validate and a starting agent take every file
    assert list(settled(found, {}, T0 + SETTLE_S / 2)) == ["1"]
    assert list(settled(found, {}, T0 + SETTLE_S)) == ["1", "2"]


def test_a_file_stamped_ahead_of_the_clock_settles_once_it_stops_changing(
    tmp_path: Path,
) -> None:
    root = tmp_path / "fraud"
    put(root / "1" / MODEL_FILE, mtime=T0 + 3600)  # clock skew, or a copy keeping times
    first = scan(spec(root))
    assert settled(first, {}, T0) == {}
    assert list(settled(scan(spec(root)), first, T0 + 5)) == ["1"]


def test_a_file_replaced_in_place_gets_a_new_signature(tmp_path: Path) -> None:
    path = put(tmp_path / "fraud" / "1" / MODEL_FILE, b"first", mtime=T0)
    before = scan(spec(tmp_path / "fraud"))["1"]
    assert before.signature[:2] == (5, int(T0 * 1e9))
    put(path, b"second!", mtime=T0 + 5)
    after = scan(spec(tmp_path / "fraud"))["1"]
    assert after.signature[:2] == (7, int((T0 + 5) * 1e9))
    assert after != before


def test_a_file_made_readable_gets_a_new_signature(tmp_path: Path) -> None:
    path = put(tmp_path / "fraud" / "1" / MODEL_FILE, b"model", mtime=T0)
    before = scan(spec(tmp_path / "fraud"))["1"]
    path.chmod(0o000)
    path.chmod(0o644)  # size and mtime stay; the change time moves
    assert scan(spec(tmp_path / "fraud"))["1"] != before


def test_leading_zeros_are_not_another_name_for_a_version(tmp_path: Path) -> None:
    root = tmp_path / "fraud"
    for name in ("7", "007", "0007"):
        put(root / name / MODEL_FILE)
    assert list(scan(spec(root))) == ["7"]


def test_a_model_file_is_one_version_named_by_its_stem(tmp_path: Path) -> None:
    path = put(tmp_path / "fraud_v2.onnx")
    variant = spec(path)
    assert not is_directory(variant)
    found = scan(variant)
    assert list(found) == ["fraud_v2"]
    assert found["fraud_v2"].signature[:2] == (10, int(T0 * 1e9))
    assert found["fraud_v2"] == ModelFile("fraud_v2", path, found["fraud_v2"].signature)


def test_a_model_file_is_one_version_named_by_version(tmp_path: Path) -> None:
    path = put(tmp_path / "fraud_v2.onnx")
    found = scan(spec(path, version="2024-06"))
    assert list(found) == ["2024-06"]
    assert found["2024-06"].path == path


@pytest.mark.parametrize("name", ["absent.onnx", "absent_dir"])
def test_a_missing_path_has_no_versions(tmp_path: Path, name: str) -> None:
    assert scan(spec(tmp_path / name)) == {}


def test_an_empty_directory_has_no_versions(tmp_path: Path) -> None:
    (tmp_path / "fraud").mkdir()
    variant = spec(tmp_path / "fraud")
    assert is_directory(variant)
    assert scan(variant) == {}


def test_version_key_orders_numbers_numerically_then_names() -> None:
    assert sorted(["10", "b", "2", "a", "1"], key=version_key) == ["1", "2", "10", "a", "b"]


# -- preferred -------------------------------------------------------------------------------


def versions(*names: str) -> dict[str, ModelFile]:
    return {n: ModelFile(n, Path(f"/models/fraud/{n}/{MODEL_FILE}"), (1, 1, 1)) for n in names}


def test_preferred_is_the_highest_version() -> None:
    found = versions("1", "2", "10")
    chosen = preferred(found, None, lambda f: False)
    assert chosen is not None and chosen.version == "10"


def test_preferred_skips_refused_versions() -> None:
    found = versions("1", "2", "10")
    chosen = preferred(found, None, lambda f: f.version in {"10", "2"})
    assert chosen is not None and chosen.version == "1"
    assert preferred(found, None, lambda f: True) is None


def test_preferred_is_the_pinned_version_even_if_refused_or_lower() -> None:
    found = versions("1", "2", "10")
    chosen = preferred(found, "2", lambda f: True)
    assert chosen is not None and chosen.version == "2"


def test_a_pinned_version_that_is_not_there_gives_none() -> None:
    assert preferred(versions("1", "2"), "7", lambda f: False) is None
    assert preferred({}, None, lambda f: False) is None
