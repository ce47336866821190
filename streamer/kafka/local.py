"""A local single-node Apache Kafka (KRaft) for development, the demo and the tests.

The broker is Apache's own: `kafka_2.13` resolved from Maven Central with Maven into the
user's cache directory, its storage formatted once with `kafka.tools.StorageTool`, then
`kafka.Kafka server.properties` started in its own session with a modest heap. Everything
it writes (properties, data, server.log, pid file) lives in one data directory per port.

By default clients connect in PLAINTEXT. With `sasl_ssl` the client listener is SASL_SSL
instead: TLS with a certificate for 127.0.0.1/localhost signed by a CA made for this data
directory with the JDK's keytool (clients trust `tls/ca.pem`), and SCRAM-SHA-512 with one user
whose credentials are written into the cluster metadata when the storage is formatted (its
password, generated then, stays in `sasl.password`). The broker talks to itself (inter-broker)
over that same listener as that user; the KRaft controller listener (port+1) stays PLAINTEXT
on 127.0.0.1. A data directory keeps the mode it was formatted with.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import random
import re
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
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
SASL_MECHANISM = "SCRAM-SHA-512"
SASL_USERNAME = "streamer"
CERT_VALIDITY_DAYS = 3650
_QUICK_JVM = ("-J-XX:TieredStopAtLevel=1", "-J-XX:+UseSerialGC")
"""keytool runs for a moment: the quick compiler and GC halve its time."""
_CREDENTIAL = re.compile(r"^[A-Za-z0-9._~-]{1,128}$")
"""Usernames and passwords go unquoted into `--add-scram` and the broker's JAAS line."""


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
    sasl_ssl: bool = False
    """Clients connect over SASL_SSL (SCRAM-SHA-512, a self-signed CA) instead of PLAINTEXT."""
    username: str = SASL_USERNAME
    password: str | None = None
    """The SCRAM user's password; None: generated when the storage is formatted."""

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

    @property
    def security_file(self) -> Path:
        """Present when the data directory holds a SASL_SSL broker: mechanism, user, and the
        keystore password (owner-only, like everything secret here)."""
        return self.home / "security.json"

    @property
    def password_file(self) -> Path:
        """The SCRAM user's password (owner-only); topologies can name it in
        `kafka.config.sasl.password_file`."""
        return self.home / "sasl.password"

    @property
    def ca_file(self) -> Path:
        """The CA certificate (PEM) clients trust: librdkafka's `ssl.ca.location`."""
        return self.home / "tls" / "ca.pem"


@dataclass(frozen=True)
class StartResult:
    bootstrap: str
    pid: int
    already_running: bool
    seconds: float
    topology_config: dict[str, str]
    """What a topology's `kafka.config` needs for this broker ({} for PLAINTEXT)."""


def start(broker: LocalKafka, timeout_s: float = START_TIMEOUT_S) -> StartResult:
    """Start the broker unless it already runs; return once it answers a metadata request."""
    began = time.monotonic()
    _check_mode(broker)
    running = _running(broker)
    if running is not None:
        # Ours is already running (maybe still starting): wait for it, never start a second.
        if _await_broker(broker, running, began + timeout_s):
            return StartResult(
                broker.bootstrap,
                running.pid,
                True,
                time.monotonic() - began,
                topology_config(broker),
            )
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
    security = _ensure_security(java, broker) if broker.sasl_ssl else None
    props = _write_config(broker, security)
    _format_storage(java, libs, broker, props, security)
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
        return StartResult(
            broker.bootstrap, proc.pid, False, time.monotonic() - began, topology_config(broker)
        )
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
    config = client_config(broker)
    while time.monotonic() < deadline and _alive(proc):
        if _port_open(broker.port) and answers(broker.bootstrap, 2.0, config):
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
    up = (
        pid is not None
        and _port_open(broker.port)
        and answers(broker.bootstrap, 3.0, client_config(broker))
    )
    return up, pid


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


