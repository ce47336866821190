"""`streamer kafka start` without Java or Maven: one line naming what is missing.

Integration, not unit: it runs the CLI in subprocesses and the Maven case needs a real Java.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _start(tmp_path: Path, path_dirs: list[Path]) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": os.pathsep.join(str(d) for d in path_dirs),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),  # no cached jars: Maven would be needed
    }
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "streamer",
            "kafka",
            "start",
            "--port",
            "1",
            "--data-dir",
            str(tmp_path / "broker"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_missing_java_is_named_with_the_docker_alternative(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    result = _start(tmp_path, [empty])
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: Java 17+ is not on PATH; install a JDK, or run Kafka with `docker compose up kafka`"
    ]


def test_missing_maven_is_named_when_jars_are_not_cached(tmp_path: Path) -> None:
    java = shutil.which("java")
    assert java is not None, "the test machine has Java 17"
    only_java = tmp_path / "bin"
    only_java.mkdir()
    (only_java / "java").symlink_to(Path(java).resolve())
    result = _start(tmp_path, [only_java])
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Maven (mvn) is not on PATH" in lines[0], result.stderr
    assert "docker compose up kafka" in lines[0]
