"""A local single-node Apache Kafka (KRaft) for development, the demo and the tests.

The broker is Apache's own: `kafka_2.13` resolved from Maven Central with Maven into the
user's cache directory, its storage formatted once with `kafka.tools.StorageTool`, then
`kafka.Kafka server.properties` started in its own session with a modest heap. Everything
it writes (properties, data, server.log, pid file) lives in one data directory per port.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import psutil
from confluent_kafka.admin import AdminClient

from streamer.errors import LocalKafkaError

KAFKA_VERSION = "4.4.0"
"""Newest 4.x `org.apache.kafka:kafka_2.13` that resolved from Maven Central (pinned)."""
LOG4J_VERSION = "2.25.5"
"""The log4j2 that kafka_2.13 itself depends on; its SLF4J 1.7 binding must match."""
DEFAULT_PORT = 9092
MIN_JAVA = 17
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
HEAP = ("-Xms256m", "-Xmx768m")
"""Modest: the broker shares two cores and the memory with the engine and the tests."""


def cache_dir() -> Path:
    """Where jars and default data directories live (`$XDG_CACHE_HOME/streamer`)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "streamer"


@dataclass(frozen=True)
class LocalKafka:
    """One local broker: its ports and the directory that holds all of its state."""

    port: int = DEFAULT_PORT
    data_dir: Path | None = None
    version: str = KAFKA_VERSION

    @property
    def controller_port(self) -> int:
        return self.port + 1

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def home(self) -> Path:
        return self.data_dir or cache_dir() / "kafka" / f"broker-{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.home / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "server.log"


@dataclass(frozen=True)
class StartResult:
    bootstrap: str
    pid: int
    already_running: bool
    seconds: float


def start(broker: LocalKafka, timeout_s: float = START_TIMEOUT_S) -> StartResult:
    """Start the broker unless it already runs; return once it answers a metadata request."""
    began = time.monotonic()
    running = _running(broker)
    if running is not None:
        # Ours is already running (maybe still starting): wait for it, never start a second.
        if _await_broker(broker, running, began + timeout_s):
            return StartResult(broker.bootstrap, running.pid, True, time.monotonic() - began)
        raise LocalKafkaError(
            f"the broker (pid {running.pid}) runs but does not answer at {broker.bootstrap}; "
            f"see {broker.log_file}, or `streamer kafka stop` it"
        )
    if _port_open(broker.port):
        raise LocalKafkaError(
            f"port {broker.port} is in use by another process; choose another with --port"
        )
    java = _java()
    libs = ensure_jars(broker.version)
    props = _write_config(broker)
    _format_storage(java, libs, broker, props)
    log_config = resources.files("streamer.kafka") / "log4j2.properties"
    cmd = [
        java,
        *HEAP,
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log_config}",
        f"-Dstreamer.kafka.logfile={broker.log_file}",
        "-cp",
        f"{libs}/*",
        "kafka.Kafka",
        str(props),
    ]
    with open(broker.home / "stdout.log", "ab") as out:
        proc = psutil.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    broker.pid_file.write_text(str(proc.pid))
    if _await_broker(broker, proc, began + timeout_s):
        return StartResult(broker.bootstrap, proc.pid, False, time.monotonic() - began)
    if not _alive(proc):
        broker.pid_file.unlink(missing_ok=True)
        raise LocalKafkaError(f"the broker exited during start-up; see {broker.log_file}")
    _terminate(proc, STOP_TIMEOUT_S)
    broker.pid_file.unlink(missing_ok=True)
    raise LocalKafkaError(
        f"the broker did not answer within {timeout_s:.0f}s; see {broker.log_file}"
    )


def _await_broker(broker: LocalKafka, proc: psutil.Process, deadline: float) -> bool:
    """True once the broker answers; False when its process dies or the deadline passes."""
    while time.monotonic() < deadline and _alive(proc):
        if _port_open(broker.port) and answers(broker.bootstrap, 2.0):
            return True
        time.sleep(0.2)
    return False


