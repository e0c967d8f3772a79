#!/usr/bin/env python3
"""A site over loopback: K cameras into one ``vad serve``, against K ``vad watch`` processes, in one run.

Each camera is a UDP MPEG-TS stream (H.264 encoded beforehand, a keyframe a second, as a camera's encoder sends it)
of a ShanghaiTech-layout benchmark's test clips played back to back at ``--fps`` (each camera starting a second after
the previous one, so that their anomalies do not coincide). A real broker (Debian's mosquitto, on a free loopback
port) carries the service's lines to a subscriber here. For each K of ``--cameras``:

- **service**: ``vad serve`` with the K cameras on the run's model (``--backend``; the export and the speed
  measurement made beforehand, so that the service starts with it): per camera the frames sent, decoded, scored and
  dropped, the latency from decoded to scored (p50/p95, the service's own), the delay from each labelled anomaly's
  first frame being sent to its ``start`` message arriving on MQTT, and from the frame that satisfied the live rule
  (``trigger_frame``) to that message; the service's resident memory (peak, and at the end) and its memory per
  camera beyond the first;
- **separate**: the same K streams into K ``vad watch`` processes: their total resident memory (the sum of their
  peaks) and frames dropped.

The last line is one JSON object.

    python benchmarks/site.py --run runs/campus --data /tmp/campus-motion --cameras 1 2 4 8
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from live import encode, frames_of, send  # noqa: E402


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory(pid: int) -> tuple[float, float]:
    """(resident now, peak) of process ``pid``, MiB (0 once it is gone)."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    except OSError:
        return 0.0, 0.0
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


class Broker:
    def __init__(self, folder: Path) -> None:
        self.port = _port()
        conf = folder / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        time.sleep(0.5)

    def subscribe(self) -> list:
        import paho.mqtt.client as mqtt

        got: list = []
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        client.on_message = lambda c, u, m: got.append((time.time(), m.topic, m.payload.decode()))
        client.connect("127.0.0.1", self.port)
        client.subscribe("vad/#", qos=1)
        client.loop_start()
        self.client = client
        return got

    def stop(self) -> None:
        self.client.loop_stop()
        self.proc.terminate()
        self.proc.wait()


def spans(labels: np.ndarray) -> list[tuple[int, int]]:
    """The labelled anomalies as [a, b) frame ranges."""
    d = np.diff(np.concatenate([[0], labels.astype(int), [0]]))
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1), strict=True))


