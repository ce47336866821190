"""docker-compose.yml and the Dockerfile stay consistent with the CLI, the topology and Kafka.

There is no Docker engine in CI, so these tests parse both files and cross-check them against
what they refer to: `streamer` subcommands, `topologies/fraud.yaml` (metrics port, model and
schema paths as they resolve inside the image) and the broker's listeners.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import typer
import yaml
from typer.core import TyperArgument, TyperGroup
from typer.testing import CliRunner

from streamer.cli import app
from streamer.config import BOOTSTRAP_ENV, Topology, load_topology
from streamer.demo.train import DEMO_MODELS
from streamer.kafka.local import KAFKA_VERSION

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
REPO_TOPOLOGY = ROOT / "topologies" / "fraud.yaml"

MIN_GRACE_SECONDS = 30

# --------------------------------------------------------------------------------------------
# A minimal structural schema of a compose file and a validator for the subset it uses.
# --------------------------------------------------------------------------------------------

_STRING_OR_LIST: dict[str, Any] = {"anyOf": [{"type": "string"}, {"type": "array"}]}
_DURATION: dict[str, Any] = {"type": "string", "pattern": r"^(\d+(\.\d+)?(us|ms|s|m|h))+$"}

SERVICE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "image": {"type": "string", "pattern": r"^\S+$"},
        "build": {"anyOf": [{"type": "string"}, {"type": "object"}]},
        "command": _STRING_OR_LIST,
        "entrypoint": _STRING_OR_LIST,
        "environment": {"anyOf": [{"type": "object"}, {"type": "array"}]},
        "env_file": _STRING_OR_LIST,
        "depends_on": {"anyOf": [{"type": "object"}, {"type": "array"}]},
        "ports": {
            "type": "array",
            "items": {"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "object"}]},
        },
        "expose": {"type": "array"},
        "volumes": {"type": "array"},
        "networks": {"anyOf": [{"type": "object"}, {"type": "array"}]},
        "healthcheck": {
            "type": "object",
            "properties": {
                "test": _STRING_OR_LIST,
                "interval": _DURATION,
                "timeout": _DURATION,
                "retries": {"type": "integer"},
                "start_period": _DURATION,
                "start_interval": _DURATION,
                "disable": {"type": "boolean"},
            },
            "additionalProperties": False,
        },
        "restart": {"type": "string", "enum": ["no", "always", "on-failure", "unless-stopped"]},
        "stop_grace_period": _DURATION,
        "stop_signal": {"type": "string"},
        "hostname": {"type": "string"},
        "container_name": {"type": "string"},
        "deploy": {"type": "object"},
        "labels": {"anyOf": [{"type": "object"}, {"type": "array"}]},
        "user": {"type": "string"},
        "working_dir": {"type": "string"},
        "profiles": {"type": "array"},
        "pull_policy": {"type": "string"},
    },
    "patternProperties": {"^x-": {}},
    "additionalProperties": False,
    "anyOf": [{"required": ["image"]}, {"required": ["build"]}],
}

COMPOSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["services"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9][a-z0-9_-]*$"},
        "services": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": SERVICE_SCHEMA,
        },
        "volumes": {"type": "object"},
        "networks": {"type": "object"},
    },
    "patternProperties": {"^x-": {}},
    "additionalProperties": False,
}

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "boolean": (bool,),
}


def schema_errors(value: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    """Problems of `value` against a JSON-Schema-like `schema` (the subset used above)."""
    errors: list[str] = []
    if "type" in schema:
        kinds = _TYPES[schema["type"]]
        is_bool = isinstance(value, bool)
        if not isinstance(value, kinds) or (is_bool and schema["type"] == "integer"):
            return [f"{where}: expected {schema['type']}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if "pattern" in schema and isinstance(value, str) and not re.search(schema["pattern"], value):
        errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if "anyOf" in schema:
        branches = [schema_errors(value, sub, where) for sub in schema["anyOf"]]
        if all(branches):
            errors.append(f"{where}: matches none of {json.dumps(schema['anyOf'])}")
    if isinstance(value, dict):
        errors.extend(
            f"{where}: missing required key {key!r}"
            for key in schema.get("required", [])
            if key not in value
        )
        if len(value) < schema.get("minProperties", 0):
            errors.append(f"{where}: needs at least {schema['minProperties']} entries")
        for key, item in value.items():
            path = f"{where}.{key}"
            if key in schema.get("properties", {}):
                errors.extend(schema_errors(item, schema["properties"][key], path))
                continue
            patterns = schema.get("patternProperties", {})
            matched = [p for p in patterns if re.search(p, str(key))]
            if matched:
                for p in matched:
                    errors.extend(schema_errors(item, patterns[p], path))
                continue
            extra = schema.get("additionalProperties", True)
            if extra is False:
                errors.append(f"{where}: unknown key {key!r}")
            elif isinstance(extra, dict):
                errors.extend(schema_errors(item, extra, path))
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors.extend(schema_errors(item, schema["items"], f"{where}[{i}]"))
    return errors


# --------------------------------------------------------------------------------------------
# Parsing helpers: compose values, Kafka listeners, the Dockerfile.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listener:
    name: str
    host: str
    port: int


def parse_listeners(value: str) -> dict[str, Listener]:
    """`NAME://host:port,...` (Kafka's listeners syntax) by listener name."""
    out: dict[str, Listener] = {}
    for item in value.split(","):
        match = re.fullmatch(r"([A-Za-z0-9_]+)://(\[[^\]]*\]|[^:]*):(\d+)", item.strip())
        assert match, f"unparsable listener {item!r} in {value!r}"
        name, host, port = match.group(1), match.group(2), int(match.group(3))
        assert name not in out, f"listener {name} declared twice in {value!r}"
        out[name] = Listener(name, host, port)
    return out


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment, from either the mapping or the `KEY=VALUE` list form."""
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(str(item).split("=", 1) for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def command_argv(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def container_ports(service: dict[str, Any]) -> list[tuple[str | None, int]]:
    """(host part or None, container port) of each `ports` entry, short or long syntax."""
    out: list[tuple[str | None, int]] = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            published = entry.get("published")
            out.append((None if published is None else str(published), int(entry["target"])))
            continue
        spec = str(entry).split("/", 1)[0]
        host, _, target = spec.rpartition(":")
        out.append((host or None, int(target)))
    return out


def seconds(duration: str) -> float:
    """A compose duration (`1m30s`, `60s`, `500ms`) in seconds."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


@dataclass
class Dockerfile:
    """The instructions of the final stage of a Dockerfile that matter here."""

    copies: list[tuple[list[str], PurePosixPath]] = field(default_factory=list)
    """(sources in the build context, absolute destination) of each context COPY."""
    runs: list[str] = field(default_factory=list)
    entrypoint: Any = None
    cmd: Any = None
    user: str | None = None
    base: str = ""


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and line continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a line continuation"
    return out


def parse_dockerfile(text: str) -> Dockerfile:
    result = Dockerfile()
    workdir = PurePosixPath("/")
    for keyword, args in _instructions(text):
        if keyword == "FROM":
            result = Dockerfile(base=args.split()[0])  # only the final stage counts
            workdir = PurePosixPath("/")
        elif keyword == "WORKDIR":
            workdir = workdir / args
        elif keyword in ("COPY", "ADD"):
            words = json.loads(args) if args.startswith("[") else shlex.split(args)
            if any(w.startswith("--from") for w in words):
                continue  # from another stage, not from the build context
            words = [w for w in words if not w.startswith("--")]
            *sources, dest = words
            result.copies.append((sources, workdir / dest))
        elif keyword == "RUN":
            result.runs.append(args)
        elif keyword == "ENTRYPOINT":
            result.entrypoint = json.loads(args) if args.startswith("[") else args
        elif keyword == "CMD":
            result.cmd = json.loads(args) if args.startswith("[") else args
        elif keyword == "USER":
            result.user = args
    return result


def repo_path_of(image_path: str, dockerfile: Dockerfile) -> Path | None:
    """The build-context file that a Dockerfile COPY of a directory puts at `image_path`."""
    target = PurePosixPath(posixpath.normpath(image_path))
    for sources, dest in dockerfile.copies:
        for source in sources:
            if not source.endswith("/") or not (ROOT / source).is_dir():
                continue  # only whole-directory copies map paths below them
            if target.is_relative_to(dest):
                candidate = ROOT / source / target.relative_to(dest)
                if candidate.exists():
                    return candidate
    return None


def image_path(topology_in_image: str, repo_path: Path, topology: Topology) -> str:
    """Where a path the repo topology resolved to lands when the topology lives in the image."""
    assert topology.source is not None
    relative = Path(os.path.relpath(repo_path, topology.source.parent.resolve())).as_posix()
    return posixpath.normpath(posixpath.join(posixpath.dirname(topology_in_image), relative))


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict), "docker-compose.yml must be a mapping"
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = compose.get("services")
    assert isinstance(found, dict)
    return found


