"""`streamer top` in a real terminal (a private tmux server): it finds a serving agent through
the status topic, shows its events/s and weights, and quits on `q` or Ctrl-C with exit 0."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamer.testing import RunningAgent
from tests.conftest import ROOT, TopologyFactory
from tests.integration.conftest import Feed

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux"),
]

WIDTH, HEIGHT = 160, 40


class Tmux:
    """A tmux server of its own (`-L`), so the test never touches anyone's sessions."""

    def __init__(self) -> None:
        self.socket = f"streamer-test-{uuid.uuid4().hex[:8]}"

    def __call__(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.socket, *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return done.stdout

    def start(self, name: str, command: str) -> None:
        self("new-session", "-d", "-s", name, "-x", str(WIDTH), "-y", str(HEIGHT), "-c", str(ROOT))
        self("send-keys", "-t", name, command, "Enter")

    def screen(self, name: str) -> str:
        return self("capture-pane", "-p", "-t", name)

    def wait_for(self, name: str, pattern: str, what: str, timeout_s: float = 60) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while True:
            screen = self.screen(name)
            found = re.search(pattern, screen, re.MULTILINE)
            if found:
                return found
            assert time.monotonic() < deadline, f"no {what} within {timeout_s} s:\n{screen}"
            time.sleep(0.1)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, check=False)


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    server = Tmux()
    try:
        yield server
    finally:
        server.close()


def _top(topology: Path, code: Path, *options: str) -> str:
    """The shell line that runs `streamer top` and keeps its exit code."""
    argv = [sys.executable, "-m", "streamer", "top", str(topology), *options]
    return f"{shlex.join(argv)}; echo $? > {shlex.quote(str(code))}"


def _exit_code(path: Path, timeout_s: float = 30) -> int:
    deadline = time.monotonic() + timeout_s
    while not path.exists() or not path.read_text().strip():
        assert time.monotonic() < deadline, "streamer top did not exit"
        time.sleep(0.05)
    return int(path.read_text())


def test_top_shows_a_serving_agent_and_quits_on_q_or_ctrl_c(
    make_topology: TopologyFactory, kafka: str, tmux: Tmux, tmp_path: Path
) -> None:
    topology = make_topology(
        partitions=2,
        metrics={"port": 0},  # the agent reports the port it got on the status topic
        routing=lambda name: {"control_topic": f"{name}-control"},
    )
    assert topology.source is not None
    with RunningAgent(topology) as running, Feed(kafka, topology.input.topic, rate=400):
        running.wait_until(50)
        port = running.agent.metrics_port
        assert port is not None
        address = re.escape(f"127.0.0.1:{port}")

        # Discovered: no --targets, so the agent comes from its status report.
        code = tmp_path / "q.code"
        tmux.start("found", _top(topology.source, code))
        tmux.wait_for(
            "found", r"^agent\s+events/s\s+p50 ms\s+p99 ms\s+batch\s+dead/s\s+lag$", "the header"
        )
        row = tmux.wait_for(
            "found",
            rf"^{address} \S+-\d+-[0-9a-f]{{6}}\s+(?P<events>[1-9][\d,.]*)\s+(?P<p50>[\d.,]+)\s+"
            r"(?P<p99>[\d.,]+)\s+(?P<batch>[\d.,]+)\s+(-|0\.0)\s+(?P<lag>[\d,]+|-)\s*$",
            "the agent serving",
        )
        assert 0 < float(row["events"].replace(",", "")) < 4000, row[0]
        assert float(row["p50"]) <= float(row["p99"]), row[0]
        tmux.wait_for(
            "found", r"^champion\s+fraud_v2\s+1\.000\s+[\d.,]+\s+-\s+-\s", "champion's weight"
        )
        screen = tmux.screen("found")
        assert f"streamer top  {topology.name}" in screen
        assert "1 agent(s), 0 controller(s)" in screen
        assert "dead letters   none" in screen and "feature drift  -" in screen
        assert all(len(line) <= WIDTH for line in screen.splitlines())
        tmux("send-keys", "-t", "found", "q")
        assert _exit_code(code) == 0
        # The terminal is given back: the view was on the alternate screen, now gone.
        assert "events/s" not in tmux.screen("found")

        # Named: --targets, and Ctrl-C ends it just as well.
        code = tmp_path / "ctrl-c.code"
        tmux.start("named", _top(topology.source, code, "--targets", f"127.0.0.1:{port}"))
        tmux.wait_for("named", rf"^{address}\s+[1-9][\d,.]*\s", "the named agent serving")
        tmux("send-keys", "-t", "named", "C-c")
        assert _exit_code(code) == 0
