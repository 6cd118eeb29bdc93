#!/usr/bin/env python3
"""Cluster benchmarks (issue 10): every figure next to its single-node baseline from the same run.

    python3 benches/cluster.py            # full run, writes docs/benchmarks-cluster.md
    python3 benches/cluster.py --quick    # fewer rounds and messages; report in benches/results only

Builds release, then on this machine's loopback (each node on its own 127.0.3.x):
  - fan-out: 1,000 subscribers on one node, publisher on another node's API (channel without
    history, so one link crossing) vs. the same on a single node;
  - replicated publish throughput (channel with history, durability flush), batched (64 per
    /api/batch) and one per request, through the leader of a 3-node cluster vs. a single node;
  - inter-node bytes per publication (routing alone, and replication plus routing) and per
    interest change;
  - membership and interest convergence when a fifth node joins four;
  - leader kill (-9) to the first publish accepted again, over N kills (median and max).
Every server and load generator is stopped by the script; the whole run is bounded by --budget.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERALD = ROOT / "target/release/herald"
LOADGEN = ROOT / "target/release/herald-loadgen"
SECRET = "bench-secret"
API_KEY = "bench-key"
CLUSTER_SECRET = "bench-cluster-secret-0123456789"
# storage.durability of every node (--durability): "flush" is what the targets name.
DURABILITY = "flush"

CONFIG = """
[http]
listen = "{http}"
[client]
token_hmac_secret = "{secret}"
max_connections = 100000
[api]
key = "{api_key}"
[storage]
path = "{data}"
durability = "{durability}"
[channels.namespaces.bench]
allow_subscribe_for_client = true
allow_publish_for_client = true
[channels.namespaces.benchh]
history_size = 100
history_ttl = "10m"
force_recovery = true
allow_subscribe_for_client = true
allow_publish_for_client = true
"""

CLUSTER = """
[cluster]
node_name = "n{i}"
bind = "{bind}"
seeds = [{seeds}]
secret = "{cluster_secret}"
probe_interval = "200ms"
probe_timeout = "100ms"
suspect_timeout = "1s"
"""


def log(*args):
    print(time.strftime("%H:%M:%S"), *args, file=sys.stderr, flush=True)


class Node:
    def __init__(self, work, i, cluster_size=None, seeds_of=None):
        self.i = i
        self.ip = f"127.0.3.{i + 2}"
        self.http = f"{self.ip}:18000"
        self.dir = Path(work) / f"n{i}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "herald.toml"
        text = CONFIG.format(http=self.http, secret=SECRET, api_key=API_KEY, data=self.dir / "data", durability=DURABILITY)
        if cluster_size is not None:
            seeds = "" if i == 0 else f'"127.0.3.2:7946"'
            text += CLUSTER.format(i=i, bind=f"{self.ip}:7946", seeds=seeds, cluster_secret=CLUSTER_SECRET)
        self.config.write_text(text)
        self.proc = None

    def start(self):
        logf = open(self.dir / "herald.log", "ab")
        self.proc = subprocess.Popen(
            [str(HERALD), "serve", "--config", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=logf,
            env={**os.environ, "RUST_LOG": "warn"},
        )
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://{self.http}/metrics", timeout=1).read()
                return
            except Exception:
                time.sleep(0.05)
        raise RuntimeError(f"node {self.i} did not start")

    def kill(self):
        if self.proc:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self):
        if self.proc:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def status(self):
        out = subprocess.run(
            [str(HERALD), "cluster", "status", "--json", "--config", str(self.config)],
            capture_output=True,
            timeout=10,
        )
        try:
            return json.loads(out.stdout)
        except Exception:
            return None

    def metric(self, prefix):
        text = urllib.request.urlopen(f"http://{self.http}/metrics", timeout=5).read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(prefix):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def publish(self, channel, data, timeout=3.0):
        request = urllib.request.Request(
            f"http://{self.http}/api/publish",
            data=json.dumps({"channel": channel, "data": data}).encode(),
            headers={"X-API-Key": API_KEY, "Content-Type": "application/json"},
        )
        try:
            reply = json.loads(urllib.request.urlopen(request, timeout=timeout).read())
        except Exception:
            return None
        return reply.get("result")


def converged(nodes, timeout=30.0, interval=0.02):
    names = {f"n{n.i}" for n in nodes}
    start = time.time()
    while time.time() - start < timeout:
        ok = True
        for n in nodes:
            s = n.status()
            if not s:
                ok = False
                break
            alive = {m["name"] for m in s["members"] if m["state"] == "alive" and (m["link_up"] or m["name"] == s["node"])}
            if not names <= alive:
                ok = False
                break
        if ok:
            return time.time() - start
        time.sleep(interval)
    raise RuntimeError("cluster did not converge")


def leader_of(nodes, voters=3, timeout=30.0):
    start = time.time()
    while time.time() - start < timeout:
        for n in nodes:
            if n.proc is None:
                continue
            s = n.status()
            if s and s.get("role") == "leader" and len(s.get("voters", [])) == voters:
                return n
        time.sleep(0.05)
    raise RuntimeError("no leader")


def loadgen(sub_node, pub_node, args, label):
    cmd = [
        str(LOADGEN), "--target", "herald",
        "--url", f"ws://{sub_node.http}/connection/websocket",
        "--api", f"http://{pub_node.http}", "--api-key", API_KEY, "--token-secret", SECRET,
        "--label", label,
    ] + args
    log(label, " ".join(args))
    out = subprocess.run(cmd, capture_output=True, timeout=180)
    if out.returncode != 0:
        log(label, "failed:", out.stderr.decode()[-2000:])
        return None
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--kills", type=int, default=None)
    parser.add_argument("--budget", type=float, default=1200.0)
    parser.add_argument("--durability", choices=["flush", "os"], default="flush",
                        help="storage.durability of every node; the report is written to docs/ only for flush")
    args = parser.parse_args()
    global DURABILITY
    DURABILITY = args.durability
    kills = args.kills or (5 if args.quick else 20)
    fanout_messages = 1000 if args.quick else 3000
    history_messages = 5000 if args.quick else 20000
    single_messages = 1000 if args.quick else 3000

    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("budget spent")))
    signal.alarm(int(args.budget))
    subprocess.run(["cargo", "build", "--release", "--bin", "herald", "--bin", "herald-loadgen"], cwd=ROOT, check=True)
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True).stdout.decode().strip()
    results_dir = ROOT / "benches/results" / time.strftime("cluster-%Y%m%d-%H%M%S")
    results_dir.mkdir(parents=True, exist_ok=True)
    work = tempfile.mkdtemp(prefix="herald-cluster-bench-")
    nodes = []
    rows = {}

    def stop_all():
        for n in nodes:
            n.kill()
        nodes.clear()

    try:
        # ---------------------------------------------------------------- single node
        single = Node(work + "/single", 0)
        nodes.append(single)
        single.start()
        fan = loadgen(single, single, ["fanout", "--subscribers", "1000", "--messages", str(fanout_messages)], "single-fanout-1000")
        batched = loadgen(single, single, ["--namespace", "benchh", "--batch", "64", "--api-batch", "64", "--api-connections", "1",
                                           "fanout", "--subscribers", "1", "--messages", str(history_messages)], "single-history-batch64")
        one = loadgen(single, single, ["--namespace", "benchh", "fanout", "--subscribers", "1", "--messages", str(single_messages)], "single-history-1")
        parallel = loadgen(single, single, ["--namespace", "benchh", "--batch", "64", "--api-batch", "64", "--api-connections", "4",
                                            "fanout", "--subscribers", "1", "--messages", str(history_messages)], "single-history-batch64x4")
        spread = loadgen(single, single, ["--namespace", "benchh", "--batch", "64", "--api-batch", "64", "--api-connections", "1",
                                          "channels", "--channels", "100", "--messages", str(history_messages)], "single-history-batch64-100ch")
        stop_all()

        # ---------------------------------------------------------------- three nodes
        trio = [Node(work + "/trio", i, 3) for i in range(3)]
        nodes.extend(trio)
        for n in trio:
            n.start()
        converged(trio)
        leader = leader_of(trio)
        followers = [n for n in trio if n is not leader]
        route_before = followers[1].metric('herald_cluster_link_bytes_total{direction="out"}')
        cfan = loadgen(followers[0], followers[1], ["fanout", "--subscribers", "1000", "--messages", str(fanout_messages)], "cluster-fanout-1000")
        route_after = followers[1].metric('herald_cluster_link_bytes_total{direction="out"}')
        rep_before = leader.metric('herald_cluster_link_bytes_total{direction="out"}')
        cbatched = loadgen(followers[0], leader, ["--namespace", "benchh", "--batch", "64", "--api-batch", "64", "--api-connections", "1",
                                                  "fanout", "--subscribers", "1", "--messages", str(history_messages)], "cluster-history-batch64")
        rep_after = leader.metric('herald_cluster_link_bytes_total{direction="out"}')
        cone = loadgen(followers[0], leader, ["--namespace", "benchh", "fanout", "--subscribers", "1", "--messages", str(single_messages)], "cluster-history-1")
        cparallel = loadgen(followers[0], leader, ["--namespace", "benchh", "--batch", "64", "--api-batch", "64", "--api-connections", "4",
                                                   "fanout", "--subscribers", "1", "--messages", str(history_messages)], "cluster-history-batch64x4")
        cspread = loadgen(followers[0], leader, ["--namespace", "benchh", "--batch", "64", "--api-batch", "64", "--api-connections", "1",
                                                 "channels", "--channels", "100", "--messages", str(history_messages)], "cluster-history-batch64-100ch")
        # Interest changes: 1,000 subscriptions to distinct channels come and go on one node;
        # its link bytes over that time, less the idle digests over the same time.
        idle_before = followers[0].metric('herald_cluster_link_bytes_total{direction="out"}')
        time.sleep(3)
        idle_rate = (followers[0].metric('herald_cluster_link_bytes_total{direction="out"}') - idle_before) / 3
        before = followers[0].metric('herald_cluster_link_bytes_total{direction="out"}')
        t0 = time.time()
        loadgen(followers[0], followers[0], ["idle", "--connections", "1000", "--hold", "1"], "cluster-interest-1000")
        time.sleep(1.5)
        elapsed = time.time() - t0
        interest_bytes = followers[0].metric('herald_cluster_link_bytes_total{direction="out"}') - before - idle_rate * elapsed
        stop_all()

        # ---------------------------------------------------------------- five nodes: a join
        five = [Node(work + "/five", i, 5) for i in range(5)]
        nodes.extend(five)
        for n in five[:4]:
            n.start()
        converged(five[:4])
        t0 = time.time()
        five[4].start()
        started = time.time() - t0
        membership = converged(five, interval=0.01) + started
        t0 = time.time()
        sub = subprocess.Popen([str(HERALD), "sub", "bench:join", "--url", f"ws://{five[4].http}/connection/websocket",
                                "--config", str(five[4].config), "--timeout", "60s"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while True:
            if all((n.status() or {}).get("remote_interest", 0) >= 1 for n in five[:4]):
                break
            if time.time() - t0 > 30:
                raise RuntimeError("interest did not converge")
            time.sleep(0.01)
        interest = time.time() - t0
        sub.kill()
        stop_all()

        # ---------------------------------------------------------------- leader kills
        trio = [Node(work + "/kills", i, 3) for i in range(3)]
        nodes.extend(trio)
        for n in trio:
            n.start()
        converged(trio)
        outages = []
        for round_ in range(kills):
            leader = leader_of(trio)
            survivors = [n for n in trio if n is not leader]
            assert survivors[0].publish("benchh:kills", {"round": round_}) is not None
            leader.kill()
            t0 = time.time()
            k = 0
            # The node waits through the election itself (up to cluster.forward_timeout).
            while survivors[k % 2].publish("benchh:kills", {"round": round_, "after": True}, timeout=10.0) is None:
                k += 1
                if time.time() - t0 > 30:
                    raise RuntimeError("no publish accepted after a kill")
            outages.append(time.time() - t0)
            log(f"kill {round_ + 1}/{kills}: publishes accepted again after {outages[-1] * 1000:.0f} ms")
            leader.start()
            converged(trio)
        epochs = {trio[0].publish("benchh:kills", {"end": True})["epoch"]}
        stop_all()
    finally:
        stop_all()
        shutil.rmtree(work, ignore_errors=True)
        signal.alarm(0)

    def ratio(a, b):
        return a / b if a and b else float("nan")

    def get(r, key):
        return r[key] if r else float("nan")

    table = [
        ("cross-node fan-out, 1,000 subscribers (deliveries/s)", get(cfan, "deliveries_per_sec"), get(fan, "deliveries_per_sec")),
        ("replicated publish, batches of 64 (publications/s)", get(cbatched, "messages_per_sec"), get(batched, "messages_per_sec")),
        ("replicated publish, batches of 64 on 4 connections (publications/s)", get(cparallel, "messages_per_sec"), get(parallel, "messages_per_sec")),
        ("replicated publish, batches of 64 spread round-robin over 100 channels (publications/s)", get(cspread, "messages_per_sec"), get(spread, "messages_per_sec")),
        ("replicated publish, one per request (publications/s)", get(cone, "messages_per_sec"), get(one, "messages_per_sec")),
    ]
    figures = {
        "rev": rev,
        "table": table,
        "routing_bytes_per_publication": (route_after - route_before) / fanout_messages,
        "replication_bytes_per_publication": (rep_after - rep_before) / history_messages,
        "bytes_per_interest_change": interest_bytes / 2000,
        "membership_convergence_s": membership,
        "interest_convergence_s": interest,
        "kills": kills,
        "outage_median_s": statistics.median(outages),
        "outage_max_s": max(outages),
        "outages_s": outages,
        "epochs_after_kills": len(epochs),
        "runs": {"single": [fan, batched, parallel, spread, one], "cluster": [cfan, cbatched, cparallel, cspread, cone]},
    }
    (results_dir / "results.json").write_text(json.dumps(figures, indent=2))

    lines = [
        "# Cluster benchmarks",
        "",
        "<!-- Generated by benches/cluster.py; do not edit by hand. -->",
        "",
        f"Herald {rev}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, on this 2-core machine (nproc {os.cpu_count()}), "
        "release build, every node on its own loopback address (127.0.3.x), load generator and all nodes sharing the two cores. "
        "Each cluster figure sits next to the single-node figure of the same run: the ratio is what matters, since the machine is shared and noisy.",
        "",
        "| scenario | 3-node cluster | single node | ratio |",
        "|---|---:|---:|---:|",
    ]
    for name, clustered, alone in table:
        lines.append(f"| {name} | {clustered:,.0f} | {alone:,.0f} | {ratio(clustered, alone):.2f}× |")
    lines += [
        "",
        "| figure | value |",
        "|---|---:|",
        f"| membership convergence, a 5th node joining 4 (start to every node seeing 5 alive with links up) | {membership * 1000:,.0f} ms |",
        f"| interest convergence (a subscriber on the 5th node, from `herald sub` starting to every other node knowing) | {interest * 1000:,.0f} ms |",
        f"| leader kill -9 → publishes accepted again, median over {kills} kills | {statistics.median(outages) * 1000:,.0f} ms |",
        f"| the same, max | {max(outages) * 1000:,.0f} ms |",
        f"| epochs seen across all kills | {len(epochs)} |",
        f"| inter-node bytes per publication, routing only (no history, one interested node) | {figures['routing_bytes_per_publication']:,.0f} B |",
        f"| inter-node bytes per publication from the leader, replication to 2 followers plus routing (history, batches of 64) | {figures['replication_bytes_per_publication']:,.0f} B |",
        f"| inter-node bytes per interest change (1,000 channels gained then lost, idle digests subtracted) | {figures['bytes_per_interest_change']:,.0f} B |",
        "",
        "Payloads are 128-byte JSON in every scenario. Timing keys of the cluster: probe_interval 200 ms, probe_timeout 100 ms, "
        "suspect_timeout 1 s; Raft defaults (heartbeat 150 ms, election timeout 600–900 ms, pre-vote on). The fan-out run subscribes "
        "1,000 clients to a follower and publishes through the other follower's API; the replicated runs publish through the leader "
        "with one subscriber on a follower (one per channel in the 100-channel run, where each channel gets every 100th publication, "
        "so its history, 100 publications, turns over far slower than the 50 ms a follower's writes are held behind). Commands: `python3 benches/cluster.py` (this file), raw figures in "
        "`benches/results/cluster-*/results.json`.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick and DURABILITY == "flush":
        (ROOT / "docs/benchmarks-cluster.md").write_text(text)


if __name__ == "__main__":
    main()