@pytest.fixture(scope="module")
def kafka_env(services: dict[str, dict[str, Any]]) -> dict[str, str]:
    return environment(services["kafka"])


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def topology() -> Topology:
    return load_topology(REPO_TOPOLOGY)


def _topology_arg(service: dict[str, Any]) -> str:
    paths = [a for a in command_argv(service) if a.endswith((".yaml", ".yml"))]
    assert len(paths) == 1, f"expected one topology path in {service['command']!r}"
    return paths[0]


# --------------------------------------------------------------------------------------------
# The compose file's structure
# --------------------------------------------------------------------------------------------


def test_compose_matches_the_structural_schema(compose: dict[str, Any]) -> None:
    assert schema_errors(compose, COMPOSE_SCHEMA) == []


@pytest.mark.parametrize(
    ("broken", "problem"),
    [
        ({"services": {"a": {"command": "x"}}}, "matches none"),
        ({"services": {"a": {"image": "x"}}, "servicez": {}}, "unknown key 'servicez'"),
        ({"services": {"a": {"image": "x", "comand": "y"}}}, "unknown key 'comand'"),
        ({"services": {}}, "at least 1"),
        ({"services": {"a": {"image": "x", "stop_grace_period": 60}}}, "expected string"),
        ({"version": "3"}, "missing required key 'services'"),
    ],
)
def test_schema_validator_rejects_broken_files(broken: dict[str, Any], problem: str) -> None:
    errors = schema_errors(broken, COMPOSE_SCHEMA)
    assert any(problem in e for e in errors), errors


