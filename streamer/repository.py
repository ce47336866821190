"""Model directories (Triton's layout): numbered versions, which one serves, what changed.

A variant's `model` is either one ONNX file or a directory of versions:

    models/fraud/1/model.onnx
    models/fraud/2/model.onnx

The highest version serves unless one is pinned (the topology's `version`, or a control
record's `versions`). Files are found by polling (no extra dependency); a file still being
written is not offered until it has been left alone for `SETTLE_S`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from streamer.config import VariantSpec

MODEL_FILE = "model.onnx"
"""The model file inside each version directory."""
SETTLE_S = 1.0
"""A version file modified more recently than this may still be being written."""


Signature = tuple[int, int, int]
"""(size, mtime_ns, ctime_ns) of a version's file."""


@dataclass(frozen=True)
class ModelFile:
    """One version of a variant's model on disk."""

    version: str
    path: Path
    signature: Signature
    """(size, mtime_ns, ctime_ns): a file replaced in place, or made readable, is a new
    candidate."""


def is_directory(spec: VariantSpec) -> bool:
    """Whether the variant's model is a model directory (else a single file)."""
    return spec.model.is_dir()


def version_key(version: str) -> tuple[int, str]:
    """Sort key: numeric versions by number, anything else after them by name."""
    return (int(version), "") if _numeric(version) else (1 << 62, version)


def _numeric(name: str) -> bool:
    """A version number as Triton writes it: ASCII digits ("²".isdigit() too), no leading
    zero (7 and 007 would be one version twice)."""
    return name.isascii() and name.isdigit() and (name == "0" or not name.startswith("0"))


def scan(spec: VariantSpec) -> dict[str, ModelFile]:
    """The variant's versions on disk, lowest first: for a model file, the file itself (its
    version is `version` or the file's stem); for a directory, every `N/model.onnx`.
    Missing or unreadable paths give no versions."""
    if not spec.model.is_dir():
        found = _model_file(spec.version or spec.model.stem, spec.model)
        return {found.version: found} if found is not None else {}
    versions: dict[str, ModelFile] = {}
    try:
        entries = list(spec.model.iterdir())
    except OSError:
        return versions
    for entry in entries:
        if not (_numeric(entry.name) and int(entry.name) > 0):
            continue
        found = _model_file(entry.name, entry / MODEL_FILE)
        if found is not None:
            versions[found.version] = found
    return dict(sorted(versions.items(), key=lambda kv: version_key(kv[0])))


def settled(
    found: Mapping[str, ModelFile],
    previous: Mapping[str, ModelFile],
    now: float,
    settle_s: float = SETTLE_S,
) -> dict[str, ModelFile]:
    """The versions of `found` that are not being written any more: left alone for
    `settle_s`, or unchanged since the `previous` scan (a file stamped ahead of this clock,
    by clock skew or a copy that keeps times, settles that way)."""
    return {
        v: f
        for v, f in found.items()
        if f.signature[1] / 1e9 <= now - settle_s or previous.get(v) == f
    }


def _model_file(version: str, path: Path) -> ModelFile | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    if not path.is_file():
        return None
    return ModelFile(version, path, (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns))


def preferred(
    versions: Mapping[str, ModelFile], pinned: str | None, refused: Callable[[ModelFile], bool]
) -> ModelFile | None:
    """The version a variant should serve: the pinned one, else the highest not `refused`."""
    if pinned is not None:
        return versions.get(pinned)
    for found in sorted(versions.values(), key=lambda f: version_key(f.version), reverse=True):
        if not refused(found):
            return found
    return None