def _write_config(broker: LocalKafka, security: _Security | None = None) -> Path:
    broker.home.mkdir(parents=True, exist_ok=True)
    props = broker.home / "server.properties"
    settings: dict[str, str] = {
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
    if security is not None:
        settings.update(_sasl_ssl_settings(broker, security))
    text = "".join(f"{k}={v}\n" for k, v in settings.items())
    if security is not None:  # it holds the passwords
        _write_private(props, text)
    else:
        props.write_text(text)
    return props


def _sasl_ssl_settings(broker: LocalKafka, security: _Security) -> dict[str, str]:
    """One SASL_SSL listener for clients and the broker itself; the controller's stays
    PLAINTEXT. No authorizer: every authenticated user may do everything."""
    store = str(_keystore(broker))
    login = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{security.username}" password="{security.password}";'
    )
    return {
        "listeners": (
            f"SASL_SSL://127.0.0.1:{broker.port},CONTROLLER://127.0.0.1:{broker.controller_port}"
        ),
        "advertised.listeners": f"SASL_SSL://127.0.0.1:{broker.port}",
        "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "SASL_SSL",
        "sasl.enabled.mechanisms": SASL_MECHANISM,
        "sasl.mechanism.inter.broker.protocol": SASL_MECHANISM,
        f"listener.name.sasl_ssl.{SASL_MECHANISM.lower()}.sasl.jaas.config": login,
        # One PKCS12 file: the broker's key and chain, and the CA as a trusted entry (the
        # broker connecting to itself checks the chain and that it is 127.0.0.1).
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.location": store,
        "ssl.keystore.password": security.store_password,
        "ssl.key.password": security.store_password,
        "ssl.truststore.type": "PKCS12",
        "ssl.truststore.location": store,
        "ssl.truststore.password": security.store_password,
    }


@dataclass(frozen=True)
class _Security:
    username: str
    password: str
    store_password: str


def client_config(broker: LocalKafka) -> dict[str, str]:
    """The librdkafka security settings (the password itself included; not the bootstrap) a
    client of this data directory's broker needs: {} unless it was formatted for SASL_SSL."""
    security = _load_security(broker)
    if security is None:
        return {}
    return {**_client_base(broker, security), "sasl.password": security.password}


def topology_config(broker: LocalKafka) -> dict[str, str]:
    """The same settings as a topology's `kafka.config` takes them: the password by file."""
    security = _load_security(broker)
    if security is None:
        return {}
    return {**_client_base(broker, security), "sasl.password_file": str(broker.password_file)}


def _client_base(broker: LocalKafka, security: _Security) -> dict[str, str]:
    return {
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": SASL_MECHANISM,
        "sasl.username": security.username,
        "ssl.ca.location": str(broker.ca_file),
    }


