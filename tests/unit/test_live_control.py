"""Live control without Kafka: control records and model-directory versions reach the
variant set at the next batch boundary; whatever cannot serve is refused and counted.

The topologies here have no control topic, so `start()` is never called; the tests drive the
control thread's steps (`_receive`, `_rescan`, `_catch_up`) directly.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import yaml

from streamer.config import Topology, load_topology
from streamer.control.live import LiveControl, RecentRows
from streamer.control.topic import Entry
from streamer.metrics import Metrics
from streamer.models import load_variant_models
from streamer.repository import MODEL_FILE, SETTLE_S
from streamer.variants import Variants
from tests.onnx_models import write_collapsing_model, write_nan_model, write_tiny_model

TOPOLOGY = "fraud"


@dataclass
class Rig:
    """One agent's live-control parts, built the way the agent builds them."""

    topology: Topology
    variants: Variants
    metrics: Metrics
    recent: RecentRows
    live: LiveControl
    models: Path

    def receive(self, value: dict[str, Any] | bytes | None, offset: int) -> bool:
        body = orjson.dumps(value) if isinstance(value, dict) else value
        return self.live._receive(Entry(TOPOLOGY, body, offset, 0, 1_700_000_000_000 + offset))

    def serving(self, name: str = "a") -> str:
        """The version `name` serves from the next batch on (applies the staged change)."""
        return self.variants.snapshot().models[name].version

    def reloads(self, result: str, name: str = "a") -> float:
        return self.metrics.value("streamer_model_reloads_total", variant=name, result=result)

    def records(self, result: str) -> float:
        return self.metrics.value("streamer_control_records_total", result=result)

    def model_info(self, name: str = "a") -> set[str]:
        """Versions `streamer_model_info` shows for variant `name`."""
        return {
            s.labels["version"]
            for m in self.metrics.registry.collect()
            for s in m.samples
            if s.name == "streamer_model_info" and s.labels["variant"] == name
        }


def settled(path: Path) -> Path:
    """Back-date a version file so the watcher's SETTLE_S check passes without a sleep."""
    old = time.time() - 10 * SETTLE_S
    os.utime(path, (old, old))
    return path


def version(root: Path, v: int | str, **model: Any) -> Path:
    """Write `root/v/model.onnx` (a tiny linear model; keywords go to write_tiny_model)."""
    return settled(write_tiny_model(root / str(v) / MODEL_FILE, **model))


def corrupt(root: Path, v: int | str, blob: bytes = b"not an onnx model\n" * 20) -> Path:
    path = root / str(v) / MODEL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)
    return settled(path)


def make_rig(
    tmp_path: Path,
    *,
    versions: tuple[int, ...] = (1,),
    broken: tuple[int, ...] = (),
    a: dict[str, Any] | None = None,
    routing: dict[str, Any] | None = None,
) -> Rig:
    """Served a (weight 3, a model directory with `versions` and corrupt `broken` ones) and
    b (weight 1, a file); shadow s (sample_rate .5, a file)."""
    models = tmp_path / "models"
    for v in versions:
        version(models / "a", v)
    for v in broken:
        corrupt(models / "a", v)
    write_tiny_model(models / "b.onnx")
    write_tiny_model(models / "s.onnx")
    spec: dict[str, Any] = {
        "name": TOPOLOGY,
        "input": {"topic": "tx"},
        "features": ["f1", "f2", "f3", "f4"],
        "variants": [
            {"name": "a", "model": "models/a", "weight": 3, **(a or {})},
            {"name": "b", "model": "models/b.onnx", "weight": 1},
            {"name": "s", "model": "models/s.onnx", "shadow": True, "sample_rate": 0.5},
        ],
        "output": {"topic": "scores"},
        "lake": {"topic": "lake"},
        "dead_letter": {"topic": "tx-dlq"},
        "metrics": {"port": None},
    }
    if routing is not None:
        spec["routing"] = routing
        if routing.get("strategy") == "bandit":
            spec["bandit"] = {"feedback_topic": "fb"}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(spec))
    topology = load_topology(tmp_path / "t.yaml")
    loaded = load_variant_models(topology)
    assert not loaded.errors
    metrics = Metrics()
    variants = Variants(topology, loaded.models, metrics)
    recent = RecentRows(len(topology.features))
    live = LiveControl(topology, variants, loaded.models, metrics, recent)
    return Rig(topology, variants, metrics, recent, live, models / "a")


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return make_rig(tmp_path)


