"""Profile the engine in-process on the throughput benchmark's workload (cProfile).

    .venv/bin/python -m benchmarks.profile_engine [--events N] [--partitions P]
        [--batch-size B] [--out benchmarks/results/engine_profile.txt]

Starts its own broker and pre-loads N demo events like `benchmarks.throughput`, then runs
`streamer.agent.Agent` on the same one-variant topology in this process's main thread under
cProfile (cProfile sees only the thread that enabled it), while a helper thread stops the
agent once all N are served.
Writes the top functions by own time and by cumulative time to --out, and the raw stats
next to it (.prof, for snakeviz or pstats).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.throughput import (
    DEFAULT_BATCH,
    DEFAULT_PARTITIONS,
    MODEL_STEM,
    engine_topology,
    local_broker,
    preload,
)
from streamer.agent import Agent, AgentStats
from streamer.testing import unique

DEFAULT_EVENTS = 100_000
DEFAULT_OUT = Path("benchmarks/results/engine_profile.txt")
TIMEOUT_S = 600.0
TOP = 30


def profile_agent(agent: Agent, n: int, timeout_s: float) -> tuple[cProfile.Profile, float]:
    """Run the agent under cProfile until it served n events; (profile, seconds serving)."""
    failed: list[str] = []

    def stopper() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            s = agent.stats
            if s.served + s.dead_letters >= n:
                break
            time.sleep(0.05)
        else:
            failed.append(f"agent served {agent.stats.served} of {n} within {timeout_s:.0f}s")
        agent.stop()

    thread = threading.Thread(target=stopper, name="stopper", daemon=True)
    profiler = cProfile.Profile()
    thread.start()
    stats: AgentStats
    profiler.enable()
    try:
        stats = agent.run()
    finally:
        profiler.disable()
        agent.stop()
        thread.join(10)
    if failed:
        raise TimeoutError(failed[0])
    first, last = stats.first_output_at, stats.last_output_at
    serving_s = (last - first) if first is not None and last is not None else float("nan")
    return profiler, serving_s


def report(profiler: cProfile.Profile, header: str) -> str:
    out = io.StringIO()
    out.write(header + "\n")
    for key in ("tottime", "cumulative"):
        out.write(f"\n===== top {TOP} by {key} =====\n")
        stats = pstats.Stats(profiler, stream=out)
        stats.strip_dirs().sort_stats(key).print_stats(TOP)
    return out.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_engine")
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS)
    parser.add_argument("--partitions", type=int, default=DEFAULT_PARTITIONS)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    n, parts = args.events, args.partitions
    with local_broker() as bootstrap:
        name = unique("bench-prof")
        topology = engine_topology(name, bootstrap, f"{name}-in", parts, args.batch_size)
        preload(topology, n)
        profiler, serving_s = profile_agent(Agent(topology), n, TIMEOUT_S)

    header = (
        f"engine in-process under cProfile: {n:,} events, {parts} partitions, batch "
        f"{args.batch_size}, {MODEL_STEM}; {serving_s:.2f}s first to last output "
        f"({n / serving_s:,.0f} events/s with profiler overhead)"
    )
    text = report(profiler, header)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    profiler.dump_stats(str(args.out.with_suffix(".prof")))
    print(text)
    print(f"written {args.out} and {args.out.with_suffix('.prof')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
