"""The `streamer` command. Each command parses arguments and calls one function; user errors
become one line on stderr and exit code 1, usage errors exit 2."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Annotated, NoReturn

import typer
from confluent_kafka import KafkaException

from streamer.agent import CONNECT_TIMEOUT_S, DRAIN_TIMEOUT_S, Agent
from streamer.config import Topology, load_topology
from streamer.errors import StreamerError
from streamer.kafka.admin import create_topics
from streamer.kafka.local import LocalKafka, start, status, stop
from streamer.models import Model
from streamer.validate import validate as check

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Streaming ML inference on Apache Kafka.",
)
kafka_app = typer.Typer(no_args_is_help=True, help="A local single-node Kafka for development.")
topics_app = typer.Typer(no_args_is_help=True, help="Manage a topology's topics.")
app.add_typer(kafka_app, name="kafka")
app.add_typer(topics_app, name="topics")

TopologyArg = Annotated[Path, typer.Argument(help="Topology YAML file.", show_default=False)]
PortOpt = Annotated[int, typer.Option(help="Broker port (the controller uses port+1).")]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(help="Broker state directory (default: ~/.cache/streamer/kafka/broker-PORT)."),
]


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
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


def _validated(topology: Path) -> tuple[Topology, dict[str, Model]]:
    """The loaded topology and models, or every problem on stderr (one line each) and exit 1."""
    result = check(topology)
    for p in result.problems:
        typer.echo(f"error: {p}", err=True)
    if result.problems or result.topology is None:
        raise typer.Exit(1)
    return result.topology, result.models


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@app.command()
def demo(
    topology: Annotated[Path, typer.Option(help="Demo topology.")] = Path("topologies/fraud.yaml"),
    events: Annotated[int, typer.Option(min=1, help="Events to stream.")] = 30_000,
    rate: Annotated[float, typer.Option(min=1.0, help="Events per second offered.")] = 5_000.0,
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
    """Load config, schemas and models; check shapes and names; exit 1 listing each problem."""
    loaded, _ = _validated(topology)
    variants = ", ".join(v.name + (" (shadow)" if v.shadow else "") for v in loaded.variants)
    typer.echo(
        f"{topology}: ok: {loaded.name}: {len(loaded.features)} features, variants {variants}"
    )


@app.command()
def run(
    topology: TopologyArg,
    log_level: Annotated[str, typer.Option(help="Python log level.")] = "info",
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
    _setup_logging(log_level)
    loaded, models = _validated(topology)
    with _user_errors(topology):
        agent = Agent(
            loaded, models, connect_timeout_s=connect_timeout, drain_timeout_s=drain_timeout
        )

        def _stop(signum: int, _frame: FrameType | None) -> None:
            name = signal.Signals(signum).name
            logging.getLogger("streamer").info("%s: draining (send again to exit now)", name)
            # The drain may sit in librdkafka (a hung broker) where Python handlers cannot run;
            # the default action lets a second signal end the process at once. Offsets of
            # unfinished batches stay uncommitted, so their events are simply served again.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            agent.stop()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        logging.getLogger("streamer").info("ready for signals; connecting to Kafka")
        stats = agent.run()
    typer.echo(
        f"stopped: {stats.consumed} consumed, {stats.served} served, "
        f"{stats.dead_letters} dead letters, {stats.batches} batches",
        err=True,
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


@kafka_app.command("start")
def kafka_start(port: PortOpt = 9092, data_dir: DataDirOpt = None) -> None:
    """Start the local broker (Apache Kafka jars via Maven, KRaft, one node)."""
    with _user_errors():
        result = start(LocalKafka(port=port, data_dir=data_dir))
    if result.already_running:
        typer.echo(f"Kafka already running at {result.bootstrap} (pid {result.pid})")
    else:
        typer.echo(f"Kafka started at {result.bootstrap} (pid {result.pid}, {result.seconds:.1f}s)")


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
    typer.echo(f"Kafka running at {broker.bootstrap} (pid {pid}, data {broker.home})")


def main() -> None:
    """Console-script entry point."""
    app()
