#!/usr/bin/env python3
"""Scale-out, saturation and replica-wait figures for BENCHMARKS.md ("Redis Sentinel, Cluster and
the replica wait"). After `cargo build --release`:

  bench/redis_scale.py scale      # 1, 2, 3 nodes on one Redis and on a 3-master cluster, one rate
  bench/redis_scale.py saturate   # the same setups, the publish rate raised step by step
  bench/redis_scale.py wait       # one node on a master with one replica (and on a 3-master
                                  # cluster with one replica each), WAIT off and on

Each row: deliveries/s against the offered rate, Redis CPU time per publication (every Redis
server's `used_cpu_sys` + `used_cpu_user`, background work included), end-to-end delivery p50/p99 (publish call to
arrival), the publishers' acknowledgement p99, losses, and what Redis did meanwhile, per
publication: commands (`total_commands_processed`; `INFO commandstats` by command, the publish
script's inner commands included) and socket reads (`total_reads_processed`: about one per round
trip a client makes), summed over every Redis server (each master of the cluster) and divided by
the publications made. Publishers are on node 1 (its HTTP API), subscribers spread over all nodes:
one bench process per node, each with its own channel and subscribers on that node.

`saturate` raises the rate of every bench process by `--factor` from `--start` until a step
falls behind: deliveries/s under 90 % of the offered rate, a publish error, a lost publication, or
a p99 over `--p99-limit` ms (and over ten times the first step's); the last step before it is the
saturation point. Every step is bounded in time (the bench is killed past its duration, drain and
a minute), and so is the number of steps.

Every server is started here on free loopback ports and stopped at the end; servers and Redis are
pinned to core 0, bench processes to core 1 (`taskset`). `--bin` (or SWITCHBOARD_BIN) runs
another build, e.g. target/debug/switchboard for a quick check that the script works.
"""
import argparse, json, os, socket, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
SERVE = ["serve", "--join-leave", "false", "--client-command-rate", "0", "--connection-rate-per-ip", "0"]
# Commands shown by name in the per-publication breakdown (the rest are summed in "other").
SHOWN = ["evalsha", "eval", "exec", "multi", "wait", "publish", "spublish", "xadd", "hincrby",
         "hget", "hset", "expire", "subscribe", "ssubscribe"]


def free_ports(n, bus=False):
    out = []
    while len(out) < n:
        s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close()
        if bus:
            if p >= 55000: continue
            t = socket.socket()
            try: t.bind(("127.0.0.1", p + 10000))
            except OSError: t.close(); continue
            t.close()
        if p not in out: out.append(p)
    return out


def wait_port(p, t=10):
    end = time.time() + t
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", p), 0.2).close(); return
        except OSError: time.sleep(0.05)
    raise SystemExit(f"port {p} never opened")


