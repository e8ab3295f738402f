"""Poly learning-rate schedule with warmup (detectron2 layer)."""

from __future__ import annotations

import torch
from detectron2.solver import build_lr_scheduler as d2_build_lr_scheduler
from detectron2.solver.lr_scheduler import LRMultiplier, WarmupParamScheduler
from fvcore.common.param_scheduler import ParamScheduler

__all__ = ["PolyParamScheduler", "build_lr_scheduler"]


class PolyParamScheduler(ParamScheduler):
    """Poly decay ``(1 − t)^power`` of training progress ``t`` ∈ [0, 1), floored at
    ``constant_ending`` when that is > 0 (DeepLab's convention)."""

    def __init__(self, power: float = 0.9, constant_ending: float = 0.0):
        self.power = power
        self.constant_ending = constant_ending

    def __call__(self, where: float) -> float:
        value = (1.0 - where) ** self.power
        if self.constant_ending > 0 and value < self.constant_ending:
            return self.constant_ending
        return value


def build_lr_scheduler(cfg, optimizer: torch.optim.Optimizer):
    """``WarmupPolyLR`` (the reference protocol) or any detectron2 scheduler by name."""
    if cfg.SOLVER.LR_SCHEDULER_NAME != "WarmupPolyLR":
        return d2_build_lr_scheduler(cfg, optimizer)
    sched = PolyParamScheduler(cfg.SOLVER.POLY_LR_POWER, cfg.SOLVER.POLY_LR_CONSTANT_ENDING)
    if cfg.SOLVER.WARMUP_ITERS > 0:
        sched = WarmupParamScheduler(
            sched,
            cfg.SOLVER.WARMUP_FACTOR,
            min(cfg.SOLVER.WARMUP_ITERS / cfg.SOLVER.MAX_ITER, 1.0),
            cfg.SOLVER.WARMUP_METHOD,
            cfg.SOLVER.RESCALE_INTERVAL,
        )
    return LRMultiplier(optimizer, multiplier=sched, max_iter=cfg.SOLVER.MAX_ITER)