def stop(broker: LocalKafka, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Stop the broker cleanly (SIGTERM, then SIGKILL after the timeout). False if not running."""
    running = _running(broker)
    broker.pid_file.unlink(missing_ok=True)
    if running is None:
        return False
    _terminate(running, timeout_s)
    return True


def status(broker: LocalKafka) -> tuple[bool, int | None]:
    """Whether the broker answers, and its pid when this data directory's broker runs."""
    pid = running_pid(broker)
    return (pid is not None and _port_open(broker.port) and answers(broker.bootstrap, 3.0)), pid


def running_pid(broker: LocalKafka) -> int | None:
    """The pid from the pid file when that process is alive and is a Kafka broker."""
    running = _running(broker)
    return None if running is None else running.pid


def _running(broker: LocalKafka) -> psutil.Process | None:
    try:
        proc = psutil.Process(int(broker.pid_file.read_text().strip()))
        # A recycled pid must not be mistaken for (or killed as) our broker.
        return proc if _alive(proc) and "kafka.Kafka" in proc.cmdline() else None
    except (OSError, ValueError, psutil.Error):
        return None


def ensure_jars(version: str = KAFKA_VERSION) -> Path:
    """Resolve the broker's jars with Maven once; later calls reuse the cache."""
    libs = cache_dir() / f"kafka-{version}" / "libs"
    done = libs.parent / ".resolved"
    if done.exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LocalKafkaError(
            "Maven (mvn) is not on PATH; it fetches Apache Kafka's jars. Install Maven, "
            "or run Kafka with `docker compose up kafka`"
        )
    libs.parent.mkdir(parents=True, exist_ok=True)
    pom_text = (resources.files("streamer.kafka") / "pom.xml").read_text()
    pom = libs.parent / "pom.xml"
    pom.write_text(
        pom_text.replace("@KAFKA_VERSION@", version).replace("@LOG4J_VERSION@", LOG4J_VERSION)
    )
    staging = libs.parent / "libs.partial"
    shutil.rmtree(staging, ignore_errors=True)
    result = subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-1:] or ["no output"]
        raise LocalKafkaError(
            f"Maven could not resolve org.apache.kafka:kafka_2.13:{version}: {tail[0]}"
        )
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    done.write_text(version)
    return libs


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise LocalKafkaError(
            f"Java {MIN_JAVA}+ is not on PATH; install a JDK, "
            "or run Kafka with `docker compose up kafka`"
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    major = int(match.group(1)) if match else 0
    if major == 1 and match and match.group(2):
        major = int(match.group(2))
    if major < MIN_JAVA:
        raise LocalKafkaError(
            f"Kafka {KAFKA_VERSION} needs Java {MIN_JAVA}+, found {major or 'unknown'} at {java}"
        )
    return java


def _write_config(broker: LocalKafka) -> Path:
    broker.home.mkdir(parents=True, exist_ok=True)
    props = broker.home / "server.properties"
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "listeners": (
            f"PLAINTEXT://127.0.0.1:{broker.port},CONTROLLER://127.0.0.1:{broker.controller_port}"
        ),
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{broker.port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.quorum.bootstrap.servers": f"127.0.0.1:{broker.controller_port}",
        "log.dirs": str(broker.home / "data"),
        "num.partitions": "1",
        "default.replication.factor": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "10",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "min.insync.replicas": "1",
        # Tests and the demo join groups constantly; waiting for more members only adds delay.
        "group.initial.rebalance.delay.ms": "0",
        "log.retention.hours": "24",
        "log.segment.bytes": str(64 * 1024 * 1024),
    }
    props.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    return props


def _format_storage(java: str, libs: Path, broker: LocalKafka, props: Path) -> None:
    if (broker.home / "data" / "meta.properties").exists():
        return
    base = [java, "-Xmx256m", "-cp", f"{libs}/*", "kafka.tools.StorageTool"]
    env = {**os.environ, "KAFKA_LOG4J_OPTS": ""}
    uuid = subprocess.run(
        [*base, "random-uuid"], capture_output=True, text=True, check=False, env=env
    )
    cluster_id = uuid.stdout.strip().splitlines()[-1] if uuid.returncode == 0 else ""
    if not cluster_id:
        raise LocalKafkaError(f"kafka-storage random-uuid failed: {uuid.stderr.strip()[:200]}")
    fmt = subprocess.run(
        [*base, "format", "-t", cluster_id, "-c", str(props), "--standalone"],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if fmt.returncode != 0:
        detail = (fmt.stdout + fmt.stderr).strip().splitlines()[-1:] or ["no output"]
        raise LocalKafkaError(f"kafka-storage format failed: {detail[0]}")
    (broker.home / "cluster.id").write_text(cluster_id)


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def free_port_pair() -> int:
    """A port p with p and p+1 (the controller) both free, for a throwaway broker (tests,
    benchmarks). Taken below Linux's ephemeral range (32768-60999), so a client connection
    handed p+1 by the kernel meanwhile cannot steal it before the broker binds it."""
    rng = random.Random()  # noqa: S311 - spreading test ports, not security
    for _ in range(200):
        port = rng.randrange(20_000, 32_000)
        if all(_bindable(p) for p in (port, port + 1)):
            return port
    raise LocalKafkaError("no free port pair for a local broker in 20000-32000")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def answers(bootstrap: str, timeout_s: float) -> bool:
    """Whether a broker at `bootstrap` answers a metadata request (quietly: no log lines)."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        return bool(admin.list_topics(timeout=timeout_s).brokers)
    except Exception:  # any KafkaException means "not yet"
        return False


def _terminate(proc: psutil.Process, timeout_s: float) -> None:
    """SIGTERM; SIGKILL if it still runs after `timeout_s`. Returns once it is gone."""
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait()


def _alive(proc: psutil.Process) -> bool:
    """Whether it runs; a broker this process started and that exited is reaped on the way."""
    try:
        if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
            return True
        # Our own child (tests, demo) stays a zombie until we wait for it.
        proc.wait(timeout=0)
    except psutil.Error:  # gone, or a zombie of another parent
        pass
    return False
