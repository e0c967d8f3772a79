"""Files that are not what they should be, met through the CLI as a user meets them: a settings file that is not
UTF-8, is huge or nests without end is one `error:` line before any work (and `vad serve --check` says the same); a
full disk during `vad export` names the file it was writing."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import helpers
from vad.cli import main

REPO = Path(__file__).resolve().parents[1]


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize(("content", "says"), [
    (b"train:\n  epochs: 5\n# caf\xe9 in Latin-1\n", "not UTF-8 text (byte 0xe9 on line 3)"),
    (b"model: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deep"),
    (b"# " + b"x" * (2 << 20) + b"\n", "at most 1,048,576 bytes"),
])
def test_a_settings_file_that_is_no_settings_file_is_one_error_line(tmp_path: Path, capsys, content: bytes,
                                                                    says: str) -> None:
    bad = tmp_path / "pipeline.yaml"
    bad.write_bytes(content)
    data = tmp_path / "data"
    data.mkdir()
    for command in (["run", "--data", str(data), "--dataset", "folder", "--out", str(tmp_path / "run")],
                    ["train", "--data", str(data), "--dataset", "folder", "--out", str(tmp_path / "run")]):
        t0 = time.monotonic()
        assert main([*command, "--config", str(bad)]) == 2
        line = _one_error(capsys)
        assert line.startswith(f"error: {bad}: ") and says in line, line
        assert time.monotonic() - t0 < 10 and not (tmp_path / "run").exists()  # refused before any work
    site = tmp_path / "site.yaml"
    site.write_bytes(content)
    assert main(["serve", "--config", str(site), "--check"]) == 2
    line = _one_error(capsys)
    assert line.startswith(f"error: {site}: ") and says in line, line


def test_a_full_disk_during_export_names_the_file(trained: Path, scene: Path, tmp_path: Path) -> None:
    """The file size limit stands for a full disk: the write fails with no file name of its own (ONNX's writer)."""
    pytest.importorskip("onnxruntime", reason="the deploy extra exports")
    run = helpers.copy_run(trained, tmp_path / "run", scene)
    shutil.rmtree(run / "export", ignore_errors=True)  # exported here, not reused

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    done = subprocess.run([sys.executable, str(REPO / "run_pipeline.py"), "export", "--run", str(run)],
                          capture_output=True, text=True, preexec_fn=small_files,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(err) == 1, done.stderr[-2000:]
    assert err[0].startswith("error: ") and err[0].endswith("/model.onnx: File too large"), err
    assert str(run / "export") in err[0]
    assert not list((run / "export").rglob("model.onnx"))  # nothing half-written left as if whole
