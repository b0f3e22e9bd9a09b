"""Learning-rate schedules as pure functions of the optimiser step, and an exponential moving average of weights.

A schedule that is a function of the step (not an object with hidden state) resumes exactly: a run stopped at
step k and resumed sets the same learning rate at step k + 1 as an uninterrupted run.
"""
from __future__ import annotations

import copy
import math

import torch


def learning_rate(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0, kind: str = "cosine",
                  min_ratio: float = 0.01, poly_power: float = 0.9) -> float:
    """Linear warmup from base_lr / warmup_steps to base_lr, then cosine (to min_ratio x base_lr) or poly decay."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if kind == "cosine":
        return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
    if kind == "poly":
        return base_lr * (1 - progress) ** poly_power
    if kind == "constant":
        return base_lr
    raise ValueError(f"unknown schedule {kind!r}; choose cosine, poly or constant")


class EMA:
    """Exponential moving average of a model's parameters (buffers such as BN statistics are copied).

    The decay ramps up as min(decay, (1 + n) / (10 + n)) over the first updates so that the average is not stuck
    near the initial weights early in training."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for ema_p, p in zip(self.module.parameters(), model.parameters()):
            ema_p.lerp_(p.detach(), 1 - decay)
        for ema_b, b in zip(self.module.buffers(), model.buffers()):
            ema_b.copy_(b)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.updates = state["decay"], state["updates"]
        self.module.load_state_dict(state["module"])