def test_core_services_exist(services: dict[str, dict[str, Any]]) -> None:
    assert {"kafka", "topics", "engine"} <= set(services)


# --------------------------------------------------------------------------------------------
# Kafka: Apache's image, single-node KRaft, reachable from containers and from the host
# --------------------------------------------------------------------------------------------


def test_kafka_image_is_apache_kafka_with_a_pinned_tag(services: dict[str, dict[str, Any]]) -> None:
    image = str(services["kafka"]["image"])
    repo, _, tag = image.partition(":")
    assert repo == "apache/kafka"
    assert re.fullmatch(r"\d+\.\d+\.\d+", tag), f"pin a release tag, not {tag or 'latest'!r}"
    assert tag == KAFKA_VERSION, "Docker users and `streamer kafka start` run the same release"


def test_kafka_is_a_single_node_kraft_cluster(kafka_env: dict[str, str]) -> None:
    assert set(kafka_env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    listeners = parse_listeners(kafka_env["KAFKA_LISTENERS"])
    controller_names = kafka_env["KAFKA_CONTROLLER_LISTENER_NAMES"].split(",")
    assert controller_names and all(n in listeners for n in controller_names)

    voters = kafka_env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert len(voters) == 1, "single node: one voter"
    match = re.fullmatch(r"(\d+)@([^:]+):(\d+)", voters[0])
    assert match, voters
    assert match.group(1) == kafka_env["KAFKA_NODE_ID"], "the voter is this node"
    assert match.group(2) == "kafka"
    assert int(match.group(3)) == listeners[controller_names[0]].port

    protocols = dict(
        p.split(":", 1) for p in kafka_env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    assert set(listeners) <= set(protocols), "every listener needs a security protocol"
    inter_broker = kafka_env["KAFKA_INTER_BROKER_LISTENER_NAME"]
    assert inter_broker in listeners and inter_broker not in controller_names


@pytest.mark.parametrize(
    "setting",
    [
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR",
    ],
)
def test_internal_topics_fit_one_broker(kafka_env: dict[str, str], setting: str) -> None:
    assert kafka_env.get(setting) == "1"


def test_kafka_rebalances_without_delay(kafka_env: dict[str, str]) -> None:
    assert kafka_env.get("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS") == "0"


def test_host_clients_reach_kafka_on_localhost_9092(
    services: dict[str, dict[str, Any]], kafka_env: dict[str, str]
) -> None:
    listeners = parse_listeners(kafka_env["KAFKA_LISTENERS"])
    advertised = parse_listeners(kafka_env["KAFKA_ADVERTISED_LISTENERS"])
    host_side = [a for a in advertised.values() if (a.host, a.port) == ("localhost", 9092)]
    assert len(host_side) == 1, "advertise localhost:9092 for clients on the host"
    assert listeners[host_side[0].name].port in {
        port for published, port in container_ports(services["kafka"]) if published == "9092"
    }, "the host listener's port must be published as 9092"


def test_kafka_healthcheck_asks_a_declared_listener(
    services: dict[str, dict[str, Any]], kafka_env: dict[str, str]
) -> None:
    test = services["kafka"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    assert test[1] == "/opt/kafka/bin/kafka-broker-api-versions.sh"
    server = test[test.index("--bootstrap-server") + 1]
    host, _, port = server.rpartition(":")
    assert host == "localhost"
    ports = {listener.port for listener in parse_listeners(kafka_env["KAFKA_LISTENERS"]).values()}
    assert int(port) in ports


@pytest.mark.parametrize("name", ["topics", "engine"])
def test_containers_bootstrap_from_the_internal_listener(
    services: dict[str, dict[str, Any]], kafka_env: dict[str, str], name: str
) -> None:
    bootstrap = environment(services[name])[BOOTSTRAP_ENV]
    host, _, port_text = bootstrap.rpartition(":")
    port = int(port_text)
    kafka_hosts = {"kafka", services["kafka"].get("hostname", "kafka")}
    assert host in kafka_hosts, f"{name} must reach the kafka service, not {host!r}"

    listeners = parse_listeners(kafka_env["KAFKA_LISTENERS"])
    advertised = parse_listeners(kafka_env["KAFKA_ADVERTISED_LISTENERS"])
    by_port = [listener for listener in listeners.values() if listener.port == port]
    assert len(by_port) == 1, f"{bootstrap}: no listener on port {port} in KAFKA_LISTENERS"
    internal = by_port[0].name
    assert internal in advertised, f"listener {internal} is not advertised"
    # Metadata answers send clients to the advertised address: it must be the same one.
    assert (advertised[internal].host, advertised[internal].port) == (host, port)


# --------------------------------------------------------------------------------------------
# topics and engine: real `streamer` commands on the image's copy of topologies/fraud.yaml
# --------------------------------------------------------------------------------------------


def test_the_engine_image_is_built_here(services: dict[str, dict[str, Any]]) -> None:
    for name in ("topics", "engine"):
        build = services[name]["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        assert (COMPOSE_FILE.parent / context / "Dockerfile").resolve() == DOCKERFILE
    assert services["topics"]["image"] == services["engine"]["image"] == "streamer:local"


def _leaf_command(argv: list[str]) -> tuple[Any, list[str]]:
    """The (click) command `streamer argv...` dispatches to and the arguments it receives."""
    command: Any = typer.main.get_command(app)
    rest = list(argv)
    while isinstance(command, TyperGroup):
        assert rest, f"{argv}: ends at a command group"
        sub = command.commands.get(rest[0])
        assert sub is not None, f"`streamer {' '.join(argv)}`: no command {rest[0]!r}"
        command, rest = sub, rest[1:]
    return command, rest


@pytest.mark.parametrize(
    ("name", "expected"),
    [("topics", ["topics", "create"]), ("engine", ["run"])],
)
def test_service_commands_are_streamer_commands(
    services: dict[str, dict[str, Any]], name: str, expected: list[str]
) -> None:
    argv = command_argv(services[name])
    assert argv[: len(expected)] == expected

    leaf, args = _leaf_command(argv)
    positional = [p for p in leaf.params if isinstance(p, TyperArgument)]
    given = [a for a in args if not a.startswith("-")]
    assert [p.name for p in positional] == ["topology"]
    assert len(given) == len(positional), f"{argv}: wrong number of arguments"

    runner = CliRunner()
    result = runner.invoke(app, [*argv, "--help"])
    assert result.exit_code == 0, result.output
    usage = re.search(r"Usage: \S+ (.*)", result.output)
    assert usage, result.output
    assert usage.group(1).startswith(" ".join(expected)) and "topology" in usage.group(1).lower()


def test_the_image_entrypoint_is_the_streamer_script(dockerfile: Dockerfile) -> None:
    assert dockerfile.entrypoint == ["streamer"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["streamer"] == "streamer.cli:main"
    assert isinstance(dockerfile.cmd, list) and dockerfile.cmd[0] == "run"
    assert repo_path_of(dockerfile.cmd[1], dockerfile) == REPO_TOPOLOGY


def test_the_image_installs_the_demo_extra_and_runs_as_a_user(dockerfile: Dockerfile) -> None:
    assert dockerfile.base.startswith("python:3.11")
    assert any(re.search(r"pip install\b.*\[demo\]", run) for run in dockerfile.runs)
    assert dockerfile.user is not None
    assert dockerfile.user.split(":")[0] not in {"root", "0"}


@pytest.mark.parametrize("name", ["topics", "engine"])
def test_commands_use_the_image_copy_of_the_fraud_topology(
    services: dict[str, dict[str, Any]], dockerfile: Dockerfile, name: str
) -> None:
    path = _topology_arg(services[name])
    assert PurePosixPath(path).is_absolute(), "the image's working directory is not the repo"
    assert repo_path_of(path, dockerfile) == REPO_TOPOLOGY, (
        f"{path} is not a Dockerfile COPY of {REPO_TOPOLOGY.relative_to(ROOT)}"
    )


def test_models_are_trained_where_the_topology_looks_for_them(
    services: dict[str, dict[str, Any]], dockerfile: Dockerfile, topology: Topology
) -> None:
    trains = [
        m.group(1)
        for run in dockerfile.runs
        if (m := re.search(r"python\S* -m streamer\.demo\.train\s+(\S+)", run))
    ]
    assert len(trains) == 1, "train the demo models once, at build time"
    models_dir = PurePosixPath(trains[0])
    assert models_dir.is_absolute()

    in_image = _topology_arg(services["engine"])
    for variant in topology.variants:
        path = PurePosixPath(image_path(in_image, variant.model, topology))
        assert path.parent == models_dir, f"{variant.name}: {path} is not in {models_dir}"
        assert path.suffix == ".onnx" and path.stem in DEMO_MODELS


def test_the_input_schema_is_in_the_image(
    services: dict[str, dict[str, Any]], dockerfile: Dockerfile, topology: Topology
) -> None:
    assert topology.input.schema_ is not None
    in_image = image_path(_topology_arg(services["engine"]), topology.input.schema_, topology)
    assert repo_path_of(in_image, dockerfile) == topology.input.schema_


def test_engine_publishes_the_metrics_port_scalably(
    services: dict[str, dict[str, Any]], topology: Topology
) -> None:
    port = topology.metrics.port
    assert port
    ports = dict((target, published) for published, target in container_ports(services["engine"]))
    assert port in ports, f"engine must publish metrics.port {port}"
    assert ports[port] is None, "a fixed host port breaks `docker compose up --scale engine=N`"


def test_engine_healthcheck_hits_healthz_without_curl(
    services: dict[str, dict[str, Any]], topology: Topology
) -> None:
    test = services["engine"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    assert f"http://localhost:{topology.metrics.port}/healthz" in test[3]
    compile(test[3], "<healthcheck>", "exec")


def test_startup_order(services: dict[str, dict[str, Any]]) -> None:
    assert services["topics"]["depends_on"] == {"kafka": {"condition": "service_healthy"}}
    assert services["engine"]["depends_on"]["topics"] == {
        "condition": "service_completed_successfully"
    }
    assert services["topics"]["restart"] == "no", "a one-shot job must not be restarted"


def test_engine_gets_time_to_drain(services: dict[str, dict[str, Any]]) -> None:
    assert seconds(str(services["engine"]["stop_grace_period"])) >= MIN_GRACE_SECONDS


def test_engine_is_scaled_by_compose_not_pinned(services: dict[str, dict[str, Any]]) -> None:
    assert "replicas" not in services["engine"].get("deploy", {})
    assert "container_name" not in services["engine"], "a fixed name prevents --scale"
