#!/usr/bin/env python3
"""Presents herald-loadgen results (JSON lines, one per run) for benches/compare.

    plot.py chart RESULTS.jsonl OUT.png       throughput vs subscriber count, Herald and NATS
    plot.py table RESULTS.jsonl               the comparison table (Markdown) on stdout
    plot.py doc RESULTS.jsonl --machine M --commands C --chart PNG --out docs/benchmarks.md
    plot.py field RESULTS.jsonl LABEL TARGET KEY   one value, for the script

Runs are paired by their --label (e.g. fanout-1000) and target (herald, nats); of repeated runs,
each server's best by its main figure is compared (see by_label).
"""

import argparse
import json
import sys
from pathlib import Path

# Below this share of its core, a server was not the bottleneck of a throughput run.
SATURATED = 0.85
# Above this share of a core, other processes competed with the run.
BUSY_MACHINE = 0.2


def load(path):
    runs = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line.startswith("{"):
            runs.append(json.loads(line))
    return runs


def primary(run):
    """The figure that ranks repeated runs, as a score where higher is better."""
    scenario = run["scenario"]
    if scenario in ("fanout", "channels"):
        return run["deliveries_per_sec"]
    if scenario == "latency":
        return -((run.get("latency_us") or {}).get("p99") or float("inf"))
    if scenario == "idle":
        return -((run.get("memory") or {}).get("per_connection_bytes") or float("inf"))
    return 0


def repeats(runs):
    """{label: {target: [runs]}}, labels in order of first appearance."""
    grouped = {}
    for run in runs:
        grouped.setdefault(run.get("label") or run["scenario"], {}).setdefault(run["target"], []).append(run)
    return grouped


def by_label(runs):
    """{label: {target: run}}: of repeated runs, each server's best by its primary figure (highest
    throughput, lowest p99, least memory). Noise on a shared machine only ever makes a run worse,
    and the same rule applies to both servers."""
    return {label: {target: max(rs, key=primary) for target, rs in targets.items()}
            for label, targets in repeats(runs).items()}


def selected(runs):
    return [run for targets in by_label(runs).values() for run in targets.values()]


def number(value, digits=0):
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def metrics(run):
    """(name, value, higher_is_better) for the run's scenario."""
    scenario = run["scenario"]
    if scenario in ("fanout", "channels"):
        return [("deliveries/s", run["deliveries_per_sec"], True)]
    if scenario == "latency":
        lat = run.get("latency_us") or {}
        return [(f"latency {p} µs", lat.get(k), False)
                for p, k in (("p50", "p50"), ("p99", "p99"), ("p99.9", "p999"), ("max", "max"))]
    if scenario == "idle":
        mem = run.get("memory") or {}
        return [("RSS bytes/connection", mem.get("per_connection_bytes"), False)]
    return []


def integrity(run):
    if run is None:
        return "—"
    text = f"{run['lost']}/{run['duplicates']}/{run['reordered']}"
    if run.get("connect_failures"):
        text += f", {run['connect_failures']} not connected"
    if run["acks"].get("errors"):
        text += f", {run['acks']['errors']} publish errors"
    return text


def percent(value):
    return "—" if value is None else f"{value * 100:.0f}%"


def pair(runs, key):
    return " / ".join(percent((r or {}).get(key)) if r else "—" for r in runs)