def run_k(args, k: int, stream: Path, n: int, labels: np.ndarray | None, work: Path, separate: bool) -> dict:
    """K cameras into ``vad serve`` (``separate``: into K ``vad watch`` processes)."""
    ports = [_port() for _ in range(k)]
    out = work / f"{'watch' if separate else 'serve'}-{k}"
    procs, sent = [], [[] for _ in range(k)]
    broker = got = None
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if separate:
        for i, port in enumerate(ports):
            procs.append(subprocess.Popen(
                [sys.executable, str(REPO / "run_pipeline.py"), "watch", "--run", str(args.run), "--source",
                 f"udp://127.0.0.1:{port}", "--out", str(out / f"cam{i}"), "--backend", args.backend, "--device",
                 "cpu", "--status-every", "2", *(["--no-snapshots", "--no-clips"] if args.no_evidence else [])],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                env=env))
        wait_for = lambda: all((out / f"cam{i}" / "events.jsonl").is_file() for i in range(k))  # noqa: E731
    else:
        broker = Broker(work)
        got = broker.subscribe()
        http = _port()
        cams = "".join(f"  cam{i}: {{source: 'udp://127.0.0.1:{p}', run: '{args.run}'}}\n" for i, p in enumerate(ports))
        site = work / f"site-{k}.yaml"
        defaults = "defaults: {clips: false, snapshots: false}\n" if args.no_evidence else ""
        site.write_text(f"cameras:\n{cams}{defaults}out: '{out}'\nmqtt: {{port: {broker.port}}}\n"
                        f"http: {{port: {http}}}\nbackend: {args.backend}\ndevice: cpu\nbatch: {args.batch}\n"
                        "status_every: 2\n")
        procs.append(subprocess.Popen([sys.executable, str(REPO / "run_pipeline.py"), "serve", "--config", str(site)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env))

        def wait_for() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/healthz", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False
    t0 = time.monotonic()
    while not wait_for():
        if time.monotonic() - t0 > 300 or any(p.poll() is not None for p in procs):
            raise RuntimeError(f"the watchers did not start: {[p.stderr.read()[-2000:] for p in procs]}")
        time.sleep(0.2)
    started = time.monotonic() - t0
    time.sleep(2.0)  # the sources are open (the UDP sockets bound)
    senders = []
    for i, port in enumerate(ports):
        def go(i=i, port=port) -> None:
            time.sleep(i * 1.0)
            send(f"udp://127.0.0.1:{port}?pkt_size=1316", "mpegts", stream, args.fps, sent[i], {})
        senders.append(threading.Thread(target=go, daemon=True))
        senders[-1].start()
    peak = 0.0
    while any(t.is_alive() for t in senders):
        peak = max(peak, sum(_memory(p.pid)[1] for p in procs))
        time.sleep(0.5)
    time.sleep(4.0)  # the last frames scored, the last events ended
    now = sum(_memory(p.pid)[0] for p in procs)
    peak = max(peak, sum(_memory(p.pid)[1] for p in procs))
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
    result = {"k": k, "start_s": round(started, 1), "rss_mb_end": round(now, 1), "rss_mb_peak": round(peak, 1),
              "cameras": []}
    for i in range(k):
        lines = [json.loads(x) for x in (out / f"cam{i}" / "events.jsonl").read_text().splitlines()]
        status = [x for x in lines if x["type"] == "status"][-1]
        cam = {"sent": len(sent[i]), "decoded": status["frames_decoded"], "scored": status["frames_scored"],
               "dropped": status["dropped"], "latency_ms_p50": status["latency_ms_p50"],
               "latency_ms_p95": status["latency_ms_p95"]}
        if got is not None and labels is not None:
            offset = len(sent[i]) - status["frames_decoded"]  # frames lost before the source was open
            starts = [(t, json.loads(p)) for t, topic, p in got if topic == "vad/events"]
            starts = [(t, e) for t, e in starts if e["type"] == "start" and e["camera"] == f"cam{i}"]
            delays, rule_delays, caught = [], [], 0
            for a, b in spans(labels):
                hit = [(t, e) for t, e in starts if a - 10 <= e["start_frame"] + offset < b]
                if hit and a < len(sent[i]):
                    t, e = hit[0]
                    caught += 1
                    delays.append(t - sent[i][max(a, e["start_frame"] + offset)])
                    rule_delays.append(t - sent[i][min(e["trigger_frame"] + offset, len(sent[i]) - 1)])
            cam.update(anomalies=len(spans(labels)), caught=caught,
                       start_delay_s=[round(x, 2) for x in delays], rule_to_mqtt_s=[round(x, 2) for x in rule_delays])
        result["cameras"].append(cam)
    if broker is not None:
        broker.stop()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="a ShanghaiTech-layout benchmark: its test clips")
    ap.add_argument("--cameras", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--fps", type=float, default=10.0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--backend", default="auto", help="auto: the backend measured fastest here (measured first)")
    ap.add_argument("--no-separate", action="store_true", help="skip the K vad watch processes")
    ap.add_argument("--no-evidence", action="store_true", help="no snapshots or clips (what evidence costs)")
    args = ap.parse_args()
    args.video, args.repeat = None, 1
    args.run = args.run.resolve()
    from vad.policy import run_config
    from vad.runtime.prepare import prepare_model

    opened = prepare_model(args.run, run_config(args.run, [], "watch"), "cpu", backend=args.backend)  # export, measure
    args.backend = opened.backend
    print(f"backend: {args.backend}", flush=True)
    frames, labels, fps = frames_of(args)
    work = Path(tempfile.mkdtemp(prefix="vad-site-"))
    stream = encode(frames, fps, work / "stream.ts")
    rows = {"service": [], "separate": []}
    for k in args.cameras:
        r = run_k(args, k, stream, len(frames), labels, work, separate=False)
        rows["service"].append(r)
        print(f"serve K={k}: " + json.dumps(r), flush=True)
        if not args.no_separate:
            r = run_k(args, k, stream, len(frames), labels, work, separate=True)
            rows["separate"].append(r)
            print(f"watch x{k}: " + json.dumps(r), flush=True)
    one = rows["service"][0]
    summary = {"backend": args.backend, "cpu": os.cpu_count(), "frames_per_camera": len(frames), "fps": fps,
               "service": rows["service"], "separate": rows["separate"],
               "service_rss_ratio_kmax_k1": round(rows["service"][-1]["rss_mb_peak"] / one["rss_mb_peak"], 2),
               "largest_k_no_drops": max([r["k"] for r in rows["service"]
                                          if all(c["dropped"] == 0 and c["scored"] >= c["sent"] - 2
                                                 for c in r["cameras"])], default=0)}
    if rows["separate"]:
        summary["separate_rss_ratio_kmax_k1"] = round(rows["separate"][-1]["rss_mb_peak"]
                                                      / rows["separate"][0]["rss_mb_peak"], 2)
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
