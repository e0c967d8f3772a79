"""Verdicts (vad.review.verdicts): one writer and one reader of RUN/feedback.jsonl, one rule for lines that are not
verdicts (skipped and reported, never fatal). A run here is only the files the module reads: events.json,
feedback.jsonl. The same torn line through the page's server, `vad feedback` and `vad adapt`: tests/test_adapt.py."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from vad.errors import InputError, UnknownEventError, UsageError
from vad.review.verdicts import VERDICTS, known_events, read_verdicts, record_verdict
from vad.runs import RunFolder, RunFolderError

EVENTS = [{"id": "cam-e0", "clip": "cam", "start": 10, "end": 20}, {"id": "cam-e1", "clip": "cam", "start": 40,
                                                                     "end": 44}]


@pytest.fixture
def run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    RunFolder(run).events_json.write_text(json.dumps(EVENTS))
    return run


def test_a_verdict_is_one_line_with_its_event(run: Path) -> None:
    line = record_verdict(run, "cam-e1", "anomaly", via="site")
    assert {k: line[k] for k in ("event", "clip", "start", "end", "verdict", "via")} == {
        "event": "cam-e1", "clip": "cam", "start": 40, "end": 44, "verdict": "anomaly", "via": "site"}
    assert RunFolder(run).feedback.read_text() == json.dumps(line) + "\n"
    assert read_verdicts(RunFolder(run)) == ({"cam-e1": line}, [])  # a RunFolder or its path


def test_the_last_verdict_of_an_event_wins(run: Path) -> None:
    record_verdict(run, "cam-e0", "anomaly")
    last = record_verdict(run, "cam-e0", "normal")
    assert read_verdicts(run) == ({"cam-e0": last}, [])


def test_an_unknown_event_is_a_typed_error_and_writes_nothing(run: Path) -> None:
    with pytest.raises(UnknownEventError, match=r"unknown event 'nope' .*cam-e0, cam-e1") as err:
        record_verdict(run, "nope", "normal")
    assert isinstance(err.value, UsageError)  # the CLI reports it as a usage error (exit 2)
    with pytest.raises(UsageError, match=r"verdict 'maybe': expected one of normal, anomaly") as err:
        record_verdict(run, "cam-e0", "maybe")
    assert not isinstance(err.value, UnknownEventError)
    assert not RunFolder(run).feedback.exists()
    assert VERDICTS == ("normal", "anomaly")


def test_lines_that_are_not_verdicts_are_skipped_and_reported(run: Path) -> None:
    good = record_verdict(run, "cam-e0", "normal")
    other = dict(good, event="old-e7", verdict="anomaly")  # an event of an earlier evaluation: still a verdict
    lines = [json.dumps(good), "", "not json", json.dumps([1, 2]), json.dumps(dict(good, verdict="maybe")),
             json.dumps({"event": "cam-e1", "verdict": "normal"}), json.dumps(dict(good, start="10")),
             json.dumps(other), '{"event": "cam-e1", "verd']  # the last one torn by a crash: no newline
    feedback = RunFolder(run).feedback
    feedback.write_bytes("\n".join(lines).encode() + b"\n\xff\xfe{}")  # and one not even UTF-8
    verdicts, bad = read_verdicts(run)
    assert verdicts == {"cam-e0": good, "old-e7": other}
    assert bad == [3, 4, 5, 6, 7, 9, 10]  # line 2 is blank: neither


def test_a_verdict_after_a_torn_line_starts_a_new_line(run: Path) -> None:
    first = record_verdict(run, "cam-e0", "normal")
    feedback = RunFolder(run).feedback
    with feedback.open("a") as fh:
        fh.write('{"event": "cam-e1", "verd')  # a crash mid-write
    assert read_verdicts(run) == ({"cam-e0": first}, [2])
    second = record_verdict(run, "cam-e1", "anomaly")
    assert feedback.read_text().splitlines()[1:] == ['{"event": "cam-e1", "verd', json.dumps(second)]
    assert read_verdicts(run) == ({"cam-e0": first, "cam-e1": second}, [2])


def test_verdicts_given_at_once_all_land_whole(run: Path) -> None:
    def give(verdict: str) -> None:
        for _ in range(25):
            record_verdict(run, "cam-e0", verdict, via=verdict)

    threads = [threading.Thread(target=give, args=(v,)) for v in (*VERDICTS, *VERDICTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = RunFolder(run).feedback.read_text().splitlines()
    assert len(lines) == 100 and all(json.loads(x)["via"] == json.loads(x)["verdict"] for x in lines)
    assert read_verdicts(run)[1] == []


def test_events_of_a_run_not_evaluated_or_of_another_version(tmp_path: Path) -> None:
    with pytest.raises(RunFolderError, match=r"events.json not found: evaluate the run first"):
        known_events(tmp_path)
    RunFolder(tmp_path).events_json.write_text(json.dumps([{"clip": "cam"}]))
    with pytest.raises(InputError, match=r"not an events file of this vad version"):
        record_verdict(tmp_path, "cam-e0", "normal")
    assert read_verdicts(tmp_path) == ({}, [])  # no feedback yet
