"""The optimizer and the learning rate of a run: Adam / AdamW / SGD, and the LR as a pure function of
the optimizer step (so a resumed run needs only the step to continue the schedule exactly)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..errors import UsageError
from .config import TrainConfig

__all__ = ["build_optimizer", "LRSchedule", "final_cos"]


def build_optimizer(cfg: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """Adam / AdamW / SGD from the recipe (Adam's and SGD's weight decay is coupled, AdamW's decoupled)."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.betas[0], cfg.betas[1]), eps=cfg.adam_eps,
                                weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.betas[0], cfg.betas[1]), eps=cfg.adam_eps,
                                 weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    raise UsageError(f"unknown optimizer {cfg.optimizer!r}; choose adam, adamw or sgd")


class LRSchedule:
    """The learning rate as a pure function of the optimizer step (so resuming needs only the step).

    ``factor(t)`` multiplies ``train.lr``. A linear warm-up over ``warmup_epochs`` (from lr/W to lr)
    comes first; cosine and one-cycle then run over the remaining steps, step/multistep decay at
    absolute epochs. ``one_cycle`` matches :class:`torch.optim.lr_scheduler.OneCycleLR` (cosine
    annealing, ``max_lr = train.lr``).
    """

    def __init__(self, cfg: TrainConfig, steps_per_epoch: int, total_steps: int):
        self.cfg = cfg
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.total_steps = max(1, total_steps)
        self.warmup_steps = min(int(round(cfg.warmup_epochs * self.steps_per_epoch)), self.total_steps - 1)
        self.last_factor = 1.0

    def _main(self, t: int) -> float:
        c = self.cfg
        name = c.lr_schedule
        if name == "constant":
            return 1.0
        epoch = t // self.steps_per_epoch
        if name == "step":
            return c.gamma ** (epoch // c.step_size)
        if name == "multistep":
            return c.gamma ** sum(1 for m in c.milestones if epoch >= m)
        span = max(1, self.total_steps - self.warmup_steps)
        u = max(0, t - self.warmup_steps)
        if name == "cosine":
            frac = min(1.0, u / span)
            return c.min_lr_factor + (1 - c.min_lr_factor) * (1 + math.cos(math.pi * frac)) / 2
        if name == "one_cycle":
            initial = 1.0 / c.div_factor
            final = initial / c.final_div_factor
            up_end = float(c.pct_start * span) - 1
            if u <= up_end:
                frac = u / up_end if up_end > 0 else 1.0
                return final_cos(initial, 1.0, frac)
            down = span - 1 - up_end
            frac = min(1.0, (u - up_end) / down) if down > 0 else 1.0
            return final_cos(1.0, final, frac)
        raise UsageError(f"unknown lr_schedule {name!r}")

    def factor(self, t: int) -> float:
        main = self._main(t)
        if t < self.warmup_steps:
            return main * (t + 1) / (self.warmup_steps + 1)
        return main

    def apply(self, optimizer: torch.optim.Optimizer, t: int) -> float:
        """Set every param group's lr for step ``t``; returns the lr."""
        self.last_factor = self.factor(t)
        lr = self.cfg.lr * self.last_factor
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self, step: int) -> dict[str, Any]:
        return {"step": int(step), "kind": self.cfg.lr_schedule, "warmup_steps": self.warmup_steps}


def final_cos(start: float, end: float, frac: float) -> float:
    """Cosine interpolation from ``start`` (frac 0) to ``end`` (frac 1)."""
    return end + (start - end) * (1 + math.cos(math.pi * frac)) / 2