def table(runs):
    rows = [
        "| run | metric | Herald | NATS | Herald/NATS | lost/dup/reordered Herald · NATS "
        "| server CPU H / N | other load H / N |",
        "|---|---|---:|---:|---:|---|---|---|",
    ]
    for label, targets in by_label(runs).items():
        herald, nats = targets.get("herald"), targets.get("nats")
        first = herald or nats
        name = label
        if herald and herald["format"] != "json":
            name += f" ({herald['format']})"
        every = repeats(runs)[label]
        for i, (metric, _, higher) in enumerate(metrics(first)):
            h = metrics(herald)[i][1] if herald else None
            n = metrics(nats)[i][1] if nats else None
            ratio = f"{h / n:.2f}×" if h is not None and n else "—"
            better = "higher is better" if higher else "lower is better"

            def cell(value, target):
                others = [metrics(r)[i][1] for r in every.get(target, [])]
                others = [v for v in others if v is not None]
                if value is None or len(others) < 2:
                    return number(value)
                return f"{number(value)} <sub>({number(min(others))}–{number(max(others))})</sub>"

            rows.append(
                f"| {name if i == 0 else ''} | {metric} ({better}) | {cell(h, 'herald')} | {cell(n, 'nats')} "
                f"| {ratio} | {integrity(herald) if i == 0 else ''} · {integrity(nats) if i == 0 else ''} "
                f"| {pair([herald, nats], 'server_cpu') if i == 0 else ''} "
                f"| {pair([herald, nats], 'others_cpu') if i == 0 else ''} |"
            )
    return "\n".join(rows)


def caveats(runs):
    """Automatic remarks: what bounded each figure, and what disturbed it."""
    notes = []
    for run in runs:
        who = f"{run.get('label')} / {run['target']}"
        scenario = run["scenario"]
        if run.get("error") or run.get("timed_out") or run.get("stalled"):
            notes.append(f"{who}: incomplete run (error: {run.get('error')}, stalled: {run.get('stalled')}, "
                         f"timed out: {run.get('timed_out')}).")
        if run["lost"] or run["duplicates"] or run["reordered"]:
            closed = ", ".join(f"{n}× {why}" for why, n in run["endings"]["closed"].items())
            notes.append(f"{who}: lost {run['lost']}, duplicates {run['duplicates']}, reordered "
                         f"{run['reordered']}; connections closed by the server: {closed or 'none'}.")
        others = run.get("others_cpu")
        if others is not None and others > BUSY_MACHINE:
            notes.append(f"{who}: other processes used {others * 100:.0f}% of a core during the run; "
                         "the figure is pessimistic.")
        if scenario in ("fanout", "channels"):
            server, client = run.get("server_cpu"), run.get("client_cpu")
            if client is not None and client >= 0.9 and (server is None or server >= SATURATED):
                why = " (with about one publication per WebSocket message, much of that is the cost of being " \
                    "woken for every message)" if run.get("deliveries_per_frame", 0) < 2 else ""
                notes.append(f"{who}: the load generator used {client * 100:.0f}% of its core as well, so it "
                             f"may bound the figure too{why}.")
            if server is not None and server < SATURATED:
                bound = "the load generator" if client is not None and client >= SATURATED else \
                    "the round trips of the publish path (window, acknowledgements)"
                notes.append(f"{who}: server at {server * 100:.0f}% of its core, so not saturated; "
                             f"the figure is bounded by {bound}.")
    return notes


