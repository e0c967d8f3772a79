#!/usr/bin/env python3
"""Live monitoring over a loopback stream: what `vad watch` keeps up with, how fast it alarms, what it costs.

A sender thread publishes frames at their native rate over loopback, RTSP (pushed to the watcher listening on
``rtsp://127.0.0.1:PORT/live``) or MPEG-TS over UDP, H.264 encoded beforehand (as a camera's own encoder would);
the watcher is :class:`vad.live.watch.Watch` with the run's model, as ``vad watch`` runs it. The frames are a
ShanghaiTech-layout benchmark's test clips played back to back (``--data``: the campus benchmarks' test clips are
consecutive stretches of one camera), or a video (``--video``, repeated ``--repeat`` times for a long replay).
Reported, as text and as one JSON line at the end:

- frames sent, decoded, scored and dropped; frames/s scored;
- latency per frame from sent (wall clock) to scored: p50 and p95;
- per labelled anomaly: whether an event covered it, and the seconds from sending its first anomalous frame to its
  ``start`` line, and from sending the frame that satisfied the live rule to that line (the rule's own delay is
  ``eval.min_event_frames`` frames);
- events over normal stretches (no labelled frame inside);
- the resident memory of the process at every status line (every 30 s), and its peak (the benchmark holds the
  frames it sends in memory too).

    python benchmarks/live.py --run runs/campus --data /tmp/campus-motion --transport rtsp
    python benchmarks/live.py --run runs/campus --video ../shared/bench/vtest.avi --repeat 6 --transport udp
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import tempfile
import threading
import time
from pathlib import Path

import av
import numpy as np

from vad.io import read_dataset
from vad.io.decode import iter_frames
from vad.live.detector import Detector
from vad.live.watch import Watch, WatchOptions


def frames_of(args) -> tuple[list[np.ndarray], np.ndarray | None, float]:
    """The frames to send (uint8 RGB), their labels (or None) and their rate."""
    if args.data:
        clips = read_dataset("shanghaitech", args.data, "test")
        frames, labels = [], []
        for c in clips:
            frames += [f.permute(1, 2, 0).numpy() for _, batch in iter_frames(c) for f in batch]
            labels.append(c.labels)
        return frames, np.concatenate(labels), args.fps
    video = [f.permute(1, 2, 0).numpy() for _, batch in iter_frames(args.video) for f in batch]
    with av.open(str(args.video)) as c:
        fps = float(c.streams.video[0].average_rate)
    return video * args.repeat, None, args.fps or fps


def encode(frames: list[np.ndarray], fps: float, path: Path) -> Path:
    """The frames as an H.264 stream a camera would send (no B-frames, a keyframe a second), encoded beforehand so
    that sending costs the watcher's cores nothing a camera's encoder would not."""
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w", format="mpegts") as c:
        s = c.add_stream("libx264", rate=round(fps))
        s.width, s.height, s.pix_fmt = w - w % 2, h - h % 2, "yuv420p"
        s.options = {"tune": "zerolatency", "preset": "veryfast", "crf": "18", "g": str(round(fps))}
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f[: s.height, : s.width]), format="rgb24")))
        c.mux(s.encode())
    return path


def send(url: str, fmt: str, stream: Path, fps: float, sent: list[float], options: dict) -> None:
    """Publish the encoded ``stream`` packet by packet at ``fps`` (wall clock); ``sent[i]``: when frame i left."""
    time.sleep(1.0)  # the watcher listens first
    with av.open(str(stream)) as src, av.open(url, "w", format=fmt, options=options) as out:
        video = src.streams.video[0]
        s = out.add_stream_from_template(video)
        t0, i = time.monotonic(), 0
        for packet in src.demux(video):
            if packet.dts is None:
                continue
            delay = t0 + i / fps - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            packet.stream = s
            sent.append(time.time())
            out.mux(packet)
            i += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--data", type=Path, help="a ShanghaiTech-layout benchmark: its test clips, back to back")
    ap.add_argument("--video", type=Path, help="a video to replay instead")
    ap.add_argument("--repeat", type=int, default=1, help="plays of --video (a long replay: memory over time)")
    ap.add_argument("--fps", type=float, default=10.0, help="the rate frames are sent at (default 10)")
    ap.add_argument("--transport", choices=["rtsp", "udp"], default="rtsp")
    ap.add_argument("--backend", default=None,
                    help="score.backend (default: the run's; auto: the backend measured fastest here)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if bool(args.data) == bool(args.video):
        ap.error("give --data or --video")
    frames, labels, fps = frames_of(args)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    if args.transport == "rtsp":
        url, fmt, out_opts, listen = f"rtsp://127.0.0.1:{port}/live", "rtsp", {"rtsp_transport": "tcp"}, True
    else:
        url, fmt, out_opts, listen = f"udp://127.0.0.1:{port}", "mpegts", {}, False
    det = Detector.load(args.run, device=args.device, backend=args.backend)
    sent: list[float] = []
    scored: dict[int, float] = {}
    real_score = det.score

    def timed_score(batch, stream="default", first=None):
        out = real_score(batch, stream, first)
        now = time.time()
        for i in range(len(batch) if stream != "warm-up" else 0):
            scored[first + i] = now  # seq == index while nothing is dropped (checked below)
        return out

    det.score = timed_score
    publish = url + ("?pkt_size=1316" if args.transport == "udp" else "")
    with tempfile.TemporaryDirectory() as tmp:
        stream = encode(frames, fps, Path(tmp) / "stream.ts")
        sender = threading.Thread(target=send, args=(publish, fmt, stream, fps, sent, out_opts), daemon=True)
        opts = WatchOptions(out=Path(tmp) / "watch", listen=listen, open_timeout=30, stall_timeout=3, max_retries=0,
                            progress=False, status_every=30)
        watch = Watch(det, url, opts)
        print(watch.banner())
        sender.start()
        t0 = time.monotonic()
        lines = []
        for line in watch.run():
            lines.append(line)
            if not sender.is_alive() and len(scored) + watch.camera.src.dropped >= len(sent) - 1:
                watch.stop()
            if time.monotonic() - t0 > len(frames) / fps + 60:
                watch.stop()
        sender.join(timeout=30)
    report(args, det, frames, labels, fps, sent, scored, lines, watch)


def report(args, det, frames, labels, fps, sent, scored, lines, watch) -> None:
    n = min(len(sent), max(scored) + 1 if scored else 0)
    lat = np.array([scored[i] - sent[i] for i in range(n) if i in scored]) * 1000
    status = [x for x in lines if x["type"] == "status"][-1]
    starts = [x for x in lines if x["type"] == "start"]
    ends = {x["event"]: x for x in lines if x["type"] == "end"}
    spans = [(s["frame"], ends.get(s["event"], {}).get("end_frame", n)) for s in starts]
    busy = max(scored.values()) - min(scored.values()) if scored else 0.0
    res = {"run": str(args.run), "source": "data" if args.data else "video", "transport": args.transport,
           "backend": det.backend, "fps_sent": fps, "frames_sent": len(sent),
           "frames_decoded": status["frames_decoded"], "frames_scored": status["frames_scored"],
           "dropped": status["dropped"], "fps_scored": round(status["frames_scored"] / busy, 2) if busy else 0,
           "latency_ms_p50": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
           "latency_ms_p95": round(float(np.percentile(lat, 95)), 1) if len(lat) else None,
           "decoded_to_scored_ms_p50": status["latency_ms_p50"], "decoded_to_scored_ms_p95": status["latency_ms_p95"],
           "events": len(starts), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "rss_mb_over_time": [x["rss_mb"] for x in lines if x["type"] == "status"]}
    if labels is not None:
        labels = labels[: len(sent)]
        from vad.metrics import label_events

        per = []
        for a, b in label_events(labels):  # [a, b): the labelled anomaly's frames
            hit = next((s for s in starts if s["frame"] < b and spans[starts.index(s)][1] >= a), None)
            entry = {"frames": [int(a), int(b)], "caught": hit is not None}
            if hit is not None:
                written = _epoch(hit["wall_time"])
                trigger = hit.get("trigger_frame", hit["frame"])
                entry["s_after_first_anomalous_frame_sent"] = round(written - sent[a], 3)
                entry["s_after_rule_satisfied"] = round(written - sent[trigger], 3) if trigger < len(sent) else None
            per.append(entry)
        normal_events = [s for (a, b), s in zip(spans, starts, strict=True) if not labels[a : b + 1].any()]
        res.update(anomalies=per, events_over_normal_stretches=len(normal_events),
                   normal_seconds=round(float((labels == 0).sum()) / fps, 1))
    for k, v in res.items():
        if k != "anomalies":
            print(f"{k:>34}: {v}")
    for e in res.get("anomalies", []):
        print(f"{'anomaly':>34}: {e}")
    print(json.dumps(res))


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


if __name__ == "__main__":
    main()
