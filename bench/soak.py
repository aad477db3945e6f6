#!/usr/bin/env python3
"""Soak: the node under a steady mix of requests for a bounded time; latency, memory and whether memory stays flat.

    .venv/bin/python bench/soak.py --minutes 10 [--warmup-minutes 2] [--params FILE] [--out bench/results/soak-x]
    python3 bench/soak.py --door http --stubs --engine chatterbox_turbo --model-dir DIR --voice synthetic \
        [--params docker/params.yaml] --formats wav,pcm --minutes 30 --out $OUT/soak-gpu

Door `ros` (the default where rclpy imports): the node as `make run` starts it (`python -m ros2_chatterbox.tts_node
--autostart`, loopback discovery, a ROS domain of its own), 4 HTTP threads and 2 ROS `speak` threads.
Door `http` (a machine without ROS 2, such as the GPU machine): the same process without its ROS door
(`python -m ros2_chatterbox.http`: SpeechCore, the engine and the HTTP server), 6 HTTP threads. It needs the
package's HTTP dependencies (fastapi, starlette, uvicorn, pydantic, pydantic-core, annotated-types,
typing-inspection, python-multipart; av for mp3/opus, else `--formats wav,pcm`) besides the engine's; no ROS 2 at all.
`--stubs` gives the node process bench/common.py's stand-ins for what the GPU image lacks (perth: no watermark).
--params takes a ROS parameter file (docker/params.yaml) or a YAML file of flat overrides (name: value); --engine and
--model-dir win over it.

Every --sample-s the node's RSS (and RssAnon, RssFile, threads; device memory from nvidia-smi where there is one) is
recorded with the number of requests answered so far. From --warmup-minutes on, a least-squares line through the
samples gives the growth in KB per request and MiB per hour, and the RSS rise from the end of warm-up to the end.
`flat` holds when that rise and the line's growth over 30 minutes are both within --flat-mib (1 MiB).
Writes <out>.json and <out>.md; exit status 1 when the node did not stay alive and healthy or no request succeeded,
3 when RSS was not flat.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "test")]

TEXTS = ["Hello there.", "The battery is at eighty percent and all systems are nominal.",
         "Please step aside, I am coming through. Thank you!", "Turning left at the next corner.",
         "I found the red cup on the kitchen table. Shall I bring it to you?"]
FLAT_WINDOW_H = 0.5  # `flat`: the fitted growth over this long (30 minutes) stays within --flat-mib


def pct(values, q):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100.0 * (len(values) - 1))))]


def proc_memory(pid: int) -> Dict[str, float]:
    """VmRSS, RssAnon, RssFile (MiB) and Threads of a process, from /proc/<pid>/status ({} once it is gone)."""
    out: Dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile"):
                    out[key] = int(value.split()[0]) / 1024.0
                elif key == "Threads":
                    out[key] = int(value)
    except OSError:
        pass
    return out


def device_mib(pid: int) -> Optional[float]:
    """Device memory nvidia-smi counts for process `pid` (its CUDA context included), or None (no GPU, not using
    it)."""
    try:
        text = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    used = [float(cols[1]) for cols in (line.split(",") for line in text.splitlines())
            if len(cols) == 2 and cols[0].strip() == str(pid)]
    return used[0] if used else None


def gpu_name() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=20).stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return ""


def fit(xs: Sequence[float], ys: Sequence[float]) -> Optional[float]:
    """Least-squares slope of ys over xs (None with fewer than 3 points or no spread in xs)."""
    if len(xs) < 3:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def growth(samples: List[Dict[str, Any]], warmup_s: float, flat_mib: float) -> Dict[str, Any]:
    """RSS after warm-up: rise, slope per request and per hour, flat or not (see the module's docstring)."""
    after = [s for s in samples if s["t_s"] >= warmup_s and s.get("rss_mib")]
    out: Dict[str, Any] = {"warmup_s": warmup_s, "samples": len(after), "flat_mib": flat_mib}
    if len(after) < 3:
        out["flat"] = None
        return out
    first, last = after[0], after[-1]
    per_s = fit([s["t_s"] for s in after], [s["rss_mib"] for s in after])
    per_request = fit([s["requests"] for s in after], [s["rss_mib"] for s in after])
    mib_per_h = None if per_s is None else per_s * 3600.0
    out.update({
        "rss_after_warmup_mib": first["rss_mib"], "rss_end_mib": last["rss_mib"],
        "rise_mib": round(last["rss_mib"] - first["rss_mib"], 3),
        "range_mib": round(max(s["rss_mib"] for s in after) - min(s["rss_mib"] for s in after), 3),
        "requests": last["requests"] - first["requests"], "minutes": round((last["t_s"] - first["t_s"]) / 60.0, 2),
        "kb_per_request": None if per_request is None else round(per_request * 1024.0, 3),
        "mib_per_hour": None if mib_per_h is None else round(mib_per_h, 3),
        "fitted_mib_per_30_min": None if mib_per_h is None else round(mib_per_h * FLAT_WINDOW_H, 3)})
    out["flat"] = bool(abs(out["rise_mib"]) <= flat_mib and mib_per_h is not None
                       and abs(mib_per_h * FLAT_WINDOW_H) <= flat_mib)
    return out


# the HTTP door's main() after bench/common.py's stand-ins (--stubs)
STUBBED_HTTP_DOOR = ("import sys; sys.path.insert(0, sys.argv.pop(1)); import common; common.install_stubs(); "
                     "from ros2_chatterbox.http.server import main; sys.exit(main(sys.argv[1:]))")


class HttpDoorProcess:
    """`python -m ros2_chatterbox.http` in its own process group with a hard timeout, stopped by PID."""

    def __init__(self, overrides: Dict[str, Any], port: int, timeout: float, stubs: bool = False):
        from ros_helpers import ARTIFACTS, PY, write_params
        self.tmp = tempfile.TemporaryDirectory(prefix="cbx_soak_")
        params = write_params(Path(self.tmp.name) / "params.yaml", overrides)
        ARTIFACTS.mkdir(exist_ok=True)
        self.log_path = ARTIFACTS / f"soak-http-{os.getpid()}.log"
        self.log = open(self.log_path, "w")
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1",
                   PYTHONPATH=str(ROOT) + (":" + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""))
        door = ["-c", STUBBED_HTTP_DOOR, str(ROOT / "bench")] if stubs else ["-m", "ros2_chatterbox.http"]
        self.proc = subprocess.Popen(["timeout", "-s", "KILL", str(int(timeout)), PY, *door,
                                      "--params", str(params), "--host", "127.0.0.1", "--port", str(port)],
                                     cwd=str(ROOT), env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, sig)
                    self.proc.wait(wait)
                except (subprocess.TimeoutExpired, ProcessLookupError):
                    pass
        self.log.close()
        self.tmp.cleanup()