def weights(rig: Rig) -> dict[str, float]:
    return rig.metrics.by_label("streamer_variant_weight", "variant")


# -- control records -----------------------------------------------------------------------


def test_without_a_control_topic_nothing_is_followed_but_model_directories(rig: Rig) -> None:
    assert rig.topology.routing.control_topic is None
    assert rig.live.needed  # variant a is a model directory
    status = rig.live.status()
    assert status["control"] is None and status["control_rejected"] is None
    assert status["variants"]["a"]["versions"] == ["1"]
    assert status["variants"]["b"]["weight"] == pytest.approx(0.25)
    assert status["variants"]["s"]["sample_rate"] == 0.5


def test_a_valid_record_applies_at_the_next_snapshot(rig: Rig) -> None:
    in_progress = rig.variants.snapshot()
    assert in_progress.router.weights == pytest.approx({"a": 0.75, "b": 0.25})
    assert in_progress.shadows == {"s": 0.5}

    assert rig.receive({"weights": {"a": 0.2, "b": 0.8}, "disabled": ["s"], "source": "cli"}, 7)

    # The batch being served keeps its set; gauges still describe it.
    assert in_progress.router.weights == pytest.approx({"a": 0.75, "b": 0.25})
    assert weights(rig) == pytest.approx({"a": 0.75, "b": 0.25})
    snap = rig.variants.snapshot()
    assert snap.router.weights == pytest.approx({"a": 0.2, "b": 0.8})
    assert snap.shadows == {}
    assert weights(rig) == pytest.approx({"a": 0.2, "b": 0.8})
    assert rig.records("applied") == 1
    assert rig.records("rejected") == 0
    status = rig.live.status()
    assert status["control"] == {"offset": 7, "source": "cli", "ts": 1_700_000_000_007}
    assert status["variants"]["s"]["enabled"] is False
    assert status["variants"]["a"]["weight"] == pytest.approx(0.2)


def test_a_disabled_served_variant_shows_weight_0(rig: Rig) -> None:
    assert rig.receive({"weights": {"a": 0.75, "b": 0.25}, "disabled": ["a"]}, 1)
    assert rig.variants.snapshot().router.weights == {"b": 1.0}
    assert weights(rig) == {"a": 0.0, "b": 1.0}


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (b"{not json", "not JSON"),
        (orjson.dumps({"weights": {"a": 0.5, "b": 0.4}}), "weights sum to 0.9"),
        (orjson.dumps({"weights": {"a": 0.5, "zz": 0.5}}), "unknown variant 'zz'"),
        (orjson.dumps({"weights": {"a": 0.5, "s": 0.5}}), "s is a shadow"),
        (orjson.dumps({"weights": {"a": 1.0}, "versions": {"b": "1"}}), "b serves a model file"),
        (orjson.dumps({"weights": {"a": 1.0}, "versions": {"a": "9"}}), "a has no version 9"),
        (orjson.dumps({"weights": {"a": 1.0, "b": 0.0}, "disabled": ["a"]}), "no enabled"),
    ],
)
def test_an_invalid_record_is_rejected_and_the_last_good_one_stays(
    rig: Rig, value: bytes, fragment: str
) -> None:
    assert rig.receive({"weights": {"a": 0.5, "b": 0.5}, "disabled": ["s"]}, 3)
    good = rig.variants.snapshot()
    assert not rig.receive(value, 4)
    assert rig.records("rejected") == 1
    assert rig.records("applied") == 1
    assert rig.variants.snapshot() is good  # nothing staged
    assert good.router.weights == pytest.approx({"a": 0.5, "b": 0.5})
    assert good.shadows == {}
    assert weights(rig) == pytest.approx({"a": 0.5, "b": 0.5})
    status = rig.live.status()
    assert status["control"]["offset"] == 3
    assert status["control_rejected"]["offset"] == 4
    assert fragment in status["control_rejected"]["reason"]
    assert rig.serving() == "1"


def test_a_rejected_first_record_leaves_the_topology_files_weights(rig: Rig) -> None:
    start = rig.variants.snapshot()
    assert not rig.receive(b"", 0)
    assert rig.variants.snapshot() is start
    assert start.router.weights == pytest.approx({"a": 0.75, "b": 0.25})
    assert rig.live.status()["control"] is None
    assert rig.records("rejected") == 1


