"""DemP's options (:class:`DemPConfig`): each field's bounds and help text, and the checks between them.

Kept apart from :mod:`.demp`, the method itself, which re-exports :class:`DemPConfig`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..bounds import bounded, check_bounds, ignore_field, min_channels_field, reject
from ..mechanics.costs import COSTS
from ..mechanics.regularizers import REGULARIZERS, TARGETS
from ..mechanics.schedules import SCHEDULES

__all__ = ["DemPConfig", "BUDGETS", "DEATH_CRITERIA", "SELECTIONS"]

#: How DemP decides that a neuron died (``compressor.criteria``): exact or thresholded zeros, or never positive.
DEATH_CRITERIA = ("dead", "saturated")
#: Which neurons the penalty acts on (``budget``: mechanics/selection.py, beyond the papers).
SELECTIONS = ("all", "budget")
#: Budget mode's kinds and the option that sets each (neurons: the removed share; macs / params: the ratio kept).
BUDGETS = {"neurons": "target_sparsity", "macs": "target_macs", "params": "target_params"}


@dataclass
class DemPConfig:
    """DemP's options; defaults from the papers and the authors' code (see ``docs/demp.md``)."""

    regularizer: str = bounded("lasso", choices=REGULARIZERS,
                               help="l2 | lasso | cdg_l2 | cdg_lasso | none: the penalty added to the loss")
    target: str = bounded("norm_scale", choices=TARGETS,
                          help="weights (Conv/Linear weights) | norm_scale (normalization gamma, the later paper's "
                               "final runs) | all")
    peak: float = bounded(5e-3, low=0,
                          help="peak lambda of the penalty (>= 0); higher kills more neurons (authors' Adam + "
                               "Lasso(gamma) sweeps: 5e-8 ... 0.35)")
    schedule: str = bounded("one_cycle", choices=SCHEDULES, help="one_cycle (optax cosine one-cycle, the paper's) | "
                                                                 "constant | linear: the shape of lambda_t and sigma_t")
    span: float = bounded(0.85, low=0, low_open=True, high=1, note="a fraction of the training steps",
                          help="fraction of the training steps the lambda/sigma schedules span (0 < span <= 1; authors "
                               "0.85-0.9)")
    pct_start: float = bounded(0.3, low=0, low_open=True, high=1, high_open=True,
                               help="one_cycle: fraction of the span spent rising (0 < pct_start < 1)")
    div_factor: float = bounded(25.0, low=1, help="one_cycle: start value = peak / div_factor (>= 1)")
    final_div_factor: float = bounded(1e4, low=1, help="one_cycle: end value = start / final_div_factor (>= 1)")
    noise: float = bounded(5e-5, low=0,
                           help="peak sigma of the Gaussian noise added to live neurons' parameters after each step "
                                "(0: off)")
    interval: int = bounded(1000, integer=True, low=0, note="optimizer steps between removals; 0: auto",
                            help="measure death and remove dead neurons every k optimizer steps (paper: 1000); 0: "
                                 "auto, the training steps / 20 (short fine-tunes)")
    death_samples: int = bounded(1024, integer=True, low=1,
                                 help="training samples (no augmentation) on which death is measured (paper: 1024)")
    criterion: str = bounded("dead", choices=DEATH_CRITERIA,
                             help="dead (max|activation| <= eps: ReLU's exact zeros, lossless at eps 0) | saturated "
                                  "(max activation <= eps: never leaves the saturated region, e.g. Leaky ReLU's "
                                  "only-negative units, GELU/SiLU with a small eps; lossy, each removal's output "
                                  "change is reported)")
    eps: float = bounded(0.0, low=0,
                         help="the criterion's threshold at every consumer (dead, eps 0: exact zeros, lossless)")
    min_channels: int = min_channels_field()
    round_to: int = bounded(1, integer=True, low=1,
                            help="keep channel counts a multiple of this (keeps a few dead channels)")
    ignore: list[str] = ignore_field()
    target_sparsity: float | None = bounded(None, low=0, low_open=True, high=1, high_open=True, nullable=True,
                                            help="budget mode (experimental, beyond the papers; docs/demp.md section "
                                                 "8): the neuron sparsity (removed share) to reach; lambda is adapted "
                                                 "online up to peak, and lambda and noise stop once it is reached "
                                                 "(null: fixed lambda)")
    target_macs: float | None = bounded(None, low=0, low_open=True, high=1, high_open=True, nullable=True,
                                        help="budget mode: the MAC ratio compact/dense to reach (e.g. 0.3), instead of "
                                             "target_sparsity")
    target_params: float | None = bounded(None, low=0, low_open=True, high=1, high_open=True, nullable=True,
                                          help="budget mode: the parameter ratio compact/dense to reach, instead of "
                                               "target_sparsity")
    cost: str = bounded("uniform", choices=COSTS,
                        help="uniform (the papers: one lambda for every neuron) | macs | params: each regularized "
                             "tensor's lambda scaled by what one neuron of its group costs, normalized to mean 1 over "
                             "the prunable neurons, and 0 on groups that cannot be removed (beyond the papers, "
                             "MorphNet-style; mechanics/costs.py)")
    select: str = bounded("all", choices=SELECTIONS,
                          help="all (the papers: every regularized tensor) | budget: penalize only the live neurons "
                               "the budget still needs, the smallest |gamma| / cost weight, chosen again at every "
                               "measurement, with lambda w (|gamma| + max(beta, 0)) so they die exactly (budget mode "
                               "and target norm_scale; beyond the papers, mechanics/selection.py)")
    remove_at_start: bool = field(default=False,
                                  metadata={"help": "measure death and remove the dead neurons before the first step "
                                                    "(fine-tuning a checkpoint: the lossless part of a budget comes "
                                                    "first)"})
    reach_by: float = bounded(0.5, low=0, low_open=True, high=1,
                              help="budget mode: share of the training steps by which the target is planned to be "
                                   "reached")
    prune: bool = field(default=True, metadata={"help": "false: measure and record deaths but never remove"})
    final_only: bool = field(default=False,
                             metadata={"help": "remove only once at the end (the dynamic-removal benchmark's "
                                               "baseline)"})

    def validate(self) -> None:
        """Raise :class:`UsageError` naming the option outside its bounds (declared with each field) or
        in conflict with another, and what it accepts."""
        check_bounds(self, "demp")
        given = [name for name in BUDGETS.values() if getattr(self, name) is not None]
        if len(given) > 1:
            reject(f"demp.{given[-1]}", getattr(self, given[-1]),
                   f"null when demp.{given[0]} is set (choose one budget)")
        if self.select != "all" and (self.budget_share is None or self.target != "norm_scale"):
            reject("demp.select", self.select,
                   "all unless a budget (target_sparsity / target_macs / target_params) is set and target is "
                   "norm_scale")
        if self.budget_share is not None and (self.regularizer == "none" or self.peak <= 0):
            reject("demp.peak", self.peak,
                   "> 0 with a regularizer in budget mode (the largest lambda the controller may use)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def budget_kind(self) -> str | None:
        """What the budget counts: ``neurons``, ``macs`` or ``params``; None with a fixed lambda."""
        return next((kind for kind, name in BUDGETS.items() if getattr(self, name) is not None), None)

    @property
    def budget_share(self) -> float | None:
        """The share to remove in budget mode (neurons, or 1 - the MAC / parameter ratio); None with a fixed lambda."""
        kind = self.budget_kind
        if kind is None:
            return None
        value = float(getattr(self, BUDGETS[kind]))
        return value if kind == "neurons" else 1.0 - value