def node_pid(wrapper_pid: int) -> int:
    """The node's own PID: the child of the `timeout` wrapper (the wrapper itself when it has none)."""
    try:
        with open(f"/proc/{wrapper_pid}/task/{wrapper_pid}/children") as f:
            children = f.read().split()
    except OSError:
        children = []
    return int(children[0]) if children else wrapper_pid


def wait_ready(http, base: str, proc_alive, timeout: float) -> Optional[Dict[str, Any]]:
    """/health/ready's body once the configured engine serves, or None (the node ended or `timeout` passed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc_alive():
        try:
            r = http.get(f"{base}/health/ready", timeout=5)
            if r.status_code == 200:
                return r.json()
        except Exception:  # noqa: BLE001 - not listening yet
            pass
        time.sleep(1.0)
    return None


def read_parameters(path: Path) -> Dict[str, Any]:
    """Flat parameter values from a ROS parameter file (every setting, defaults filled in) or a flat YAML file."""
    import yaml
    data = yaml.safe_load(path.read_text()) or {}
    if any(isinstance(v, dict) and "ros__parameters" in v for v in data.values()):
        from ros2_chatterbox.params_file import read_params_file
        return read_params_file(str(path))
    return data


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--warmup-minutes", type=float, default=2.0, help="left out of the growth fit (default 2)")
    ap.add_argument("--door", choices=("auto", "ros", "http"), default="auto",
                    help="ros: the ROS node (HTTP + speak service); http: the node's process without ROS; auto: "
                         "ros where rclpy imports")
    ap.add_argument("--engine", default="", help="parameter engine (piper, chatterbox_turbo; default: piper)")
    ap.add_argument("--model-dir", default="", help="parameter model_dir (chatterbox_turbo)")
    ap.add_argument("--params", default="", help="a ROS parameter file or a YAML file of flat overrides")
    ap.add_argument("--stubs", action="store_true", help="door http: stand-ins for packages the GPU image lacks")
    ap.add_argument("--voice", default="", help="a reference recording (.wav) every request speaks with, or "
                                                "'synthetic' (a 16 s made-up one); chatterbox_turbo needs one "
                                                "unless its checkpoint has conds.pt")
    ap.add_argument("--formats", default="wav,mp3,pcm,opus", help="response formats the HTTP threads pick from")
    ap.add_argument("--sample-s", type=float, default=5.0, help="seconds between memory samples")
    ap.add_argument("--flat-mib", type=float, default=1.0, help="flat: RSS rise after warm-up within this")
    ap.add_argument("--start-timeout", type=float, default=600.0, help="seconds the node may take to be ready")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "soak-cpu-piper"))
    args = ap.parse_args(argv)
    door = args.door
    if door == "auto":
        door = "ros" if importlib.util.find_spec("rclpy") is not None else "http"
    import httpx
    overrides: Dict[str, Any] = read_parameters(Path(args.params)) if args.params else {}
    overrides.update({"audio.realtime": False, "queue.max_size": 32, "http.host": "127.0.0.1"})
    if args.engine:
        overrides["engine"] = args.engine
    if args.model_dir:
        overrides["model_dir"] = args.model_dir
    voices = tempfile.TemporaryDirectory(prefix="cbx_soak_voices_")
    if args.voice:  # the default voice, which every request ("voice": "alloy") gets
        reference = Path(voices.name) / "soak.wav"
        if args.voice == "synthetic":
            from ros2_chatterbox.engines.chatterbox.tiny_checkpoint import write_reference_wav
            write_reference_wav(reference, seconds=16.0)
        else:
            shutil.copyfile(args.voice, reference)
        overrides.update({"voices_dir": voices.name, "default_voice": "soak"})
    from ros_helpers import free_port
    port = free_port()
    overrides["http.port"] = port
    life_s = args.minutes * 60 + args.start_timeout + 300
    client = None
    if door == "ros":
        import ros_environment
        ros_environment.set_up()  # loopback discovery and a ROS domain of this run's own, before rclpy starts
        from ros_helpers import NodeProcess, RosClient
        proc = NodeProcess(overrides, timeout=life_s, name="soak", namespace="/soak")
        client = RosClient("soak")
    else:
        proc = HttpDoorProcess(overrides, port, life_s, args.stubs)
    base = f"http://127.0.0.1:{port}"
    stats: Dict[str, Any] = {"http": [], "ros": [], "errors": {}, "first_error": {}}
    samples: List[Dict[str, Any]] = []
    lock = threading.Lock()
    stop = threading.Event()
    health: Optional[Dict[str, Any]] = None
    alive = False
    try:
        with httpx.Client(timeout=10) as probe:
            health = wait_ready(probe, base, proc.alive, args.start_timeout)
        if health is None:
            print(proc.output()[-5000:])
            return 1
        pid = node_pid(proc.proc.pid)
        url = f"{base}/v1/audio/speech"
        formats = [f for f in args.formats.split(",") if f]

        def answered() -> int:
            with lock:
                return len(stats["http"]) + len(stats["ros"]) + sum(stats["errors"].values())

        def count_error(kind: str, message: str = "") -> None:
            with lock:
                stats["errors"][kind] = stats["errors"].get(kind, 0) + 1
                stats["first_error"].setdefault(kind, message[:300])

        def http_worker(seed: int) -> None:
            rnd = random.Random(seed)
            with httpx.Client(timeout=300) as http:
                while not stop.is_set():
                    t0 = time.monotonic()
                    try:
                        r = http.post(url, json={"model": "x", "input": rnd.choice(TEXTS), "voice": "alloy",
                                                 "response_format": rnd.choice(formats)})
                        if r.status_code == 200 and len(r.content) > 100:
                            with lock:
                                stats["http"].append(time.monotonic() - t0)
                        else:
                            count_error(f"http_{r.status_code}", r.text)
                    except Exception as exc:  # noqa: BLE001
                        count_error(f"http_{type(exc).__name__}", str(exc))

        def ros_worker(seed: int) -> None:
            rnd = random.Random(seed)
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    res = client.speak(rnd.choice(TEXTS), ns="/soak", timeout=300)
                    if res.success:
                        with lock:
                            stats["ros"].append(time.monotonic() - t0)
                    else:
                        count_error("ros_" + res.message.split(":")[0][:40], res.message)
                except Exception as exc:  # noqa: BLE001
                    count_error(f"ros_{type(exc).__name__}", str(exc))

        n_ros = 2 if door == "ros" else 0
        threads = [threading.Thread(target=http_worker, args=(i,), daemon=True) for i in range(6 - n_ros)]
        threads += [threading.Thread(target=ros_worker, args=(100 + i,), daemon=True) for i in range(n_ros)]
        t_start = time.monotonic()
        for t in threads:
            t.start()

        def sample() -> None:
            mem = proc_memory(pid)
            row = {"t_s": round(time.monotonic() - t_start, 1), "requests": answered(),
                   "rss_mib": mem.get("VmRSS"), "anon_mib": mem.get("RssAnon"), "file_mib": mem.get("RssFile"),
                   "threads": mem.get("Threads")}
            if len(samples) % 6 == 0:  # nvidia-smi every 6th sample: it costs a CPU core for a moment
                row["device_mib"] = device_mib(pid)
            samples.append(row)

        end = t_start + args.minutes * 60
        while time.monotonic() < end and proc.alive():
            sample()
            time.sleep(max(0.0, min(args.sample_s, end - time.monotonic())))
        sample()
        stop.set()
        for t in threads:
            t.join(300)
        try:
            alive = proc.alive() and httpx.get(f"{base}/health", timeout=10).status_code == 200
        except httpx.HTTPError:
            alive = False
    finally:
        stop.set()
        if client is not None:
            client.close()
        proc.stop()
        voices.cleanup()
    lat = {k: {"n": len(v), "p50": pct(v, 50), "p90": pct(v, 90), "p99": pct(v, 99), "max": max(v) if v else None,
               "mean": statistics.mean(v) if v else None} for k, v in (("http", stats["http"]), ("ros", stats["ros"]))}
    rss_values = [s["rss_mib"] for s in samples if s.get("rss_mib")]
    gpu = gpu_name()
    flat = growth(samples, args.warmup_minutes * 60, args.flat_mib)
    device = [s["device_mib"] for s in samples if s.get("device_mib") is not None]
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "minutes": args.minutes,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, " + (gpu or "no GPU"),
        "python": platform.python_version(), "door": door,
        "engine": f"{health.get('engine')} on {health.get('device') or 'cpu'} ({health.get('model')})",
        "command": "bench/soak.py " + " ".join(sys.argv[1:] if argv is None else argv), "parameters": overrides,
        "latency_s": lat, "errors": stats["errors"], "first_error": stats["first_error"],
        "answered": len(stats["http"]) + len(stats["ros"]) + sum(stats["errors"].values()),
        "rss_mib": {"start": rss_values[0] if rss_values else None, "end": rss_values[-1] if rss_values else None,
                    "max": max(rss_values) if rss_values else None},
        "device_mib": {"start": device[0], "end": device[-1], "max": max(device)} if device else None,
        "after_warmup": flat, "node_alive_after": alive, "samples": samples,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    md = markdown(result, args)
    out.with_suffix(".md").write_text(md)
    print(md)
    if not alive or not (lat["http"]["n"] + lat["ros"]["n"]):
        return 1
    return 0 if flat.get("flat") else 3


def markdown(result: Dict[str, Any], args: argparse.Namespace) -> str:
    fmt = lambda x, d=2: "-" if x is None else f"{x:.{d}f}"  # noqa: E731
    lat, flat = result["latency_s"], result["after_warmup"]
    md = [f"# Soak: {args.minutes:g} min, {result['date']}", "",
          f"Machine: {result['machine']}; Python {result['python']}; engine: {result['engine']}; door: "
          f"{result['door']}; command: `{result['command']}`", "",
          "| source | answered ok | p50 s | p90 s | p99 s | max s |", "|---|---|---|---|---|---|"]
    for k in ("http", "ros"):
        v = lat[k]
        if v["n"]:
            md.append(f"| {k} | {v['n']} | {fmt(v['p50'])} | {fmt(v['p90'])} | {fmt(v['p99'])} | {fmt(v['max'])} |")
    rss = result["rss_mib"]
    md += ["", f"Errors by kind: {json.dumps(result['errors'])}", "",
           *(f"First `{kind}`: {msg}" for kind, msg in result["first_error"].items()), "",
           f"Node RSS: start {fmt(rss['start'])} MiB, end {fmt(rss['end'])} MiB, max {fmt(rss['max'])} MiB; node "
           f"alive and healthy after: {result['node_alive_after']}"]
    if result["device_mib"]:
        d = result["device_mib"]
        md.append(f"Device memory (nvidia-smi, this process): start {fmt(d['start'], 0)}, end {fmt(d['end'], 0)}, "
                  f"max {fmt(d['max'], 0)} MiB")
    md += ["", f"After warm-up ({flat['warmup_s'] / 60:g} min), {flat['samples']} samples:"]
    if flat.get("flat") is None:
        md.append("too few samples to fit")
    else:
        md += ["", "| RSS after warm-up MiB | RSS end MiB | rise MiB | range MiB | requests | KB/request | "
                   "MiB/hour | fitted MiB/30 min | flat (within " + f"{flat['flat_mib']:g} MiB) |",
               "|---|---|---|---|---|---|---|---|---|",
               f"| {fmt(flat['rss_after_warmup_mib'])} | {fmt(flat['rss_end_mib'])} | {fmt(flat['rise_mib'])} | "
               f"{fmt(flat['range_mib'])} | {flat['requests']} | {fmt(flat['kb_per_request'], 3)} | "
               f"{fmt(flat['mib_per_hour'])} | {fmt(flat['fitted_mib_per_30_min'])} | {flat['flat']} |"]
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    sys.exit(main())