def test_static_ignores_the_controller_but_obeys_a_person(rig: Rig) -> None:
    assert rig.topology.routing.strategy == "static"
    start = rig.variants.snapshot()
    assert not rig.receive({"weights": {"a": 0.0, "b": 1.0}, "source": "controller"}, 1)
    assert rig.records("ignored") == 1
    assert rig.records("applied") == 0
    assert rig.variants.snapshot() is start
    assert rig.live.status()["control"] is None

    assert rig.receive({"weights": {"a": 0.1, "b": 0.9}, "source": "cli"}, 2)
    assert rig.variants.snapshot().router.weights == pytest.approx({"a": 0.1, "b": 0.9})
    assert rig.receive({"weights": {"a": 0.3, "b": 0.7}}, 3)  # no source: a person's
    assert rig.variants.snapshot().router.weights == pytest.approx({"a": 0.3, "b": 0.7})
    assert rig.records("applied") == 2
    assert rig.records("ignored") == 1


def test_bandit_obeys_the_controller(tmp_path: Path) -> None:
    # The constructor never touches Kafka; only start() would.
    rig = make_rig(tmp_path, routing={"strategy": "bandit", "control_topic": "ctl"})
    assert rig.receive({"weights": {"a": 0.0, "b": 1.0}, "source": "controller"}, 1)
    assert rig.variants.snapshot().router.weights == {"a": 0.0, "b": 1.0}
    assert rig.records("applied") == 1 and rig.records("ignored") == 0
    assert rig.live.status()["control"]["source"] == "controller"


def test_a_tombstone_returns_to_the_topologys_weights(rig: Rig) -> None:
    assert rig.receive({"weights": {"a": 0.0, "b": 1.0}, "disabled": ["s"]}, 1)
    snap = rig.variants.snapshot()
    assert snap.router.weights == {"a": 0.0, "b": 1.0} and snap.shadows == {}

    assert rig.receive(None, 2)
    snap = rig.variants.snapshot()
    assert snap.router.weights == pytest.approx({"a": 0.75, "b": 0.25})
    assert snap.shadows == {"s": 0.5}
    assert weights(rig) == pytest.approx({"a": 0.75, "b": 0.25})
    assert rig.records("applied") == 2
    assert rig.live.status()["control"]["source"] == "deleted"


def test_catching_up_applies_the_newest_record_that_is_valid(rig: Rig) -> None:
    entries = [
        Entry(TOPOLOGY, orjson.dumps({"weights": {"a": 0.1, "b": 0.9}}), 0, 0, 0),
        Entry(TOPOLOGY, orjson.dumps({"weights": {"a": 0.4, "b": 0.6}}), 1, 0, 0),
        Entry(TOPOLOGY, b"broken", 2, 0, 0),
    ]
    rig.live._catch_up(entries)
    assert rig.variants.snapshot().router.weights == pytest.approx({"a": 0.4, "b": 0.6})
    assert rig.records("rejected") == 1
    assert rig.records("applied") == 1
    assert rig.live.status()["control"]["offset"] == 1


# -- model directories: hot reload -------------------------------------------------------------


def test_a_new_version_serves_after_a_rescan(rig: Rig) -> None:
    assert rig.serving() == "1"
    assert rig.model_info() == {"1"}
    version(rig.models, 2)
    rig.live._rescan()
    assert rig.serving() == "2"
    assert rig.reloads("applied") == 1
    assert rig.reloads("rejected") == 0
    assert rig.model_info() == {"2"}
    status = rig.live.status()["variants"]["a"]
    assert status["version"] == "2" and status["versions"] == ["1", "2"]
    assert status["pinned"] is None and status["rejected"] == {}
    # Nothing new: the next rescan changes nothing.
    rig.live._rescan()
    assert rig.serving() == "2"
    assert rig.reloads("applied") == 1


def test_a_version_still_being_written_waits(rig: Rig) -> None:
    path = write_tiny_model(rig.models / "2" / MODEL_FILE)
    # Modified "now": a little ahead, so a slow machine cannot let SETTLE_S pass meanwhile.
    now = time.time() + 60
    os.utime(path, (now, now))
    rig.live._rescan()
    assert rig.serving() == "1"
    assert rig.reloads("applied") == 0
    settled(rig.models / "2" / MODEL_FILE)
    rig.live._rescan()
    assert rig.serving() == "2"


def test_a_new_version_keeps_the_configured_weights(rig: Rig) -> None:
    assert rig.receive({"weights": {"a": 0.4, "b": 0.6}, "disabled": ["s"]}, 1)
    version(rig.models, 2)
    rig.live._rescan()
    snap = rig.variants.snapshot()
    assert snap.models["a"].version == "2"
    assert snap.router.weights == pytest.approx({"a": 0.4, "b": 0.6})
    assert snap.shadows == {}


