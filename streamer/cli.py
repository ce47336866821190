"""The `streamer` command. Each command parses arguments and calls one function; user errors
become one line on stderr and exit code 1, usage errors exit 2."""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Annotated, NoReturn

import typer
from confluent_kafka import KafkaException

from streamer import logs
from streamer.agent import CONNECT_TIMEOUT_S, DRAIN_TIMEOUT_S, Agent
from streamer.bandit.controller import Controller
from streamer.config import Topology, VariantSpec, load_topology
from streamer.control import commands
from streamer.errors import StreamerError
from streamer.kafka.admin import create_topics
from streamer.kafka.local import LocalKafka, start, status, stop
from streamer.repository import is_directory
from streamer.validate import Validation
from streamer.validate import validate as check

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Streaming ML inference on Apache Kafka.",
)
kafka_app = typer.Typer(no_args_is_help=True, help="A local single-node Kafka for development.")
topics_app = typer.Typer(no_args_is_help=True, help="Manage a topology's topics.")
control_app = typer.Typer(
    no_args_is_help=True,
    help="Live control of a topology's variants through its control topic (no restart).",
)
app.add_typer(kafka_app, name="kafka")
app.add_typer(topics_app, name="topics")
app.add_typer(control_app, name="control")

TopologyArg = Annotated[Path, typer.Argument(help="Topology YAML file.", show_default=False)]
PortOpt = Annotated[int, typer.Option(help="Broker port (the controller uses port+1).")]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(help="Broker state directory (default: ~/.cache/streamer/kafka/broker-PORT)."),
]
LogFormatOpt = Annotated[
    logs.LogFormat,
    typer.Option(
        help="Log lines on stderr: json (one object a line), text, or auto (text on a terminal)."
    ),
]


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {logs.scrub(message)}", err=True)
    raise typer.Exit(1)


@contextlib.contextmanager
def _user_errors(source: Path | None = None) -> Iterator[None]:
    """Errors a user can cause become one line on stderr and exit 1; bugs still raise."""
    try:
        yield
    except StreamerError as exc:
        _fail(str(exc))
    except KafkaException as exc:  # e.g. an invalid librdkafka setting or failed authentication
        _fail(f"{source}: Kafka: {exc.args[0] if exc.args else exc}")


def _validated(topology: Path, *, every_version: bool = False) -> Validation:
    """The loaded topology and models, or every problem on stderr (one line each) and exit 1.
    Model-directory versions that cannot serve are warnings: another version serves."""
    result = check(topology, every_version=every_version)
    for p in result.problems:
        typer.echo(f"error: {logs.scrub(str(p))}", err=True)
    for w in result.warnings:
        typer.echo(f"warning: {logs.scrub(str(w))}", err=True)
    if result.problems or result.topology is None:
        raise typer.Exit(1)
    return result


def _setup_logging(level: str, log_format: str = logs.LogFormat.AUTO) -> None:
    try:
        logs.setup_logging(level, log_format)
    except ValueError as exc:
        _fail(str(exc))


@app.command()
def demo(
    topology: Annotated[Path, typer.Option(help="Demo topology.")] = Path("topologies/fraud.yaml"),
    events: Annotated[int, typer.Option(min=1, help="Events to stream.")] = 60_000,
    rate: Annotated[float, typer.Option(min=1.0, help="Events per second offered.")] = 3_000.0,
) -> None:
    """The main job: local Kafka, demo models, events, engine, a live view and a summary."""
    # Lazy: the demo needs the optional `demo` extra (scikit-learn, skl2onnx).
    from streamer.demo.runner import format_summary, run_demo  # noqa: PLC0415

    _setup_logging("warning")
    with _user_errors(topology):
        summary = run_demo(topology, events, rate, typer.echo)
    typer.echo(format_summary(summary))
    typer.echo("Kafka keeps running for the next run; stop it with `streamer kafka stop`.")


