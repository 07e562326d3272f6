"""``python -m benchmarks [--quick] [--only ...] [--peers ...] [--runs 3] [--broker redis|amqp]``."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from benchmarks import FIGURES, venv
from benchmarks.peers import PEERS, QUICK_PEERS, Peer

# The other modules need redis, which ``setup`` installs: they are imported where they are used.
if TYPE_CHECKING:
    from benchmarks import figures
    from benchmarks.services import Services


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("command", nargs="?", choices=["run", "setup"], default="run")
    parser.add_argument("--quick", action="store_true", help="small N, 1 run: checks the benchmark works")
    parser.add_argument("--only", default=",".join(FIGURES), help="figures: " + ",".join(FIGURES))
    parser.add_argument("--peers", help="default: all installed (quick: " + ",".join(QUICK_PEERS) + ")")
    parser.add_argument("--runs", type=int, help="runs per figure (default 3; quick 1)")
    parser.add_argument("--broker", choices=["redis", "amqp", "both"], default="both")
    parser.add_argument("-n", type=int, help="tasks for publish and drain (default 20000; quick 500)")
    parser.add_argument(
        "--python", default=venv.default_python(), help="interpreter with the peers installed"
    )
    parser.add_argument("--redis-url", help="a Redis DB of the run's own (default: claim a free one of 1-14)")
    parser.add_argument("--amqp-url", help="a RabbitMQ vhost of the run's own (default: make one)")
    parser.add_argument("--json", help="also write the raw values here")
    return parser.parse_args(argv)


def _installed(python: str, peer: Peer) -> bool:
    proc = subprocess.run([python, "-c", f"import {peer.distribution}"], capture_output=True)
    return proc.returncode == 0


def _choose_peers(args: argparse.Namespace) -> list[Peer]:
    if args.peers:
        unknown = set(args.peers.split(",")) - set(PEERS)
        if unknown:
            raise SystemExit(f"unknown peers {sorted(unknown)}; known: {', '.join(PEERS)}")
        return [PEERS[name] for name in args.peers.split(",")]
    names = QUICK_PEERS if args.quick else tuple(PEERS)
    chosen = [PEERS[name] for name in names if _installed(args.python, PEERS[name])]
    skipped = sorted(set(names) - {p.name for p in chosen})
    if skipped:
        print(f"not installed in {args.python}, left out: {', '.join(skipped)}", file=sys.stderr)
    return chosen


def _plan(args: argparse.Namespace) -> figures.Plan:
    from benchmarks import figures

    only = tuple(f for f in args.only.split(",") if f)
    unknown = set(only) - set(FIGURES)
    if unknown:
        raise SystemExit(f"unknown figures {sorted(unknown)}; known: {', '.join(FIGURES)}")
    if args.quick:
        return figures.Plan(only, args.n or 500, 50, 200, 100, args.python, drain_timeout=60)
    return figures.Plan(only, args.n or 20000, 500, 2000, 500, args.python)


def _measure(args: argparse.Namespace, plan: figures.Plan, peers: list[Peer], services: Services) -> str:
    from benchmarks import ceiling, figures, report, workers

    runs = args.runs or (1 if args.quick else 3)
    brokers = ["redis", "amqp"] if args.broker == "both" else [args.broker]
    results: report.Results = {}
    info: dict[str, dict[str, dict]] = {}
    for broker in brokers:
        for peer in (p for p in peers if broker in p.brokers):
            env = workers.Env(
                args.python, services.broker_url(broker), "", "info", services.redis_url, peer.variant
            )
            about = workers.drive(env, peer.module, "info", str(plan.sleep_concurrency))
            info.setdefault(broker, {})[peer.name] = about
            for run in range(runs):
                started = time.monotonic()
                values = figures.run_peer(plan, services, peer, broker, run, about).values
                results.setdefault(broker, {}).setdefault(peer.name, []).append(values)
                took = time.monotonic() - started
                print(f"{broker} {peer.name} run {run + 1}/{runs} ({took:.0f} s): {values}", file=sys.stderr)
    ceil: dict[str, list[float]] = {}
    if "ceiling" in plan.figures:
        for _ in range(runs):
            services.reset()
            for key, value in ceiling.redis_benchmark(
                services.redis_url, 100000 if not args.quick else 5000
            ).items():
                ceil.setdefault(key, []).append(value)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "info": info, "ceiling": ceil}, f, indent=1)
    header = (
        f"N = {plan.n:,} tasks (publish, drain), {plan.roundtrips} round trips, {plan.sleeps:,} sleeps on"
        f" {plan.sleep_concurrency} slots; median of {runs} run(s) (min-max); 2 worker processes, no-op tasks"
    )
    return report.render(results, info, ceil, header)


def main(argv: list[str]) -> None:
    args = _args(argv)
    if args.command == "setup":  # on a bare interpreter: the rest needs what setup installs
        venv.setup()
        return
    from benchmarks.services import claimed

    plan = _plan(args)
    peers = _choose_peers(args)
    if not peers:
        raise SystemExit("no peer to run")
    need_amqp = args.broker in ("amqp", "both")
    # a SIGTERM unwinds like Ctrl-C, so the claimed DB and the vhost are still given back
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with claimed(args.redis_url, args.amqp_url, need_amqp) as services:
        print(_measure(args, plan, peers, services))


if __name__ == "__main__":
    main(sys.argv[1:])