def all_runs(runs):
    rows = [
        "| # | run | target | figure | per WebSocket message | server CPU | load generator CPU | other load | clean |",
        "|---:|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for i, run in enumerate(runs, 1):
        shown = ", ".join(f"{name.split(' (')[0]} {number(value)}" for name, value, _ in metrics(run))
        clean = run["lost"] + run["duplicates"] + run["reordered"] + run["acks"]["errors"] == 0 \
            and not run.get("error") and not run.get("connect_failures")
        rows.append(
            f"| {i} | {run.get('label')} | {run['target']} | {shown} | {run.get('deliveries_per_frame', 0):.1f} "
            f"| {percent(run.get('server_cpu'))} | {percent(run.get('client_cpu'))} "
            f"| {percent(run.get('others_cpu'))} | {'yes' if clean else 'NO'} |"
        )
    return "\n".join(rows)


def spreads(runs):
    """Remarks on comparisons whose repeated runs disagree by more than half."""
    notes = []
    for label, targets in repeats(runs).items():
        for target, rs in targets.items():
            scores = [abs(primary(r)) for r in rs if primary(r) not in (0, float("inf"), float("-inf"))]
            if len(scores) > 1 and max(scores) > 1.5 * min(scores):
                notes.append(f"{label} / {target}: its {len(rs)} runs differ by {max(scores) / min(scores):.1f}× "
                             "in the main figure; read the best run together with the range.")
    return notes


def machine_lines(path):
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def doc(args):
    runs = load(args.results)
    machine = machine_lines(args.machine)
    commands = Path(args.commands).read_text().strip()
    out = [
        "# Benchmarks: Herald vs NATS over WebSocket",
        "",
        "<!-- Generated by benches/compare (benches/plot.py doc); do not edit by hand. -->",
        "",
        "Both servers run on the same machine in the same run, one at a time, each pinned to core 0 "
        "(`taskset -c 0`) and started fresh for every run; the load generator (`herald-loadgen`, "
        "`benches/loadgen/`) is pinned to core 1. Reproduce with `benches/compare` (full) or "
        "`benches/compare --quick`.",
        "",
        "## Machine",
        "",
        *[f"- {line}" for line in machine],
        "",
        "## Results",
        "",
        table(runs),
        "",
        "`lost/dup/reordered` count deliveries per subscriber against the sequence numbers embedded in "
        "the payloads. CPU is the share of one core used from the first publish to the last delivery; "
        "*other load* is every other process on the machine over the same interval. Where a comparison "
        "ran more than once, the table shows each server's best run by its main figure (highest "
        "throughput, lowest p99, least memory: noise only makes runs worse, and the rule is the same "
        "for both servers), with the range over all runs in small print; every run is listed under "
        "*All runs*.",
        "",
        f"![fan-out throughput vs subscribers]({args.chart})",
        "",
        "## What the scenarios do",
        "",
        "- **fanout-S**: S subscriber connections on one channel, one publisher, 128-byte JSON payloads. "
        "Throughput = distinct deliveries / (last delivery − first publish). The publisher keeps at most "
        "256 messages in flight (published but not yet delivered to every subscriber) so neither server "
        "is pushed into dropping slow consumers; both servers get the same pacing.",
        "- **channels-N**: N channels with one subscriber each, messages published round-robin.",
        "- **latency-S**: a fixed publish rate (half of Herald's fan-out rate at S subscribers, the same "
        "rate for NATS), open loop; **latency-S-light** at a tenth of Herald's fan-out rate. Each payload "
        "carries its send time; latency is measured at the subscriber (same process, one monotonic clock) "
        "and includes the load generator's own delay in reading S sockets in turn on its one core. The "
        "publisher runs on a thread of its own, ticking every millisecond; `publish_lag_max_ms` in the "
        "JSON says how far it ever fell behind its schedule.",
        "- **idle-C**: C connections, each subscribed to its own channel; server RSS (`VmRSS`) before "
        "connecting and 3 s after the last subscription, divided by C; then one message per channel "
        "checks that every connection still delivers. The reading before is taken after 16 warm-up "
        "connections have connected, subscribed and closed, so that what the server touches once "
        "(pages of its executable first run) is not divided among the C connections. C is 20,000 unless the machine's hard open-file "
        "limit (see *Machine*) leaves room for fewer: each connection is a descriptor in both processes. "
        "Beyond 25,000 connections the load generator binds its sockets to 127.0.0.2, 127.0.0.3, … "
        "(`--connections-per-source-address`).",
        "- Herald is configured with the `bench` namespace: no history, no presence, no join/leave "
        "(pure fan-out, like core NATS). Rows labelled `-history` use the `benchh` namespace (history "
        "of 100, durability `flush`: Herald handles one connection's requests one at a time, so with a single "
        "publishing connection every publish waits for a disk flush of its own), `-history-os` the same with durability `os`, "
        "`-batch` 32 publishes per `POST /api/batch` call (appended together: one flush serves the 32), "
        "`-protobuf` the Protobuf format, `-socket` client-side publish "
        "commands instead of the HTTP API. Herald publishes through `POST /api/publish` on one "
        "pipelined HTTP/1.1 connection unless labelled otherwise; NATS publishes `PUB` on one "
        "WebSocket connection.",
        "",
        "## Remarks generated from the figures",
        "",
    ]
    notes = caveats(selected(runs)) + spreads(runs)
    out += [f"- {n}" for n in notes] or ["- none: every run was complete, clean and bounded by the server."]
    out += [
        "",
        "## All runs",
        "",
        "In the order they ran. *Per WebSocket message*: publications per WebSocket message the "
        "subscribers received, i.e. how much the server batches its writes.",
        "",
        all_runs(runs),
        "",
        "## Exact commands",
        "",
        "Servers (ports and paths from the run's temporary directory):",
        "",
        "```sh",
        "RUST_LOG=warn taskset -c 0 target/release/herald serve --config herald.toml   # see benches/compare",
        "taskset -c 0 benches/.venv/bin/nats-server -c nats.conf                       # websocket { no_tls: true }",
        "```",
        "",
        "Load generator, one line per run:",
        "",
        "```sh",
        commands,
        "```",
        "",
        "Raw results (one JSON object per run) are kept in `benches/results/` (not committed).",
        "",
    ]
    Path(args.out).write_text("\n".join(out))


def chart(args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=120)
    series = {}
    for label, targets in repeats(load(args.results)).items():
        for target, runs in targets.items():
            if runs[0]["scenario"] != "fanout":
                continue
            best = max(runs, key=primary)
            variant = label.split("-", 2)[2] if label.count("-") >= 2 else ""
            name = {"herald": "Herald", "nats": "NATS"}[target]
            if target == "herald":
                name += f" ({variant})" if variant else f" ({best['format']}, API publish)"
            figures = [r["deliveries_per_sec"] for r in runs]
            series.setdefault(name, []).append((best["subscribers"], best["deliveries_per_sec"], min(figures)))
    spare = iter(["tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray", "tab:olive"])
    for name, points in sorted(series.items()):
        points.sort()
        xs = [p[0] for p in points]
        ys = [p[1] / 1e6 for p in points]
        # Error bars down to the worst of the repeated runs.
        low = [(p[1] - p[2]) / 1e6 for p in points]
        style = "o-" if len(points) > 1 else "D"
        color = "tab:orange" if name == "NATS" else "tab:blue" if len(points) > 1 else next(spare, None)
        ax.errorbar(xs, ys, yerr=[low, [0] * len(low)], fmt=style, capsize=3, label=name, color=color)
    ax.set_xscale("log")
    ax.set_xlabel("subscribers on one channel")
    ax.set_ylabel("deliveries per second (millions)")
    ax.set_title("Fan-out throughput, server on one core, WebSocket\n(best run; bars down to the worst)")
    ax.set_ylim(bottom=0)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    fig.tight_layout()
    fig.savefig(args.out)


def field(args):
    for run in selected(load(args.results)):
        if (run.get("label") or run["scenario"]) == args.label and run["target"] == args.target:
            value = run
            for key in args.key.split("."):
                value = value[key]
            print(value)
            return
    sys.exit(f"no {args.target} run labelled {args.label}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("chart")
    p.add_argument("results")
    p.add_argument("out")
    p.set_defaults(run=chart)
    p = sub.add_parser("table")
    p.add_argument("results")
    p.set_defaults(run=lambda a: print(table(load(a.results))))
    p = sub.add_parser("doc")
    p.add_argument("results")
    p.add_argument("--machine", required=True)
    p.add_argument("--commands", required=True)
    p.add_argument("--chart", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(run=doc)
    p = sub.add_parser("field")
    p.add_argument("results")
    p.add_argument("label")
    p.add_argument("target")
    p.add_argument("key")
    p.set_defaults(run=field)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
