#!/usr/bin/env python3
"""Soak: the node under a steady mix of HTTP and ROS requests for a bounded time; latency and memory over time.

    .venv/bin/python bench/soak.py --minutes 5 [--params FILE] [--out bench/results/soak-cpu-piper]

Starts the node as its own process (loopback only, its own ROS domain), sends requests from 4 HTTP threads and 2
ROS service threads plus topic messages, samples the node's RSS every 5 s, and writes <out>.json and <out>.md.
"""
import argparse
import json
import os
import platform
import random
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "test"))
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(150, 200)))

from ros_helpers import NodeProcess, RosClient, free_port  # noqa: E402

TEXTS = ["Hello there.", "The battery is at eighty percent and all systems are nominal.",
         "Please step aside, I am coming through. Thank you!", "Turning left at the next corner.",
         "I found the red cup on the kitchen table. Shall I bring it to you?"]


def pct(values, q):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100.0 * (len(values) - 1))))]


def rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--params", default="", help="extra parameters as a YAML file of flat overrides")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "soak-cpu-piper"))
    args = ap.parse_args()
    import httpx
    import yaml
    overrides = {"audio.realtime": False, "queue.max_size": 32}
    if args.params:
        overrides.update(yaml.safe_load(Path(args.params).read_text()) or {})
    port = free_port()
    overrides["http.port"] = port
    proc = NodeProcess(overrides, timeout=args.minutes * 60 + 300, name="soak", namespace="/soak")
    client = RosClient("soak")
    stats = {"http": [], "ros": [], "errors": {}, "rss": []}
    lock = threading.Lock()
    stop = threading.Event()
    try:
        if not proc.wait_for_log("active: ready to speak", 120):
            print(proc.output())
            return 1
        import subprocess
        child = subprocess.run(["pgrep", "-P", str(proc.proc.pid)], capture_output=True, text=True).stdout.split()
        pid = int(child[0]) if child else proc.proc.pid
        url = f"http://127.0.0.1:{port}/v1/audio/speech"
        t_start = time.monotonic()

        def count_error(kind):
            with lock:
                stats["errors"][kind] = stats["errors"].get(kind, 0) + 1

        def http_worker(seed):
            rnd = random.Random(seed)
            with httpx.Client(timeout=120) as http:
                while not stop.is_set():
                    fmt = rnd.choice(["wav", "mp3", "pcm", "opus"])
                    t0 = time.monotonic()
                    try:
                        r = http.post(url, json={"model": "x", "input": rnd.choice(TEXTS), "voice": "alloy",
                                                 "response_format": fmt})
                        dt = time.monotonic() - t0
                        if r.status_code == 200 and len(r.content) > 100:
                            with lock:
                                stats["http"].append(dt)
                        else:
                            count_error(f"http_{r.status_code}")
                    except Exception as exc:  # noqa: BLE001
                        count_error(f"http_{type(exc).__name__}")

        def ros_worker(seed):
            rnd = random.Random(seed)
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    res = client.speak(rnd.choice(TEXTS), ns="/soak", timeout=120)
                    dt = time.monotonic() - t0
                    if res.success:
                        with lock:
                            stats["ros"].append(dt)
                    else:
                        count_error("ros_" + res.message.split(":")[0][:40])
                except Exception as exc:  # noqa: BLE001
                    count_error(f"ros_{type(exc).__name__}")

        threads = [threading.Thread(target=http_worker, args=(i,), daemon=True) for i in range(4)]
        threads += [threading.Thread(target=ros_worker, args=(100 + i,), daemon=True) for i in range(2)]
        for t in threads:
            t.start()
        end = t_start + args.minutes * 60
        while time.monotonic() < end:
            stats["rss"].append((round(time.monotonic() - t_start, 1), rss_mib(pid)))
            time.sleep(5)
        stop.set()
        for t in threads:
            t.join(150)
        stats["rss"].append((round(time.monotonic() - t_start, 1), rss_mib(pid)))
        alive = proc.alive() and httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
    finally:
        stop.set()
        client.close()
        proc.stop()
    lat = {k: {"n": len(v), "p50": pct(v, 50), "p90": pct(v, 90), "p99": pct(v, 99), "max": max(v) if v else None,
               "mean": statistics.mean(v) if v else None} for k, v in (("http", stats["http"]), ("ros", stats["ros"]))}
    rss_values = [r for _, r in stats["rss"] if r]
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "minutes": args.minutes,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU", "engine": "piper (embedded voice)",
        "command": "bench/soak.py " + " ".join(sys.argv[1:]), "latency_s": lat, "errors": stats["errors"],
        "answered": len(stats["http"]) + len(stats["ros"]) + sum(stats["errors"].values()),
        "rss_mib": {"start": rss_values[0] if rss_values else None, "end": rss_values[-1] if rss_values else None,
                    "max": max(rss_values) if rss_values else None, "samples": stats["rss"]},
        "node_alive_after": alive,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    fmt = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    md = [f"# Soak: {args.minutes:g} min, {result['date']}", "", f"Machine: {result['machine']}; engine: {result['engine']};"
          f" command: `{result['command']}`", "", "| source | answered ok | p50 s | p90 s | p99 s | max s |",
          "|---|---|---|---|---|---|"]
    for k in ("http", "ros"):
        v = lat[k]
        md.append(f"| {k} | {v['n']} | {fmt(v['p50'])} | {fmt(v['p90'])} | {fmt(v['p99'])} | {fmt(v['max'])} |")
    md += ["", f"Errors by kind: {json.dumps(stats['errors'])}", "",
           f"Node RSS: start {fmt(result['rss_mib']['start'])} MiB, end {fmt(result['rss_mib']['end'])} MiB, "
           f"max {fmt(result['rss_mib']['max'])} MiB; node alive and healthy after: {alive}", ""]
    out.with_suffix(".md").write_text("\n".join(md))
    print("\n".join(md))
    return 0 if alive else 1


if __name__ == "__main__":
    sys.exit(main())