@app.command()
def validate(topology: TopologyArg) -> None:
    """Load config, schemas and models (every version of a model directory); check shapes and
    names; exit 1 listing each problem."""
    result = _validated(topology, every_version=True)
    loaded = result.topology
    assert loaded is not None

    def describe(v: VariantSpec) -> str:
        text = v.name + (" (shadow)" if v.shadow else "")
        if is_directory(v):
            found = ", ".join(result.versions[v.name])
            text += f" [version {result.models[v.name].version} of {found}]"
        return text

    variants = ", ".join(describe(v) for v in loaded.variants)
    typer.echo(
        f"{topology}: ok: {loaded.name}: {len(loaded.features)} features, variants {variants}"
    )


def _stop_on_signals(stop: Callable[[], None]) -> None:
    """The first SIGTERM/SIGINT asks `stop` to drain; a second one ends the process."""

    def _stop(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        logging.getLogger("streamer").info("%s: draining (send again to exit now)", name)
        # The drain may sit in librdkafka (a hung broker) where Python handlers cannot run;
        # the default action lets a second signal end the process at once. Offsets of
        # unfinished batches stay uncommitted, so their events are simply served again.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    logging.getLogger("streamer").info("ready for signals; connecting to Kafka")


@app.command()
def run(
    topology: TopologyArg,
    log_level: Annotated[str, typer.Option(help="Python log level.")] = "info",
    log_format: LogFormatOpt = logs.LogFormat.AUTO,
    connect_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds to wait for the cluster before exit 1.")
    ] = CONNECT_TIMEOUT_S,
    drain_timeout: Annotated[
        float,
        typer.Option(
            min=0.1, help="Seconds a stop waits for in-flight records before exit 1 (uncommitted)."
        ),
    ] = DRAIN_TIMEOUT_S,
) -> None:
    """Run an agent until SIGTERM/SIGINT; then finish the batch, flush, commit and exit 0."""
    _setup_logging(log_level, log_format)
    result = _validated(topology)
    assert result.topology is not None
    logs.bind_topology(result.topology)
    with _user_errors(topology):
        agent = Agent(
            result.topology,
            result.models,
            connect_timeout_s=connect_timeout,
            drain_timeout_s=drain_timeout,
        )

        _stop_on_signals(agent.stop)
        stats = agent.run()
    typer.echo(
        f"stopped: {stats.consumed} consumed, {stats.served} served, "
        f"{stats.dead_letters} dead letters, {stats.batches} batches",
        err=True,
    )


@app.command()
def controller(
    topology: TopologyArg,
    log_level: Annotated[str, typer.Option(help="Python log level.")] = "info",
    log_format: LogFormatOpt = logs.LogFormat.AUTO,
    connect_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds to wait for the cluster before exit 1.")
    ] = CONNECT_TIMEOUT_S,
) -> None:
    """Run the bandit controller until SIGTERM/SIGINT; then checkpoint and exit 0."""
    _setup_logging(log_level, log_format)
    result = _validated(topology)
    assert result.topology is not None
    logs.bind_topology(result.topology)
    with _user_errors(topology):
        service = Controller(result.topology, connect_timeout_s=connect_timeout)
        _stop_on_signals(service.stop)
        stats = service.run()
    typer.echo(
        f"stopped: {stats.records} records read, {stats.published} control records published",
        err=True,
    )


@app.command()
def top(
    topology: TopologyArg,
    targets: Annotated[
        str | None,
        typer.Option(
            help="HOST:PORT,... of agents' and controllers' metrics (default: the agents' "
            "reports on the status topic, and the controller at bandit.metrics_port)."
        ),
    ] = None,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between refreshes.")] = 1.0,
    count: Annotated[
        int | None, typer.Option(min=1, help="Refreshes before exit (default: until q).")
    ] = None,
) -> None:
    """A live view of the running agents and controller: events/s, latency, batch size,
    dead letters, lag, weights, drift. q or Ctrl-C quits."""
    from streamer.top import parse_targets, run_top  # noqa: PLC0415 - only this command

    _setup_logging("critical")  # Kafka's complaints would tear the view; it shows them itself
    with _user_errors(topology):
        loaded = load_topology(topology)
    logs.bind_topology(loaded)
    chosen = parse_targets(targets) if targets is not None else None
    with contextlib.suppress(KeyboardInterrupt):
        run_top(loaded, chosen, interval_s=interval, count=count)


