"""One camera-options schema: ``vad watch``'s flags and a site file's camera keys are built from the same fields
(:class:`vad.live.options.CameraOptions`), with the same defaults and the same error for the same bad value; the
backend names are one list."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path

import pytest

from vad.cli import build_parser, main
from vad.config import BACKENDS, RunConfig, choices
from vad.errors import ConfigError
from vad.live.options import OPTION_NAMES, CameraOptions, flag, from_flags
from vad.live.watch import WatchOptions
from vad.site.config import CAMERA_KEYS, CameraConfig, SiteConfig

FIELDS = dataclasses.fields(CameraOptions)
WATCH = ["watch", "--run", "runs/none", "--source", "rtsp://127.0.0.1:8554/none", "--out"]


def _subparser(name: str) -> argparse.ArgumentParser:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def test_every_camera_option_is_a_watch_flag_and_a_site_key_with_the_same_default(tmp_path: Path) -> None:
    flags = {s for a in _subparser("watch")._actions for s in a.option_strings}
    parsed = build_parser().parse_args([*WATCH, str(tmp_path / "w")])
    site_camera = CameraConfig(source="rtsp://127.0.0.1/x", run="runs/x")
    for f in FIELDS:
        assert flag(f) in flags, f.name
        assert f.name in CAMERA_KEYS, f.name
        assert f.metadata["help"], f.name
        assert getattr(parsed, f.name) == f.default == getattr(site_camera, f.name) == getattr(WatchOptions(), f.name)
    assert sorted(CAMERA_KEYS) == sorted(f.name for f in dataclasses.fields(CameraConfig))
    assert len(set(CAMERA_KEYS)) == len(CAMERA_KEYS)


BAD = {"fps": "-1", "transport": "pigeon", "open_timeout": "0", "stall_timeout": "-3", "max_retries": "-1",
       "queue_size": "0", "pre_roll": "-0.5", "post_roll": "soon"}


def test_every_option_that_takes_a_value_has_a_bad_one_here() -> None:
    assert sorted(BAD) == sorted(f.name for f in FIELDS if f.type != "bool")


def _error(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_bad_value_gets_the_same_error_from_a_flag_and_a_site_file(name: str, tmp_path: Path, capsys) -> None:
    f = next(f for f in FIELDS if f.name == name)
    value = BAD[name]
    assert main([*WATCH, str(tmp_path / "w"), flag(f), value]) == 2
    from_flag = _error(capsys)
    site = tmp_path / "site.yaml"
    site.write_text(f"cameras:\n  gate: {{source: rtsp://127.0.0.1/x, run: runs/none, {name}: {value}}}\n")
    assert main(["serve", "--config", str(site), "--check"]) == 2
    from_site = _error(capsys)
    said = from_flag.removeprefix(f"error: {flag(f)}: ")
    assert said != from_flag and from_site == f"error: {site}: cameras.gate.{name}: {said}"
    assert "expected" in said and (value in said or str(float(value)) in said), said


def test_options_made_in_code_are_checked_too() -> None:
    with pytest.raises(ConfigError, match=r"^fps: got -2.0; expected a value > 0$"):
        WatchOptions(fps=-2)
    with pytest.raises(ConfigError, match="^transport: got 'smoke'; expected one of tcp, udp$"):
        CameraOptions(transport="smoke")
    assert WatchOptions(fps=12, queue_size=4).fps == 12.0  # converted as a config's values are


def test_flag_values_are_checked_and_named_by_their_flag() -> None:
    assert from_flags({"fps": 10, "transport": "udp", "webhook": "http://x/y"}) == {
        "fps": 10.0, "transport": "udp", "webhook": "http://x/y"}  # the watch loop's own options as they are
    with pytest.raises(ConfigError, match="^--queue: got 0; expected a value >= 1$"):
        from_flags({"queue_size": 0})
    assert set(OPTION_NAMES) <= {f.name for f in dataclasses.fields(WatchOptions)}


def test_backend_names_are_one_list() -> None:
    from vad.runtime.export import BACKENDS as EXPORT_BACKENDS

    score = typing.get_type_hints(type(RunConfig().score), include_extras=True)["backend"]
    site = typing.get_type_hints(SiteConfig, include_extras=True)["backend"]
    assert choices(score) == choices(site) == BACKENDS == EXPORT_BACKENDS
    for command in ("watch", "score"):
        (backend,) = [a for a in _subparser(command)._actions if "--backend" in a.option_strings]
        assert tuple(backend.choices) == BACKENDS
