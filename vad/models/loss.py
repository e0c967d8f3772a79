"""Student-teacher feature losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def level_discrepancy(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w)`` x2 -> ``(B, h, w)``: 0.5 * ||n(t) - n(s)||^2 with n = L2 normalisation over channels."""
    return 0.5 * (F.normalize(t.float(), dim=1) - F.normalize(s.float(), dim=1)).pow(2).sum(1)


def stpm_loss(teacher: dict[str, torch.Tensor], student: dict[str, torch.Tensor]) -> torch.Tensor:
    """STPM loss: per level, the discrepancy averaged over positions and batch; summed over levels."""
    if teacher.keys() != student.keys():
        raise ValueError(f"teacher levels {list(teacher)} != student levels {list(student)}")
    return sum(level_discrepancy(teacher[k], student[k]).mean() for k in teacher)
