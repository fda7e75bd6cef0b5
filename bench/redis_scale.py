#!/usr/bin/env python3
"""Scale-out and replica-wait figures for BENCHMARKS.md ("Redis Sentinel, Cluster and the replica
wait"): `bench/redis_scale.py wait` or `bench/redis_scale.py scale`, after `cargo build --release`.
Starts and stops every process itself
(free loopback ports); servers and Redis pinned to core 0, bench processes to core 1."""
import json, os, socket, subprocess, sys, tempfile, time

B = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "switchboard")
SERVE = ["serve", "--join-leave", "false", "--client-command-rate", "0", "--connection-rate-per-ip", "0"]

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

def cluster(d):
    ports = free_ports(3, bus=True)
    for p in ports:
        sub = os.path.join(d, f"c{p}"); os.makedirs(sub)
        redis(p, sub, ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
    subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports], "--cluster-yes"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        ok = all(b"cluster_state:ok" in subprocess.run(["redis-cli", "-p", str(p), "cluster", "info"], capture_output=True).stdout for p in ports)
        if ok: break
        time.sleep(0.1)
    return ports

def nodes(n, target, d, extra=()):
    ports = free_ports(n)
    pids = []
    for i, p in enumerate(ports):
        pr = spawn([B, *SERVE, "--port", str(p), "--data-dir", os.path.join(d, f"n{i}"), *target, *extra])
        pids.append(pr.pid)
    for p in ports: wait_port(p)
    time.sleep(1)
    return ports, pids

def fanout(node_ports, pids, subs, rate, secs, via="api", publishers=None):
    """One bench process per node, each with its own channel, subscribers on node i, publications
    through node 0's API (or WebSocket on node 0 when via == ws and one node)."""
    benches = []
    for i, p in enumerate(node_ports):
        args = [B, "bench", "fanout", "--url", f"ws://127.0.0.1:{p}/connection/websocket",
                "-n", str(subs), "-r", str(rate), "-d", f"{secs}s", "-p", "100", "--prefix", f"b{i}",
                "--quiet", "--json", "--via", via]
        if via == "api":
            args += ["--api-url", f"http://127.0.0.1:{node_ports[0]}/api"]
        if publishers: args += ["--publishers", str(publishers)]
        if i == 0: args += ["--pid", str(pids[0])]
        benches.append(subprocess.Popen(["taskset", "-c", "1"] + args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL))
    out = []
    for b in benches:
        text = b.communicate()[0].decode()
        out.append(json.loads(text[text.index("{"):]))
    return out

def summary(reports):
    return {
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

def load(): return open("/proc/loadavg").read().split()[:3]

def main():
    what = sys.argv[1]
    d = tempfile.mkdtemp()
    try:
        if what == "wait":
            for rnd in (1, 2):
                for wait in ("0", "1"):
                    m, r = free_ports(2)
                    redis(m, d); redis(r, d, ["--replicaof", "127.0.0.1", str(m), "--repl-diskless-sync-delay", "0"])
                    time.sleep(1.5)
                    ports, pids = nodes(1, ["--redis", f"redis://127.0.0.1:{m}"], d, ["--redis-wait-replicas", wait])
                    l = load()
                    api = summary(fanout(ports, pids, 100, 1000, 5, "api"))
                    ws = summary(fanout(ports, pids, 1000, 3000, 10, "ws", publishers=1))
                    print(json.dumps({"round": rnd, "wait": wait, "load": l, "api_1000": api, "ws_3000": ws}), flush=True)
                    stop_all()
        else:
            subs, rate, secs = 300, 300, 10
            for rnd in (1,):
                for kind in ("redis", "cluster"):
                    for n in (1, 2, 3):
                        if kind == "redis":
                            (m,) = free_ports(1); redis(m, d); target = ["--redis", f"redis://127.0.0.1:{m}"]
                        else:
                            cp = cluster(d); target = ["--redis-cluster", ",".join(f"127.0.0.1:{p}" for p in cp)]
                        ports, pids = nodes(n, target, d)
                        l = load()
                        s = summary(fanout(ports, pids, subs, rate, secs, "api"))
                        print(json.dumps({"kind": kind, "nodes": n, "load": l, **s}), flush=True)
                        stop_all()
    finally:
        stop_all()
        subprocess.run(["rm", "-rf", d])

main()