def test_a_corrupt_version_is_rejected_once_and_not_retried(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, versions=(1, 2))
    assert rig.serving() == "2"
    corrupt(rig.models, 3)
    rig.live._rescan()
    rig.live._rescan()
    assert rig.serving() == "2"
    assert rig.reloads("rejected") == 1
    assert rig.reloads("applied") == 0
    rejected = rig.live.status()["variants"]["a"]["rejected"]
    assert list(rejected) == ["3"]
    assert "not a loadable ONNX model" in rejected["3"]
    assert rig.model_info() == {"2"}


def test_a_refused_version_is_tried_again_once_its_file_changes(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, versions=(1, 2))
    corrupt(rig.models, 3)
    rig.live._rescan()
    assert rig.reloads("rejected") == 1
    version(rig.models, 3)  # fixed in place: a new size and mtime
    rig.live._rescan()
    assert rig.serving() == "3"
    assert rig.reloads("applied") == 1
    assert rig.reloads("rejected") == 1


def test_a_version_with_other_outputs_is_rejected(rig: Rig) -> None:
    version(rig.models, 2, outputs=("probabilities",))
    rig.live._rescan()
    assert rig.serving() == "1"
    assert rig.reloads("rejected") == 1
    why = rig.live.status()["variants"]["a"]["rejected"]["2"]
    assert "has outputs probabilities, expected label, probabilities" in why


def test_a_version_with_another_input_width_is_rejected(rig: Rig) -> None:
    version(rig.models, 2, width=3)
    rig.live._rescan()
    assert rig.serving() == "1"
    assert "takes 3 features" in rig.live.status()["variants"]["a"]["rejected"]["2"]


def test_a_version_that_gives_nan_on_recent_rows_is_rejected(rig: Rig) -> None:
    # float32 overflow: 3e38 * -1 + 3e38 * -0.43 is -inf in the tiny model's first column.
    rows = np.array([[3e38, 3e38, 0.0, 0.0]] * 8, dtype=np.float32)
    rig.recent.keep(rows)
    version(rig.models, 2)
    rig.live._rescan()
    assert rig.serving() == "1"
    assert rig.reloads("rejected") == 1
    why = rig.live.status()["variants"]["a"]["rejected"]["2"]
    assert "NaN or infinite on a probe batch" in why


def test_recent_rows_keep_the_latest_non_empty_batch() -> None:
    recent = RecentRows(4)
    assert recent.get().shape == (0, 4)
    batch = np.arange(400, dtype=np.float32).reshape(100, 4)
    recent.keep(batch)
    assert recent.get().shape == (64, 4)
    assert recent.get()[0, 0] == 0.0
    recent.keep(np.zeros((0, 4), dtype=np.float32))  # an empty batch keeps the last rows
    assert recent.get().shape == (64, 4)


def test_a_record_pins_an_older_version_and_back(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, versions=(1, 2))
    assert rig.serving() == "2"
    assert rig.receive({"weights": {"a": 0.5, "b": 0.5}, "versions": {"a": 1}}, 1)
    assert rig.serving() == "1"
    assert rig.reloads("applied") == 1
    assert rig.model_info() == {"1"}
    assert rig.live.status()["variants"]["a"]["pinned"] == "1"
    # A pin holds while newer versions arrive.
    version(rig.models, 3)
    rig.live._rescan()
    assert rig.serving() == "1"
    # Unpinned again: the highest serves.
    assert rig.receive({"weights": {"a": 0.5, "b": 0.5}}, 2)
    assert rig.serving() == "3"
    assert rig.reloads("applied") == 2


def test_pinning_a_corrupt_version_rejects_the_whole_record(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, versions=(1, 2))
    corrupt(rig.models, 3)
    rig.live._rescan()  # finds 3, refuses it
    assert rig.reloads("rejected") == 1
    assert rig.receive({"weights": {"a": 0.5, "b": 0.5}}, 1)
    good = rig.variants.snapshot()

    assert not rig.receive({"weights": {"a": 1.0, "b": 0.0}, "versions": {"a": "3"}}, 2)
    assert rig.records("rejected") == 1
    assert rig.variants.snapshot() is good
    assert good.models["a"].version == "2"
    assert good.router.weights == pytest.approx({"a": 0.5, "b": 0.5})
    status = rig.live.status()
    assert status["control"]["offset"] == 1
    assert "a version 3 cannot serve" in status["control_rejected"]["reason"]
    assert status["variants"]["a"]["pinned"] is None


