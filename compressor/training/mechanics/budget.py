"""DemP with a budget: adapt the regularization strength online so training reaches a target.

Beyond the papers (neither DemP paper nor the authors' code has it): the papers sweep λ per dataset
and schedule; a user wants "70% of the neurons gone" (or "30% of the MACs left") from one recipe on
any data. :class:`BudgetController` turns the measured progress into a multiplicative gain on DemP's
λ schedule:

- **A planned trajectory.** The target share ``T`` (neuron sparsity, or the share of MACs removed) is
  planned to grow linearly from the share measured at the first measurement (step ``t0``, share
  ``s0``: neurons the learning rate alone killed early are not "ahead of plan") to ``T`` at ``reach_by``
  of training: ``planned(t) = s0 + (T - s0) · min(1, (t - t0) / (reach_by · total_steps - t0))``.
- **Multiplicative control.** The gain starts at 0.1 (a tenth of the recipe's ``peak``: a kill too
  early cannot be undone, a slow start can be caught up). At every death measurement it is multiplied by
  ``exp(rate · (planned - measured) / T)``: behind the plan by the whole target multiplies λ by
  ``e^rate`` (8x at the default rate ln 8), ahead of it divides. The gain stays within
  ``[min_gain, max_gain]`` = [1e-3, 1]: in budget mode the recipe's ``peak`` is the largest λ the
  controller may use (a runaway λ wrecks the model faster than it kills neurons: on a 4,000-image MNIST
  run a gain of 10 ended at chance accuracy).
  Controlling the logarithm of λ suits a quantity whose useful values span decades (the authors sweep
  5e-8 ... 0.35).
- **Approach from above, then stop.** Death is irreversible: a neuron killed too many cannot be
  brought back. The plan reaches the target only at ``reach_by``, so the live fraction comes down to
  the target from above; once the measured share reaches the target the controller **freezes**:
  λ and the noise σ are 0 for the rest of training (nothing pushes neurons across the border any
  more, so the model trains at the target size), and the gain is kept for the record. Neurons that
  still die on their own afterwards are removed as usual (lossless), so the final sparsity can end a
  little above the target; the final report gives the reached value.
- **A deadline.** λ can only kill as fast as the optimizer moves the regularized tensors (Adam moves a
  Lasso-penalized γ by about ``lr`` per step whatever λ is), so a target can be out of reach of any
  λ up to ``peak``: on full MNIST (CNN 32/64/128, 936 steps), 70% asked, λ was at its ceiling from
  step 400 on and the run ended at 29%. At the first measurement at or past ``reach_by`` (:meth:`due`),
  :class:`~compressor.training.methods.demp.DemP` closes the remaining gap itself: it removes the
  live neurons closest to dead (lowest ReDo activity score, Sokar et al. 2023: mean |activation| over
  the layer's mean, at their most active reader) until the target is reached, a lossy removal whose
  output change is measured and reported like every lossy removal, then freezes. The share λ reached
  and the share the deadline removed are both recorded (:meth:`close`), so a user sees how much of the
  target DemP reached by itself; the rest of training (``1 - reach_by``) recovers from the cut.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["BudgetController"]


@dataclass
class BudgetController:
    """Gain on λ that steers a measured share towards ``target`` by ``reach_by`` of ``total_steps``."""

    target: float
    total_steps: int
    reach_by: float = 0.5
    rate: float = math.log(8.0)
    min_gain: float = 1e-3
    max_gain: float = 1.0  # lambda never exceeds the recipe's peak: in budget mode peak is the ceiling
    gain: float = 0.1  # start at a tenth of ``peak``: undershooting early is recoverable, overshooting is not
    reached_step: int | None = None  # optimizer steps done when the target was first measured
    start_step: int | None = None  # the first measurement: where the planned line starts
    start_share: float = 0.0
    last_measured: float | None = None
    last_planned: float | None = None
    closed_step: int | None = None  # the measurement at which the deadline closed the gap (None: λ reached it)
    closed_from: float | None = None  # the share reached by λ alone when the deadline closed the gap
    closed_neurons: int = 0  # live neurons the deadline removed
    closed_to: float | None = None  # the share right after the deadline's cut
    closed_error: dict[str, Any] | None = None  # the cut's output change (max_abs_diff, rel_diff, samples)
    lossless_share: float | None = None  # the share the removal before the first step took (dead neurons: lossless)
    final_share: float | None = None  # the share at the end of training

    @property
    def deadline(self) -> float:
        """Optimizer steps by which the target is due (``reach_by`` of training)."""
        return self.reach_by * self.total_steps

    def due(self, step: int, measured: float) -> bool:
        """True when, after ``step`` steps, the deadline has passed and the target is not yet reached."""
        return not self.frozen and step >= self.deadline and measured < self.target

    def close(self, step: int, before: float, after: float, neurons: int, error: dict[str, Any] | None = None) -> None:
        """Record that the deadline removed ``neurons`` live neurons at ``step`` to take the share from
        ``before`` to ``after`` (changing the outputs by ``error``), and freeze."""
        self.closed_step, self.closed_from, self.closed_neurons = int(step), float(before), int(neurons)
        self.closed_to, self.closed_error = float(after), (dict(error) if error else None)
        self.last_measured, self.last_planned = float(after), self.planned(step)
        self.reached_step = int(step)

    def breakdown(self) -> dict[str, Any]:
        """Where the share came from: lossless removal before training, neurons that died under the penalty
        (and on their own later), and the deadline's forced cut of live neurons (with its output change).

        The three add up to the final share (the last measurement while training is not finished)."""
        final = self.final_share if self.final_share is not None else (self.last_measured or 0.0)
        lossless = self.lossless_share or 0.0
        cut = 0.0
        if self.closed_to is not None and self.closed_from is not None:  # the deadline's cut happened
            cut = self.closed_to - self.closed_from
        return {"final": final, "lossless": lossless, "died": final - lossless - cut, "cut": cut,
                "cut_neurons": self.closed_neurons, "cut_error": self.closed_error}

    def planned(self, step: int) -> float:
        """The planned share after ``step`` optimizer steps: a line from the first measurement to the target."""
        start_step, start = (self.start_step, self.start_share) if self.start_step is not None else (0, 0.0)
        horizon = max(1.0, self.reach_by * self.total_steps - start_step)
        return start + (self.target - start) * min(1.0, max(0.0, step - start_step) / horizon)

    @property
    def frozen(self) -> bool:
        """True once the target was reached: λ and σ are 0 from then on."""
        return self.reached_step is not None

    def update(self, step: int, measured: float) -> float:
        """Record a measurement of the share after ``step`` steps; returns the new gain."""
        if self.start_step is None:  # the plan starts where training stands at the first measurement
            self.start_step, self.start_share = int(step), min(float(measured), self.target)
        self.last_measured, self.last_planned = float(measured), self.planned(step)
        if self.frozen:
            return self.gain
        if measured >= self.target:
            self.reached_step = int(step)
            return self.gain
        error = (self.last_planned - measured) / self.target
        self.gain = min(self.max_gain, max(self.min_gain, self.gain * math.exp(self.rate * error)))
        return self.gain

    def scale(self) -> float:
        """The factor on λ now: the gain, or 0 once frozen."""
        return 0.0 if self.frozen else self.gain

    def state_dict(self) -> dict[str, Any]:
        return {"gain": self.gain, "reached_step": self.reached_step, "last_measured": self.last_measured,
                "last_planned": self.last_planned, "start_step": self.start_step, "start_share": self.start_share,
                "closed_step": self.closed_step, "closed_from": self.closed_from,
                "closed_neurons": self.closed_neurons, "closed_to": self.closed_to, "closed_error": self.closed_error,
                "lossless_share": self.lossless_share, "final_share": self.final_share}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gain = float(state.get("gain", self.gain))
        reached = state.get("reached_step")
        self.reached_step = None if reached is None else int(reached)
        self.last_measured = state.get("last_measured")
        self.last_planned = state.get("last_planned")
        start = state.get("start_step")
        self.start_step = None if start is None else int(start)
        self.start_share = float(state.get("start_share", 0.0))
        closed = state.get("closed_step")
        self.closed_step = None if closed is None else int(closed)
        self.closed_from = state.get("closed_from")
        self.closed_neurons = int(state.get("closed_neurons", 0))
        self.closed_to, self.closed_error = state.get("closed_to"), state.get("closed_error")
        self.lossless_share, self.final_share = state.get("lossless_share"), state.get("final_share")
