"""Scale-out under torchrun: the shards, sharded scoring (merged results equal one process's) and DDP training,
with 2 CPU processes on the gloo backend."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import TINY
from vad.cli import main as cli_main
from vad.distributed import frame_shares, shard_clips
from vad.io import read_dataset
from vad.offline.pipeline import train_stage, with_data

REPO = Path(__file__).resolve().parents[1]
# one epoch is enough for the mechanics; float32 scoring: the comparison is exact up to summation order
ONE_EPOCH = replace(TINY, train=replace(TINY.train, epochs=1), score=replace(TINY.score, amp="off"))


def torchrun(*args: str, nproc: int = 2, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(REPO / "run_pipeline.py"), *args, "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def one_epoch_run(scene: Path, tmp_path_factory) -> Path:
    """An unscored run folder (STPM, one epoch, on ``scene``) for the tests to copy."""
    run = tmp_path_factory.mktemp("one_epoch") / "run"
    train_stage(with_data(ONE_EPOCH, root=scene, dataset="shanghaitech"), run, device="cpu")
    return run


def test_frame_shares_are_equal_disjoint_and_in_order() -> None:
    ranges = {"a": (0, 10), "b": (0, 3), "c": (5, 12)}  # 20 frames
    shares = [frame_shares(ranges, r, 3) for r in range(3)]
    frames = [[(k, i) for k, (a, b) in s.items() for i in range(a, b)] for s in shares]
    assert [len(f) for f in frames] == [6, 6, 6]  # 20 // 3 each; the last 2 frames are left out
    flat = [x for f in frames for x in f]
    assert len(set(flat)) == 18
    assert flat == [(k, i) for k, (a, b) in ranges.items() for i in range(a, b)][:18]
    assert frame_shares(ranges, 0, 1) == ranges


def test_shard_clips_partitions_and_balances() -> None:
    from vad.io.records import Clip

    clips = [Clip(name=f"c{i}", path=Path(f"c{i}"), kind="frames", frame_paths=(Path("f.jpg"),) * n)
             for i, n in enumerate([100, 10, 60, 50, 30, 5])]
    shards = [shard_clips(clips, r, 2) for r in range(2)]
    names = [c.name for s in shards for c in s]
    assert sorted(names) == sorted(c.name for c in clips)  # every clip exactly once
    loads = [sum(c.num_frames for c in s) for s in shards]
    assert abs(loads[0] - loads[1]) <= 5, loads
    assert shard_clips(clips, 0, 1) == clips


def test_torchrun_scoring_matches_one_process(scene: Path, one_epoch_run: Path, tmp_path: Path) -> None:
    """`score` under torchrun with 2 gloo processes: each scores its clips, rank 0 merges; scores, maps and the
    manifest equal a single-process run, and evaluate reads the result."""
    assert ONE_EPOCH.score.save_maps
    single, multi = tmp_path / "single", tmp_path / "multi"
    shutil.copytree(one_epoch_run, single)
    shutil.copytree(one_epoch_run, multi)
    assert cli_main(["score", "--run", str(single), "--device", "cpu"]) == 0
    out = torchrun("score", "--run-dir", str(multi))  # torchrun takes --run for its --run-path
    assert "scored" in out.stdout and out.stdout.count("scored ") == 1  # rank 0 alone talks
    clips = read_dataset("shanghaitech", scene, "test")
    for c in clips:
        a, b = np.load(single / "scores" / f"{c.name}.npy"), np.load(multi / "scores" / f"{c.name}.npy")
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6 * float(np.abs(a).max()))
        ma, mb = np.load(single / "maps" / f"{c.name}.npy"), np.load(multi / "maps" / f"{c.name}.npy")
        np.testing.assert_allclose(mb.astype(np.float32), ma.astype(np.float32), rtol=1e-3, atol=1e-3)
    manifest = json.loads((multi / "clips.json").read_text())
    assert manifest == json.loads((single / "clips.json").read_text())
    assert not list(multi.glob("clips.rank*.json"))
    for run in (single, multi):
        assert cli_main(["evaluate", "--run", str(run)]) == 0
    auc = [json.loads((run / "metrics.json").read_text())["frame_auc_micro"] for run in (single, multi)]
    assert auc[1] == pytest.approx(auc[0])


def test_torchrun_ddp_training_learns(scene: Path, tmp_path: Path) -> None:
    """`train` under torchrun: DistributedDataParallel over 2 gloo processes, each on half the frames. Rank 0
    writes one log and one model, and the model separates the pasted anomaly from normal frames."""
    run = tmp_path / "ddp"
    torchrun("train", "--data", str(scene), "--dataset", "shanghaitech", "--out", str(run),
             "--set", "model.input_height=96", "train.epochs=6", "train.batch_size=4", "train.lr=3e-3",
             "train.object_shift=0")  # as conftest.TINY
    log = [json.loads(ln) for ln in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == list(range(1, 7))
    assert all(r["processes"] == 2 and r["frames_per_s"] > 0 for r in log)
    assert log[-1]["val_loss"] < log[0]["val_loss"]
    assert cli_main(["score", "--run", str(run), "--device", "cpu"]) == 0
    clips = read_dataset("shanghaitech", scene, "test")
    s = np.concatenate([np.load(run / "scores" / f"{c.name}.npy") for c in clips])
    y = np.concatenate([c.labels for c in clips]).astype(bool)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y, s) > 0.95


def test_interrupted_distributed_manifest_parts_are_kept(one_epoch_run: Path, tmp_path: Path) -> None:
    """Per-rank manifest parts left by an interrupted torchrun scoring are folded into clips.json: their clips
    count as done (not re-scored) and none is dropped."""
    run = tmp_path / "run"
    shutil.copytree(one_epoch_run, run)
    assert cli_main(["score", "--run", str(run), "--device", "cpu"]) == 0
    manifest = json.loads((run / "clips.json").read_text())
    (a, entry_a), (b, entry_b) = manifest.items()
    (run / "clips.json").unlink()  # as if both ranks were interrupted before rank 0 merged
    (run / "clips.rank0.json").write_text(json.dumps({a: entry_a}))
    (run / "clips.rank1.json").write_text(json.dumps({b: entry_b}))
    stamps = {p.name: p.stat().st_mtime_ns for p in (run / "scores").iterdir()}
    assert cli_main(["score", "--run", str(run), "--device", "cpu"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (run / "scores").iterdir()} == stamps  # nothing re-scored
    assert json.loads((run / "clips.json").read_text()) == manifest
    assert not list(run.glob("clips.rank*.json"))
