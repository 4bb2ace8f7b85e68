"""DemP's regularizers, added to the loss (papers 000 and 002; see docs/demp.md).

DemP adds R(θ) to the *loss* — not as decoupled weight decay — so that Adam's adaptive scaling sees
it; that is what makes the regularization push neurons across their death border (paper ``000`` §4,
"Weight Decay").

Regularizers (``p`` runs over the targeted parameter tensors):

- ``l2``:        Σ p²
- ``lasso``:     Σ |p|
- ``cdg_l2``:    Σ max(p, 0)²   ("coup de grâce", paper ``000`` Eq. 6: λ·Σ_{w>0} w²; only positive
  weights, pushes pre-activations down)
- ``cdg_lasso``: Σ max(p, 0)
- ``none``:      0

Scale: ``cdg_l2`` is Eq. 6 exactly, so a λ taken from the paper acts at full strength. The paper gives
no formula for plain L2; the authors' code (``SimonDufLab/Maxwell_demon``, ``reg_fn``) writes both L2
and CDG-L2 with the same convention (CDG-L2 is L2 restricted to the positive weights), so ``l2`` is
Σ p² here too: the two are on the same scale and ``000`` Fig. 10 compares like with like. The
authors' code carries a ½ on both, so their ``reg_param`` is twice the λ here (``docs/demp.md``).

Targets:

- ``weights``:    the ``weight`` of every Conv / ConvTranspose / Linear layer, the classifier included
  (the first DemP paper regularizes "all weights"; the authors' ``masked_reg=all`` drops only biases
  and normalization parameters). Biases are excluded.
- ``norm_scale``: the scale γ (``weight``) of BatchNorm / InstanceNorm / LayerNorm / GroupNorm /
  RMSNorm layers that have one — the later DemP version's "L2(γ)" / "Lasso(γ)".
- ``all``:        every trainable parameter (the authors' code without a mask).

Only parameters with ``requires_grad=True`` are regularized. Pruning replaces parameter objects, so
the list must be collected again after every structural removal (:class:`Regularizer.refresh`).

Each tensor's term may carry a weight (:meth:`Regularizer.set_weights`): DemP's cost-aware penalty
(beyond the papers, :mod:`.costs`) weights a tensor by what one neuron of its group costs.

The penalty is a single custom autograd function over the cached list: the value is computed with
one ``torch._foreach_norm`` call and the backward writes λ·∂R/∂p with a few ``_foreach`` kernels, so
the per-step cost is a handful of kernel launches however many tensors there are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["REGULARIZERS", "TARGETS", "collect_params", "penalty", "reference_penalty", "Regularizer"]

REGULARIZERS = ("l2", "lasso", "cdg_l2", "cdg_lasso", "none")
TARGETS = ("weights", "norm_scale", "all")

_WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd)
_NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    nn.LayerNorm,
    nn.GroupNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


def collect_params(model: nn.Module, target: str) -> list[tuple[str, nn.Parameter]]:
    """Return ``(name, parameter)`` pairs that ``target`` regularizes, in ``named_parameters`` order."""
    if target not in TARGETS:
        raise ValueError(f"unknown regularization target {target!r}; choose one of {', '.join(TARGETS)}")
    if target == "all":
        return [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    layer_types = _WEIGHT_LAYERS if target == "weights" else _NORM_LAYERS
    chosen: dict[int, str] = {}
    for mod_name, module in model.named_modules():
        if isinstance(module, layer_types):
            weight = getattr(module, "weight", None)
            if isinstance(weight, nn.Parameter) and weight.requires_grad:
                chosen[id(weight)] = f"{mod_name}.weight" if mod_name else "weight"
    # named_parameters order (and de-duplication of shared parameters)
    return [(n, p) for n, p in model.named_parameters() if id(p) in chosen]


def _value(kind: str, params: Sequence[Tensor], weights: Sequence[float] | None = None) -> Tensor:
    """Σ_i w_i R(p_i) without autograd (w_i = 1 without ``weights``), as a 0-d float32/param-dtype tensor."""
    if kind in ("cdg_l2", "cdg_lasso"):
        params = torch._foreach_clamp_min(list(params), 0.0)
    order = 1 if kind in ("lasso", "cdg_lasso") else 2
    per_tensor = list(torch._foreach_norm(list(params), order))
    if len({n.dtype for n in per_tensor}) > 1:  # mixed-precision parameter lists
        per_tensor = [n.float() for n in per_tensor]
    norms = torch.stack(per_tensor)
    if order == 2:
        norms = norms.pow(2)
    if weights is not None:
        norms = norms * torch.tensor(list(weights), dtype=norms.dtype, device=norms.device)
    return norms.sum()


class _Penalty(torch.autograd.Function):
    """scale·R(params) with a hand-written foreach backward (the gradient of each R is elementwise)."""

    @staticmethod
    def forward(ctx, kind: str, scale: float, weights: tuple[float, ...] | None,
                *params: Tensor) -> Tensor:
        ctx.kind = kind
        ctx.scale = scale
        ctx.weights = weights
        ctx.save_for_backward(*params)
        return _value(kind, params, weights) * scale

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        params = list(ctx.saved_tensors)
        kind = ctx.kind
        g = grad_out * ctx.scale
        if kind in ("l2", "cdg_l2"):  # d(Σ p²)/dp = 2p
            g = 2 * g
        if kind == "l2":
            grads = torch._foreach_mul(params, g)
        elif kind == "lasso":
            grads = torch._foreach_sign(params)
            torch._foreach_mul_(grads, g)
        elif kind == "cdg_l2":
            grads = torch._foreach_clamp_min(params, 0.0)
            torch._foreach_mul_(grads, g)
        else:  # cdg_lasso: d max(p, 0)/dp = 1 for p > 0, 0 otherwise (torch's clamp convention at 0)
            grads = torch._foreach_clamp_min(params, 0.0)
            torch._foreach_sign_(grads)
            torch._foreach_mul_(grads, g)
        if ctx.weights is not None:
            torch._foreach_mul_(grads, list(ctx.weights))
        return (None, None, None, *grads)


def penalty(kind: str, params: Sequence[Tensor], scale: float = 1.0, weights: Sequence[float] | None = None) -> Tensor:
    """``scale · Σ_i w_i R_kind(p_i)`` as a differentiable 0-d tensor (w_i = 1 without ``weights``; 0
    without a graph when nothing applies)."""
    if kind not in REGULARIZERS:
        raise ValueError(f"unknown regularizer {kind!r}; choose one of {', '.join(REGULARIZERS)}")
    if weights is not None and len(weights) != len(params):
        raise ValueError(f"{len(weights)} penalty weights for {len(params)} tensors")
    if kind == "none" or not params or scale == 0.0:
        device = params[0].device if params else None
        return torch.zeros((), device=device)
    return _Penalty.apply(kind, float(scale), None if weights is None else tuple(float(w) for w in weights), *params)


def reference_penalty(kind: str, params: Sequence[Tensor], weights: Sequence[float] | None = None) -> Tensor:
    """Plain-autograd definition of each regularizer; the tests check :func:`penalty` against it."""
    per_tensor = {"l2": lambda p: (p * p).sum(), "lasso": lambda p: p.abs().sum(),
                  "cdg_l2": lambda p: p.clamp(min=0).pow(2).sum(), "cdg_lasso": lambda p: p.clamp(min=0).sum()}
    if kind == "none":
        return torch.zeros(())
    if kind not in per_tensor:
        raise ValueError(f"unknown regularizer {kind!r}")
    ws = [1.0] * len(params) if weights is None else list(weights)
    return sum(w * per_tensor[kind](p) for w, p in zip(ws, params, strict=True))


class Regularizer:
    """A regularizer bound to a model: caches the targeted parameters; :meth:`refresh` after pruning."""

    def __init__(self, model: nn.Module, kind: str, target: str) -> None:
        if kind not in REGULARIZERS:
            raise ValueError(f"unknown regularizer {kind!r}; choose one of {', '.join(REGULARIZERS)}")
        if target not in TARGETS:
            raise ValueError(f"unknown regularization target {target!r}; choose one of {', '.join(TARGETS)}")
        self.model = model
        self.kind = kind
        self.target = target
        self.names: list[str] = []
        self.params: list[nn.Parameter] = []
        self.weights: list[float] | None = None  # per-tensor weights (a cost-aware penalty); None: all 1
        self.refresh()

    def refresh(self) -> None:
        """Collect the targeted parameters again (call after every structural removal; the weights are
        dropped: set them again with :meth:`set_weights`)."""
        pairs = collect_params(self.model, self.target) if self.kind != "none" else []
        self.names = [n for n, _ in pairs]
        self.params = [p for _, p in pairs]
        self.weights = None

    def set_weights(self, weights: Sequence[float] | None) -> None:
        """Weight each tensor's term (one number per tensor of :attr:`names`, in order; None: all 1)."""
        if weights is not None and len(weights) != len(self.params):
            raise ValueError(f"{len(weights)} penalty weights for {len(self.params)} regularized tensors")
        self.weights = None if weights is None else [float(w) for w in weights]

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)

    def __call__(self, scale: float) -> Tensor:
        """``scale · R(params)``; a constant 0 when ``scale`` is 0 or the regularizer is ``none``."""
        if not self.params:
            try:
                device = next(self.model.parameters()).device
            except StopIteration:
                device = None
            return torch.zeros((), device=device)
        return penalty(self.kind, self.params, scale, self.weights)