@app.command()
def profile(
    topology: TopologyArg,
    *,
    from_topic: Annotated[
        str | None, typer.Option(help="Topic to read events from (default: the input topic).")
    ] = None,
    events: Annotated[int, typer.Option(min=100, help="Events to profile.")] = 10_000,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Profile file to write (default: drift.profile)."),
    ] = None,
    bins: Annotated[
        int | None, typer.Option(min=2, max=100, help="Bins per distribution (drift.bins).")
    ] = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds reading may take.")] = 60.0,
) -> None:
    """Write a reference profile for drift: N events of a topic (every partition from its
    beginning), decoded like the agent does and scored by every served variant."""
    from streamer.drift import profile_topic, write_profile  # noqa: PLC0415 - only this command

    _setup_logging("critical")  # the one error line says what failed; librdkafka's log not
    result = check(topology)
    # The profile is what this writes: a missing or stale one is no reason to stop.
    problems = [p for p in result.problems if p.key != "drift.profile"]
    for p in problems:
        typer.echo(f"error: {logs.scrub(str(p))}", err=True)
    if problems or result.topology is None:
        raise typer.Exit(1)
    loaded = result.topology
    target = output or loaded.drift.profile
    if target is None:
        raise typer.BadParameter("needs a file to write (or drift.profile)", param_hint="-o")
    with _user_errors(topology):
        made = profile_topic(
            loaded, result.models, topic=from_topic, events=events, bins=bins, timeout_s=timeout
        )
        try:
            write_profile(made.profile, target)
        except OSError as exc:
            _fail(f"{target}: cannot write: {exc.strerror}")
    ref = made.profile
    outputs = ", ".join(f"{name} ({v.output})" for name, v in ref.predictions.items())
    skipped = f", {made.skipped} undecodable skipped" if made.skipped else ""
    typer.echo(
        f"{target}: {ref.events} events of {ref.source}{skipped}; "
        f"{len(ref.features)} features, variants {outputs}"
    )


@topics_app.command("create")
def topics_create(
    topology: TopologyArg,
    partitions: Annotated[
        int | None, typer.Option(min=1, help="Partitions per topic (default: topics.partitions).")
    ] = None,
    replication_factor: Annotated[int | None, typer.Option(min=1)] = None,
) -> None:
    """Create the topology's topics; existing ones are left alone."""
    with _user_errors(topology):
        results = create_topics(load_topology(topology), partitions, replication_factor)
    for r in results:
        typer.echo(f"{r.topic}: {'created' if r.created else 'exists'} ({r.partitions} partitions)")


@control_app.callback()
def control_topology(ctx: typer.Context, topology: TopologyArg) -> None:
    """streamer control TOPOLOGY COMMAND: every write is checked against the topology first."""
    _setup_logging("critical")  # the one error line says what failed; librdkafka's log not
    with _user_errors(topology):
        ctx.obj = load_topology(topology)
    logs.bind_topology(ctx.obj)


def _write(ctx: typer.Context, what: str, change: commands.Change) -> None:
    topology: Topology = ctx.obj
    with _user_errors(topology.source):
        offset, diff = commands.apply(topology, what, change)
    typer.echo(f"{what}: {diff} (offset {offset} of {topology.routing.control_topic})")


def _lines(ctx: typer.Context, read: Callable[[Topology], list[str]]) -> None:
    topology: Topology = ctx.obj
    with _user_errors(topology.source):
        lines = read(topology)
    typer.echo("\n".join(lines))


@control_app.command("show")
def control_show(ctx: typer.Context) -> None:
    """The record in force, its age and source, and what each live agent serves."""
    _lines(ctx, commands.show)


@control_app.command("history")
def control_history(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, help="Records to list.")] = 20,
) -> None:
    """The topology's control records, newest first."""
    _lines(ctx, lambda t: commands.history(t, limit))


