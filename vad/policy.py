"""Which settings each command on a trained run may take, and the config such a command runs under.

A run's model fixes most settings once it is trained; what a later command can still change is its stage's own
section, and for scoring the model's scoring settings (:data:`vad.config.SCORING`). :func:`run_config` loads the
config ``train`` saved in the run with the command's ``--set`` overrides on top, and refuses by name a setting the
command cannot apply (saying which command does). The CLI calls it once per command and passes the config down.
"""

from __future__ import annotations

from pathlib import Path

from vad.config import SCORING, RunConfig, load_config
from vad.errors import ConfigError
from vad.runs import RunFolder, RunFolderError

# What each command that works on a trained run applies (the other settings are fixed by then, or another's).
APPLIES = {
    "watch": ("score", "model.scoring", "postprocess", "eval", "render"),
    "score": ("data", "score", "model.scoring"),
    "export": ("data", "score", "model.scoring"),
    "evaluate": ("postprocess", "eval"),
    "render": ("postprocess", "eval", "render"),
}
STAGE_OF = {"train": "train", "model": "train", "data": "train or score", "score": "score",
            "postprocess": "evaluate and render", "eval": "evaluate and render", "render": "render"}


def run_config(run: Path | str, overrides: list[str] | tuple[str, ...] | None, command: str,
               required: bool = True) -> RunConfig:
    """The config saved by ``train`` in ``run`` (the defaults when absent and not ``required``) with ``--set``
    overrides on top; a setting ``command`` cannot apply is refused by name (:data:`APPLIES`)."""
    saved = RunFolder(Path(run)).config
    if not saved.is_file() and required:
        raise RunFolderError(f"{saved} not found: is {run} a run folder? (vad train ... --out RUN)")
    cfg = load_config(saved if saved.is_file() else None, list(overrides or []), saved=True)
    for item in overrides or []:
        check_applies(item, command, run)
    return cfg


def check_applies(item: str, command: str, run: Path | str) -> None:
    """Refuse ``--set`` override ``item`` (``KEY=VALUE``) unless ``command`` applies it, naming the command that
    does."""
    key = item.partition("=")[0].strip()
    section, _, name = key.partition(".")
    applies = APPLIES[command]
    if section in applies or (section == "model" and name in SCORING and "model.scoring" in applies):
        return
    if section in ("train", "model"):
        what = f"{key} applies when scoring (vad score --run {run} --set {item})" if name in SCORING else (
            f"{key} is fixed by the trained model; train a new run to change it")
    else:
        what = f"{key} applies to {STAGE_OF[section]}, not to {command}"
    raise ConfigError(f"--set {item}: {what}")