procs = []
def spawn(args, **kw):
    p = subprocess.Popen(["taskset", "-c", "0"] + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    procs.append(p); return p


def stop_all():
    for p in procs:
        p.kill(); p.wait()
    procs.clear()


def redis(port, d, extra=()):
    spawn(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", d, *extra])
    wait_port(port)


def cluster(d, replicas=0):
    """A 3-master Redis Cluster, with `replicas` replicas per master; the masters' ports."""
    ports = free_ports(3 * (1 + replicas), bus=True)
    for p in ports:
        sub = os.path.join(d, f"c{p}"); os.makedirs(sub)
        redis(p, sub, ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
    subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                    "--cluster-replicas", str(replicas), "--cluster-yes"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    for _ in range(100):
        ok = all(b"cluster_state:ok" in subprocess.run(["redis-cli", "-p", str(p), "cluster", "info"], capture_output=True, timeout=10).stdout for p in ports)
        if ok: break
        time.sleep(0.1)
    else:
        raise SystemExit("the cluster never formed")
    masters = [p for p in ports
               if b"role:master" in subprocess.run(["redis-cli", "-p", str(p), "info", "replication"], capture_output=True, timeout=10).stdout]
    # Every replica in sync before a run measures anything.
    for _ in range(100):
        synced = sum(subprocess.run(["redis-cli", "-p", str(p), "info", "replication"], capture_output=True, timeout=10).stdout.count(b"state=online") for p in masters)
        if synced >= 3 * replicas: break
        time.sleep(0.1)
    else:
        raise SystemExit("the replicas never came in sync")
    return masters


def setup(kind, d):
    """Starts one Redis or a 3-master cluster; the nodes' flags and the Redis ports to watch."""
    if kind == "redis":
        (m,) = free_ports(1); redis(m, d)
        return ["--redis", f"redis://127.0.0.1:{m}"], [m]
    ports = cluster(d)
    return ["--redis-cluster", ",".join(f"127.0.0.1:{p}" for p in ports)], ports


def nodes(binary, n, target, d, extra=()):
    ports = free_ports(n)
    pids = []
    for i, p in enumerate(ports):
        pr = spawn([binary, *SERVE, "--port", str(p), "--data-dir", os.path.join(d, f"n{i}-{p}"), *target, *extra])
        pids.append(pr.pid)
    for p in ports: wait_port(p)
    time.sleep(1)
    return ports, pids


def redis_stats(ports):
    """Counters of the Redis servers on `ports`, summed: commands, socket reads, calls by command."""
    total = {"commands": 0, "reads": 0, "cpu": 0.0, "calls": {}}
    for p in ports:
        text = subprocess.run(["redis-cli", "-p", str(p), "info", "all"], capture_output=True, text=True, timeout=10).stdout
        for line in text.splitlines():
            if line.startswith("total_commands_processed:"):
                total["commands"] += int(line.split(":")[1])
            elif line.startswith("total_reads_processed:"):
                total["reads"] += int(line.split(":")[1])
            elif line.startswith(("used_cpu_sys:", "used_cpu_user:")):
                total["cpu"] += float(line.split(":")[1])
            elif line.startswith("cmdstat_"):
                name, fields = line[len("cmdstat_"):].split(":", 1)
                calls = int(dict(f.split("=") for f in fields.split(","))["calls"])
                total["calls"][name] = total["calls"].get(name, 0) + calls
    return total


def per_publication(before, after, published):
    """What Redis did between two `redis_stats`, per publication."""
    if published == 0:
        return {}
    calls = {k: after["calls"].get(k, 0) - before["calls"].get(k, 0) for k in after["calls"]}
    shown = {k: round(calls.get(k, 0) / published, 3) for k in SHOWN if calls.get(k, 0)}
    other = sum(v for k, v in calls.items() if k not in SHOWN)
    if other: shown["other"] = round(other / published, 3)
    return {
        "redis_commands_per_pub": round((after["commands"] - before["commands"]) / published, 3),
        "redis_reads_per_pub": round((after["reads"] - before["reads"]) / published, 3),
        # CPU time of every Redis server (main thread and others), in microseconds.
        "redis_cpu_us_per_pub": round((after["cpu"] - before["cpu"]) * 1e6 / published, 1),
        "redis_calls_per_pub": shown,
    }


def fanout(binary, node_ports, pids, subs, rate, secs, via="api", publishers=None, prefix="b", drain=3):
    """One bench process per node, each with its own channel and `subs` subscribers on node i,
    publishing `rate`/s through node 0's API (or WebSocket on node 0 when via == ws and one
    node), over `publishers` connections per process (the bench's default when None). Returns the reports, or None for a bench that did not end in time (killed)."""
    benches = []
    for i, p in enumerate(node_ports):
        args = [binary, "bench", "fanout", "--url", f"ws://127.0.0.1:{p}/connection/websocket",
                "-n", str(subs), "-r", str(rate), "-d", f"{secs}s", "-p", "100", "--prefix", f"{prefix}{i}",
                "--quiet", "--json", "--via", via, "--drain", f"{drain}s"]
        if via == "api":
            args += ["--api-url", f"http://127.0.0.1:{node_ports[0]}/api"]
        if publishers: args += ["--publishers", str(publishers)]
        if i == 0: args += ["--pid", str(pids[0])]
        benches.append(subprocess.Popen(["taskset", "-c", "1"] + args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL))
    out = []
    deadline = time.time() + secs + drain + 60
    for b in benches:
        try:
            text = b.communicate(timeout=max(1, deadline - time.time()))[0].decode()
            out.append(json.loads(text[text.index("{"):]))
        except (subprocess.TimeoutExpired, ValueError):
            b.kill(); b.wait()
            out.append(None)
    return out


def summary(reports, rate, secs, subs):
    if any(r is None for r in reports):
        return {"timed_out": True}
    expected = rate * subs * len(reports)
    return {
        "offered_pub_per_s": rate * len(reports),
        "expected_deliveries_per_s": expected,
        "delivered_per_s": round(sum(r["delivered_per_sec"] for r in reports)),
        "published": sum(r["published"] for r in reports),
        "publish_errors": sum(r["publish_errors"] for r in reports),
        "lost": sum(r["lost_publications"] for r in reports),
        "dups": sum(r["duplicates"] for r in reports),
        "order": sum(r["order_violations"] for r in reports),
        "p50_ms": max(r["latency"]["p50_us"] for r in reports) / 1000,
        "p99_ms": max(r["latency"]["p99_us"] for r in reports) / 1000,
        "ack_p50_ms": max(r["ack_latency"]["p50_us"] for r in reports) / 1000,
        "ack_p99_ms": max(r["ack_latency"]["p99_us"] for r in reports) / 1000,
        "server0_cpu": reports[0].get("server_cpu_percent"),
    }


def measured(binary, ports, pids, redis_ports, subs, rate, secs, prefix, publishers=None, drain=3):
    """One fanout run with the Redis counters read before and after it."""
    before = redis_stats(redis_ports)
    reports = fanout(binary, ports, pids, subs, rate, secs, "api", publishers=publishers, prefix=prefix, drain=drain)
    s = summary(reports, rate, secs, subs)
    after = redis_stats(redis_ports)
    if not s.get("timed_out"):
        s.update(per_publication(before, after, s["published"]))
    return s


def behind(s, first_p99, p99_limit, secs):
    """Why a step fell behind (empty: it kept up). Publishers that could not send the offered
    rate are told apart: then the bench's API connections (`--publishers`), each with one
    request in flight, were the limit, not necessarily the servers."""
    if s.get("timed_out"): return "bench did not end in time"
    why = []
    if s["published"] < 0.9 * s["offered_pub_per_s"] * secs: why.append("publishers could not send the offered rate")
    if s["delivered_per_s"] < 0.9 * s["expected_deliveries_per_s"]: why.append("deliveries below 90% of offered")
    if s["publish_errors"]: why.append("publish errors")
    if s["lost"]: why.append("lost publications")
    if s["p99_ms"] > p99_limit and (first_p99 is None or s["p99_ms"] > 10 * first_p99): why.append("p99 exploded")
    return ", ".join(why)


def load(): return open("/proc/loadavg").read().split()[:3]


def table(rows):
    """The rows as a Markdown table, for BENCHMARKS.md."""
    head = "| setup | nodes | pub/s offered | deliveries/s (expected) | p50 / p99 ms | ack p99 ms | Redis cmds / reads per pub | lost, errors |"
    print("\n" + head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        if r.get("timed_out"):
            print(f"| {r['kind']} | {r['nodes']} | {r.get('offered_pub_per_s', r['rate'] * r['nodes'])} | timed out | | | | |")
            continue
        mark = f" ← {r['behind']}" if r.get("behind") else ""
        print(f"| {r['kind']} | {r['nodes']} | {r['offered_pub_per_s']} | {r['delivered_per_s']:,} ({r['expected_deliveries_per_s']:,}){mark} | "
              f"{r['p50_ms']} / {r['p99_ms']} | {r['ack_p99_ms']} | {r.get('redis_commands_per_pub')} / {r.get('redis_reads_per_pub')} | "
              f"{r['lost']}, {r['publish_errors']} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["scale", "saturate", "wait"])
    ap.add_argument("--bin", default=os.environ.get("SWITCHBOARD_BIN", os.path.join(HERE, "..", "target", "release", "switchboard")))
    ap.add_argument("--kinds", default="redis,cluster", help="redis, cluster or both")
    ap.add_argument("--nodes", default="1,2,3", help="node counts")
    ap.add_argument("--subs", type=int, default=300, help="subscribers per bench process (per node)")
    ap.add_argument("--rate", type=int, default=300, help="scale: publications/s per bench process")
    ap.add_argument("--secs", type=int, default=10, help="publishing time of a run (saturate: of a step)")
    ap.add_argument("--start", type=int, default=200, help="saturate: first rate per bench process")
    ap.add_argument("--factor", type=float, default=1.5, help="saturate: rate multiplier per step")
    ap.add_argument("--steps", type=int, default=10, help="saturate: most steps per setup")
    ap.add_argument("--publishers", type=int, default=None, help="API connections per bench process [bench default: 4]")
    ap.add_argument("--p99-limit", type=float, default=250.0, help="saturate: p99 (ms) that counts as exploded")
    a = ap.parse_args()
    binary = os.path.abspath(a.bin)
    if not os.access(binary, os.X_OK):
        raise SystemExit(f"{binary} not found: cargo build --release (or --bin)")
    kinds = a.kinds.split(","); counts = [int(n) for n in a.nodes.split(",")]
    d = tempfile.mkdtemp()
    started = time.time()
    rows, points = [], []
    try:
        if a.what == "wait":
            for rnd in (1, 2):
                for kind in kinds:
                    for wait in ("0", "1"):
                        if kind == "redis":
                            m, r = free_ports(2)
                            redis(m, d); redis(r, d, ["--replicaof", "127.0.0.1", str(m), "--repl-diskless-sync-delay", "0"])
                            time.sleep(1.5)
                            target = ["--redis", f"redis://127.0.0.1:{m}"]
                        else:
                            masters = cluster(d, replicas=1)
                            target = ["--redis-cluster", ",".join(f"127.0.0.1:{p}" for p in masters)]
                        ports, pids = nodes(binary, 1, target, d, ["--redis-wait-replicas", wait])
                        l = load()
                        api = summary(fanout(binary, ports, pids, 100, 1000, 5, "api"), 1000, 5, 100)
                        ws = summary(fanout(binary, ports, pids, 1000, 3000, 10, "ws", publishers=1), 3000, 10, 1000)
                        print(json.dumps({"round": rnd, "kind": kind, "wait": wait, "load": l, "api_1000": api, "ws_3000": ws}), flush=True)
                        stop_all()
        for kind in kinds if a.what != "wait" else []:
            for n in counts:
                target, redis_ports = setup(kind, d)
                ports, pids = nodes(binary, n, target, d)
                if a.what == "scale":
                    l = load()
                    s = measured(binary, ports, pids, redis_ports, a.subs, a.rate, a.secs, "s", a.publishers)
                    row = {"kind": kind, "nodes": n, "rate": a.rate, "load": l, **s}
                    rows.append(row); print(json.dumps(row), flush=True)
                else:
                    rate, first_p99, last_good = a.start, None, None
                    for step in range(a.steps):
                        l = load()
                        s = measured(binary, ports, pids, redis_ports, a.subs, rate, a.secs, f"t{step}-", a.publishers)
                        why = behind(s, first_p99, a.p99_limit, a.secs)
                        row = {"kind": kind, "nodes": n, "step": step, "rate": rate, "load": l, **s, "behind": why}
                        rows.append(row); print(json.dumps(row), flush=True)
                        if why: break
                        if first_p99 is None: first_p99 = s["p99_ms"]
                        last_good = row
                        rate = int(rate * a.factor)
                    points.append({"kind": kind, "nodes": n,
                                   "saturation_pub_per_s": last_good and last_good["offered_pub_per_s"],
                                   "deliveries_per_s": last_good and last_good["delivered_per_s"],
                                   "p99_ms": last_good and last_good["p99_ms"],
                                   "next_step": row.get("behind") or "no step fell behind (raise --steps)"})
                    print(json.dumps({"saturation": points[-1]}), flush=True)
                stop_all()
    finally:
        stop_all()
        subprocess.run(["rm", "-rf", d])
    if rows:
        table(rows)
    for p in points:
        print(f"saturation: {p['kind']}, {p['nodes']} node(s): {p['saturation_pub_per_s']} publications/s offered "
              f"({p['deliveries_per_s']} deliveries/s, p99 {p['p99_ms']} ms); next step: {p['next_step']}")
    print(f"took {round(time.time() - started)} s; load {' '.join(load())}", file=sys.stderr)


main()
