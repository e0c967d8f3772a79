"""Published sizes of each benchmark, and a copy's counts compared with them (``inspect``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from vad.io.records import Clip


@dataclass(frozen=True)
class Published:
    """What a dataset's own documentation states: clips (and frames, where it states them) per split."""

    clips: dict[str, int]
    source: str
    frames: dict[str, int] = field(default_factory=dict)


# Counts the datasets' own pages and READMEs state, and the frame counts of the dataset comparison in the
# ShanghaiTech paper (Luo, Liu, Gao, ICCV 2017), which gives Ped2's too (the UCSD README does not) and which papers
# since repeat. Both layouts (original archive, research frame folders) hold the same frames.
_LUO = "Luo et al. ICCV 2017"
PUBLISHED: dict[str, Published] = {
    "shanghaitech": Published({"train": 330, "test": 107}, "ShanghaiTech Campus: 330 training videos / 274,515 "
                              f"frames, 107 test clips / 42,883 frames ({_LUO})",
                              frames={"train": 274515, "test": 42883}),
    "avenue": Published({"train": 16, "test": 21}, "CUHK Avenue page: 16 training and 21 test videos, 30,652 frames",
                        frames={"train": 15328, "test": 15324}),
    "ped1": Published({"train": 34, "test": 36}, "UCSD README: Ped1 34 training, 36 test clips of 200 frames",
                      frames={"train": 34 * 200, "test": 36 * 200}),
    "ped2": Published({"train": 16, "test": 12}, f"UCSD README: Ped2 16 training, 12 test clips; 2,550 / 2,010 "
                      f"frames ({_LUO})", frames={"train": 2550, "test": 2010}),
}


def split_summary(dataset: str, split: str, clips: Sequence[Clip], scenes: Sequence[int | str] | None = None) -> str:
    """Per-split totals (clips, frames, anomalous frames; per scene for ShanghaiTech) and the published counts,
    with a ``warning:`` line for each count that differs (an incomplete or mixed-up copy)."""
    lines = [f"  {split}: {_totals(clips)}"]
    scene_names = sorted({c.scene for c in clips if c.scene is not None})
    if len(scene_names) > 1:
        lines += [f"    scene {s}: {_totals([c for c in clips if c.scene == s])}" for s in scene_names]
    lines += compare_published(dataset, split, clips, scenes)
    return "\n".join(lines)


def _totals(clips: Sequence[Clip]) -> str:
    text = f"{len(clips)} clips, {sum(c.num_frames for c in clips)} frames"
    labelled = [c for c in clips if c.labels is not None]
    if labelled:
        text += f", {sum(int(c.labels.sum()) for c in labelled)} anomalous"
        masked = sum(c.pixel_mask is not None for c in labelled)
        text += f", pixel ground truth for {masked} of {len(labelled)} clips"
    return text


def compare_published(
    dataset: str, split: str, clips: Sequence[Clip], scenes: Sequence[int | str] | None = None
) -> list[str]:
    """Lines comparing ``clips`` with the published counts of ``dataset``'s ``split``; differences are warnings."""
    known = PUBLISHED.get(dataset)
    if known is None or split not in known.clips:
        return []
    if scenes is not None:
        return [f"  published counts ({known.source}) cover all scenes; not compared for a scene selection"]
    found = {"clips": len(clips), "frames": sum(c.num_frames for c in clips)}
    expected = {"clips": known.clips[split]}
    if split in known.frames:
        expected["frames"] = known.frames[split]
    out = []
    for what, n in expected.items():
        if found[what] == n:
            out.append(f"  {what}: {found[what]}, as published ({known.source})")
        else:
            state = "incomplete copy?" if found[what] < n else "more than published: a mixed-up copy?"
            out.append(f"  warning: {found[what]} {split} {what}, published {n} ({known.source}); {state}")
    return out