def _load_security(broker: LocalKafka) -> _Security | None:
    try:
        stored = json.loads(broker.security_file.read_text())
        return _Security(
            str(stored["username"]),
            broker.password_file.read_text().strip(),
            str(stored["store_password"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _formatted(broker: LocalKafka) -> bool:
    return (broker.home / "data" / "meta.properties").exists()


def _check_mode(broker: LocalKafka) -> None:
    """A data directory serves the mode it was formatted with: SCRAM users exist only when
    the storage was formatted with them, and credentials cannot change afterwards."""
    if broker.sasl_ssl:
        for what, value in (("username", broker.username), ("password", broker.password)):
            if value is not None and not _CREDENTIAL.match(value):
                raise LocalKafkaError(
                    f"the SASL {what} may hold only letters, digits and . _ ~ - (1-128)"
                )
    if not _formatted(broker):
        return
    security = _load_security(broker) if broker.security_file.exists() else None
    if broker.sasl_ssl and security is None and broker.security_file.exists():
        raise LocalKafkaError(
            f"{broker.home} was formatted for SASL_SSL but {broker.password_file.name} or "
            f"{broker.security_file.name} there is missing or damaged; "
            "choose another --data-dir or --port"
        )
    if broker.sasl_ssl and security is None:
        raise LocalKafkaError(
            f"{broker.home} holds a PLAINTEXT broker (formatted without SASL users); "
            "start it without --sasl-ssl, or choose another --data-dir or --port"
        )
    if not broker.sasl_ssl and broker.security_file.exists():
        raise LocalKafkaError(
            f"{broker.home} holds a SASL_SSL broker; start it with --sasl-ssl, "
            "or choose another --data-dir or --port"
        )
    if security is not None and (
        broker.username != security.username
        or (broker.password is not None and broker.password != security.password)
    ):
        raise LocalKafkaError(
            f"the SASL credentials of {broker.home} were fixed when it was formatted "
            f"(user {security.username}, password in {broker.password_file})"
        )


def _ensure_security(java: str, broker: LocalKafka) -> _Security:
    """Credentials and certificates for a SASL_SSL broker: kept once the storage is formatted
    with them, made afresh (a new password unless one is given) until then."""
    security = _load_security(broker) if _formatted(broker) else None
    if security is None:
        security = _Security(
            broker.username,
            broker.password or secrets.token_urlsafe(18),
            secrets.token_urlsafe(18),
        )
        shutil.rmtree(broker.ca_file.parent, ignore_errors=True)
        broker.home.mkdir(parents=True, exist_ok=True)
        _write_private(broker.password_file, security.password + "\n")
        _write_private(
            broker.security_file,
            json.dumps(
                {
                    "mechanism": SASL_MECHANISM,
                    "username": security.username,
                    "store_password": security.store_password,
                },
                indent=2,
            )
            + "\n",
        )
    if not (broker.ca_file.exists() and _keystore(broker).exists()):
        _make_certificates(_keytool(java), broker.ca_file.parent, security.store_password)
    return security


def _keystore(broker: LocalKafka) -> Path:
    return broker.ca_file.parent / "broker.p12"


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (created so, never world-readable meanwhile)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _keytool(java: str) -> str:
    beside = Path(java).resolve().parent / "keytool"
    found = str(beside) if beside.exists() else shutil.which("keytool")
    if found is None:
        raise LocalKafkaError(f"keytool (the JDK's) is not next to {java} nor on PATH")
    return found


def _make_certificates(keytool: str, tls: Path, password: str) -> None:
    """A CA, and a broker certificate for 127.0.0.1 and localhost that it signs (EC P-256)."""
    shutil.rmtree(tls, ignore_errors=True)
    tls.mkdir(parents=True, mode=0o700)
    ca, store = tls / "ca.p12", tls / "broker.p12"
    csr, cert, ca_pem = tls / "broker.csr", tls / "broker.pem", tls / "ca.pem"
    pw = ["-storepass", password]
    key = ["-keyalg", "EC", "-groupname", "secp256r1", "-validity", str(CERT_VALIDITY_DAYS)]
    san = "SAN=dns:localhost,ip:127.0.0.1"
    steps: list[list[str]] = [
        # The CA's key never leaves ca.p12.
        ["-genkeypair", "-alias", "ca", *key, "-dname", "CN=streamer local Kafka CA",
         "-ext", "bc:c", "-ext", "KU=keyCertSign,cRLSign", "-keystore", str(ca), *pw],
        ["-exportcert", "-rfc", "-alias", "ca", "-keystore", str(ca), *pw, "-file", str(ca_pem)],
        ["-genkeypair", "-alias", "broker", *key, "-dname", "CN=localhost", "-ext", san,
         "-keystore", str(store), *pw],
        ["-certreq", "-alias", "broker", "-keystore", str(store), *pw, "-file", str(csr)],
        ["-gencert", "-rfc", "-alias", "ca", "-keystore", str(ca), *pw, "-infile", str(csr),
         "-outfile", str(cert), "-validity", str(CERT_VALIDITY_DAYS), "-ext", san,
         "-ext", "KU=digitalSignature", "-ext", "EKU=serverAuth,clientAuth"],
        ["-importcert", "-noprompt", "-alias", "ca", "-file", str(ca_pem),
         "-keystore", str(store), *pw],
        ["-importcert", "-alias", "broker", "-file", str(cert), "-keystore", str(store), *pw],
    ]  # fmt: skip
    for args in steps:
        done = subprocess.run(
            [keytool, *_QUICK_JVM, *args, "-storetype", "PKCS12"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            detail = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
            raise LocalKafkaError(f"keytool {args[0]} failed: {detail[0]}")
    csr.unlink()
    cert.unlink()


def _scram_credential(security: _Security, iterations: int = 8192) -> str:
    """`--add-scram`'s argument, salted here so the password never shows in a command line
    (SaltedPassword = PBKDF2-HMAC-SHA512 of the password, RFC 5802)."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha512", security.password.encode(), salt, iterations)
    return (
        f"{SASL_MECHANISM}=[name={security.username},iterations={iterations},"
        f'salt="{base64.b64encode(salt).decode()}",'
        f'saltedpassword="{base64.b64encode(salted).decode()}"]'
    )


def _format_storage(
    java: str, libs: Path, broker: LocalKafka, props: Path, security: _Security | None = None
) -> None:
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
    scram = [] if security is None else ["--add-scram", _scram_credential(security)]
    fmt = subprocess.run(
        [*base, "format", "-t", cluster_id, "-c", str(props), "--standalone", *scram],
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


def answers(bootstrap: str, timeout_s: float, config: Mapping[str, str] | None = None) -> bool:
    """Whether a broker at `bootstrap` answers a metadata request (quietly: no log lines);
    `config` holds the client's security settings, if it needs any."""
    admin = AdminClient({**(config or {}), "bootstrap.servers": bootstrap, "log_level": 0})
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