@control_app.command("set-weights")
def control_set_weights(
    ctx: typer.Context,
    weights: Annotated[list[str], typer.Argument(help="NAME=WEIGHT ... (normalised).")],
) -> None:
    """A/B or canary split: NAME=WEIGHT for served variants; unnamed ones get 0."""
    parsed: dict[str, float] = {}
    for item in weights:
        name, _, value = item.partition("=")
        try:
            parsed[name] = float(value)
        except ValueError:
            _fail(f"{ctx.obj.source}: set-weights: {item!r} is not NAME=WEIGHT")
    _write(ctx, "set-weights", commands.set_weights(ctx.obj, parsed))


@control_app.command("promote")
def control_promote(ctx: typer.Context, name: str) -> None:
    """Blue/green: all served traffic to NAME."""
    _write(ctx, f"promote {name}", commands.promote(ctx.obj, name))


@control_app.command("disable")
def control_disable(ctx: typer.Context, name: str) -> None:
    """Feature flag off: a served variant's share goes to the rest; a shadow stops scoring."""
    _write(ctx, f"disable {name}", commands.disable(ctx.obj, name, off=True))


@control_app.command("enable")
def control_enable(ctx: typer.Context, name: str) -> None:
    """Feature flag on again."""
    _write(ctx, f"enable {name}", commands.disable(ctx.obj, name, off=False))


@control_app.command("pin")
def control_pin(ctx: typer.Context, name: str, version: str) -> None:
    """Serve VERSION of a model-directory variant instead of its highest."""
    _write(ctx, f"pin {name} {version}", commands.pin(ctx.obj, name, version))


@control_app.command("unpin")
def control_unpin(ctx: typer.Context, name: str) -> None:
    """Serve the highest version of NAME's model directory again."""
    _write(ctx, f"unpin {name}", commands.pin(ctx.obj, name, None))


@control_app.command("rollback")
def control_rollback(ctx: typer.Context) -> None:
    """Re-publish the record before the current one."""
    _write(ctx, "rollback", commands.rollback(ctx.obj))


@kafka_app.command("start")
def kafka_start(
    port: PortOpt = 9092,
    data_dir: DataDirOpt = None,
    sasl_ssl: Annotated[
        bool,
        typer.Option(
            "--sasl-ssl",
            help="Clients connect over SASL_SSL: SCRAM-SHA-512 (user streamer, password "
            "generated) and TLS with a CA made for the data directory. Fixed at first start.",
        ),
    ] = False,
) -> None:
    """Start the local broker (Apache Kafka jars via Maven, KRaft, one node)."""
    broker = LocalKafka(port=port, data_dir=data_dir, sasl_ssl=sasl_ssl)
    with _user_errors():
        result = start(broker)
    if result.already_running:
        typer.echo(f"Kafka already running at {result.bootstrap} (pid {result.pid})")
    else:
        typer.echo(f"Kafka started at {result.bootstrap} (pid {result.pid}, {result.seconds:.1f}s)")
    if result.topology_config:
        typer.echo(
            f"SASL_SSL: clients need these settings (the password is in {broker.password_file})"
        )
        typer.echo(f"kafka:\n  bootstrap_servers: {result.bootstrap}\n  config:")
        for key, value in result.topology_config.items():
            typer.echo(f"    {key}: {value}")


@kafka_app.command("stop")
def kafka_stop(port: PortOpt = 9092, data_dir: DataDirOpt = None) -> None:
    """Stop the local broker."""
    stopped = stop(LocalKafka(port=port, data_dir=data_dir))
    typer.echo("Kafka stopped" if stopped else "Kafka was not running")


@kafka_app.command("status")
def kafka_status(port: PortOpt = 9092, data_dir: DataDirOpt = None) -> None:
    """Exit 0 when the local broker answers, 1 when it is down."""
    broker = LocalKafka(port=port, data_dir=data_dir)
    up, pid = status(broker)
    if not up:
        typer.echo(f"Kafka is not running at {broker.bootstrap}")
        raise typer.Exit(1)
    mode = ", SASL_SSL" if broker.security_file.exists() else ""
    typer.echo(f"Kafka running at {broker.bootstrap} (pid {pid}, data {broker.home}{mode})")


def main() -> None:
    """Console-script entry point."""
    app()