def test_pinning_a_version_not_tried_before_that_fails_rejects_the_record(
    tmp_path: Path,
) -> None:
    rig = make_rig(tmp_path, versions=(1,), broken=(2,))  # on disk at start, never tried
    assert rig.serving() == "1"
    assert rig.live.status()["variants"]["a"]["versions"] == ["1", "2"]
    assert not rig.receive({"weights": {"a": 0.5, "b": 0.5}, "versions": {"a": "2"}}, 1)
    assert rig.records("rejected") == 1
    assert rig.reloads("rejected") == 1
    assert rig.serving() == "1"
    assert "a version 2 cannot serve" in rig.live.status()["control_rejected"]["reason"]
    # Refused once: the watcher does not try it again.
    rig.live._rescan()
    assert rig.reloads("rejected") == 1
    assert rig.serving() == "1"


def test_deleting_the_highest_version_serves_the_next_highest(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, versions=(1, 2, 3))
    assert rig.serving() == "3"
    shutil.rmtree(rig.models / "3")
    rig.live._rescan()
    assert rig.serving() == "2"
    assert rig.reloads("applied") == 1
    assert rig.live.status()["variants"]["a"]["versions"] == ["1", "2"]
    assert rig.model_info() == {"2"}


def test_rewriting_the_serving_version_in_place_never_serves_an_older_one(
    tmp_path: Path,
) -> None:
    rig = make_rig(tmp_path, versions=(1, 2))
    assert rig.serving() == "2"
    path = rig.models / "2" / MODEL_FILE
    write_tiny_model(path)  # being replaced: not settled yet
    now = time.time() + 60
    os.utime(path, (now, now))
    rig.live._rescan()
    assert rig.serving() == "2"
    assert rig.model_info() == {"2"}
    settled(path)
    rig.live._rescan()
    assert rig.serving() == "2"


def test_a_topology_version_pins_until_a_record_overrides_it(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, versions=(1, 2), a={"version": "1"})
    assert rig.serving() == "1"
    version(rig.models, 3)
    rig.live._rescan()
    assert rig.serving() == "1"
    assert rig.reloads("applied") == 0
    assert rig.receive({"weights": {"a": 0.5, "b": 0.5}, "versions": {"a": "3"}}, 1)
    assert rig.serving() == "3"
    assert rig.live.status()["variants"]["a"]["pinned"] == "3"
    assert rig.receive(None, 2)  # record deleted: the topology's pin again
    assert rig.serving() == "1"


def test_a_serving_version_rewritten_in_place_and_broken_keeps_its_copy_in_memory(
    tmp_path: Path,
) -> None:
    rig = make_rig(tmp_path, versions=(1, 2))
    before = rig.variants.snapshot().models["a"].sha256
    corrupt(rig.models, 2)
    rig.live._rescan()
    assert rig.serving() == "2" and rig.variants.snapshot().models["a"].sha256 == before
    assert rig.reloads("rejected") == 1
    assert "2" in rig.live.status()["variants"]["a"]["rejected"]
    rig.live._rescan()  # refused once, not tried again while the file stays as it is
    assert rig.reloads("rejected") == 1 and rig.serving() == "2"


def test_a_starting_agent_probes_like_a_running_one_and_skips_a_nan_version(
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    version(models / "a", 1)
    settled(write_nan_model(models / "a" / "2" / MODEL_FILE))
    rig = make_rig(tmp_path, versions=())
    assert rig.serving() == "1"
    loaded = load_variant_models(rig.topology)
    assert "NaN or infinite on a probe batch" in loaded.refused["a"]["2"]


def test_a_version_written_just_before_its_pin_is_found_for_the_pin(rig: Rig) -> None:
    write_tiny_model(rig.models / "2" / MODEL_FILE)  # this instant: not settled for a scan
    assert rig.receive({"weights": {"a": 0.5, "b": 0.5}, "versions": {"a": "2"}}, 1)
    assert rig.serving() == "2"


def test_a_model_that_collapses_the_batch_is_refused(rig: Rig) -> None:
    settled(write_collapsing_model(rig.models / "2" / MODEL_FILE))
    rig.live._rescan()
    assert rig.serving() == "1"
    why = rig.live.status()["variants"]["a"]["rejected"]["2"]
    assert "one row out per row in" in why
