"""The removal plan: which channels of which coupling group are removed, in original numbering.

A plan is plain JSON (``plan.json`` in a compressed directory). Replaying it on a freshly built model
of the same architecture reproduces the pruned architecture exactly; the weights come from
``weights.safetensors``. Plans made at different times during training compose into one plan in the
original numbering (:meth:`PruningPlan.compose`), so a model pruned many times is still rebuilt by a
single replay.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointError
from .fileio import atomic_write_json

PLAN_SCHEMA = "demp.plan/1"


@dataclass
class GroupRemoval:
    """Channels removed from one coupling group.

    ``root`` names the Conv/Linear whose output channels define the group's numbering; ``size`` is
    that number of channels before removal and ``removed`` the removed indices (sorted, unique,
    within ``range(size)``). ``members`` lists the coupled layers, for reading only.
    """

    root: str
    size: int
    removed: list[int] = field(default_factory=list)
    members: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.removed = sorted(int(i) for i in self.removed)
        if len(set(self.removed)) != len(self.removed):
            raise ValueError(f"group {self.root}: duplicate channel indices in removal {self.removed}")
        if self.removed and (self.removed[0] < 0 or self.removed[-1] >= self.size):
            raise ValueError(f"group {self.root}: channel index out of range [0, {self.size}) in {self.removed}")
        if len(self.removed) >= self.size:
            raise ValueError(f"group {self.root}: a plan may not remove every channel ({self.size})")

    @property
    def after(self) -> int:
        return self.size - len(self.removed)

    @property
    def kept(self) -> list[int]:
        removed = set(self.removed)
        return [i for i in range(self.size) if i not in removed]


@dataclass
class PruningPlan:
    """A JSON-serializable removal plan plus what is needed to rebuild the model it applies to."""

    groups: list[GroupRemoval] = field(default_factory=list)
    criterion: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] | None = None  # ModelSpec.to_dict()
    input_shape: list[int] | None = None  # one sample's shape, without the batch dimension
    source: dict[str, Any] = field(default_factory=dict)  # checkpoint path, sha256
    masks: list[str] = field(default_factory=list)  # names of weight tensors carrying stripping masks
    versions: dict[str, str] = field(default_factory=dict)
    schema: str = PLAN_SCHEMA

    # ------------------------------------------------------------------ queries
    @property
    def removed_channels(self) -> int:
        return sum(len(g.removed) for g in self.groups)

    @property
    def channels_before(self) -> int:
        """Channels of the groups this plan touches, before removal (neuron counts are the analyzer's)."""
        return sum(g.size for g in self.groups)

    @property
    def channels_after(self) -> int:
        return sum(g.after for g in self.groups)

    def group(self, root: str) -> GroupRemoval | None:
        for g in self.groups:
            if g.root == root:
                return g
        return None

    def is_empty(self) -> bool:
        return self.removed_channels == 0

    def removal_hash(self) -> str:
        """sha256 of the removals alone (root, size, removed); equal plans hash equally on every rank."""
        canonical = [[g.root, g.size, g.removed] for g in sorted(self.groups, key=lambda g: g.root)]
        return hashlib.sha256(json.dumps(canonical, separators=(",", ":")).encode()).hexdigest()

    # ------------------------------------------------------------------ composition
    def compose(self, later: PruningPlan) -> PruningPlan:
        """Return one plan equal to applying ``self`` and then ``later`` (whose numbering is post-``self``).

        Everything but the removals is taken from ``later`` where it is set, else from ``self``.
        """
        by_root = {g.root: g for g in self.groups}
        merged: dict[str, GroupRemoval] = {g.root: GroupRemoval(g.root, g.size, list(g.removed), list(g.members))
                                           for g in self.groups}
        for g in later.groups:
            first = by_root.get(g.root)
            if first is None:
                merged[g.root] = GroupRemoval(g.root, g.size, list(g.removed), list(g.members))
                continue
            if g.size != first.after:
                raise ValueError(
                    f"cannot compose plans: group {g.root} has {first.after} channels after the first plan "
                    f"but the second plan expects {g.size}"
                )
            kept = first.kept
            merged[g.root] = GroupRemoval(
                g.root, first.size, sorted(first.removed + [kept[i] for i in g.removed]), list(first.members)
            )
        order = [g.root for g in self.groups] + [g.root for g in later.groups if g.root not in by_root]
        return PruningPlan(
            groups=[merged[r] for r in order],
            criterion=later.criterion or self.criterion,
            model=later.model or self.model,
            input_shape=later.input_shape or self.input_shape,
            source=later.source or self.source,
            masks=sorted(set(self.masks) | set(later.masks)),
            versions=later.versions or self.versions,
        )

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["plan_hash"] = self.removal_hash()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningPlan:
        if not isinstance(data, dict) or data.get("schema") != PLAN_SCHEMA:
            raise CheckpointError(
                f"not a demp plan (expected schema {PLAN_SCHEMA!r}, found "
                f"{data.get('schema') if isinstance(data, dict) else type(data).__name__!r})"
            )
        try:
            groups = [GroupRemoval(**g) for g in data.get("groups", [])]
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"plan.json is corrupt: {exc}") from exc
        kwargs = {k: data[k] for k in ("criterion", "model", "input_shape", "source", "masks", "versions") if k in data}
        plan = cls(groups=groups, **kwargs)
        stored = data.get("plan_hash")
        if stored is not None and stored != plan.removal_hash():
            raise CheckpointError("plan.json is corrupt: its removals do not match its plan_hash")
        return plan

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> PruningPlan:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{path} not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{path} is not valid JSON ({exc}); the compressed directory is damaged") from None
        return cls.from_dict(data)

    def summary(self) -> str:
        """A readable table: one line per group with removals."""
        lines = [f"{'group root':<40} {'before':>7} {'after':>7}"]
        for g in self.groups:
            lines.append(f"{g.root:<40} {g.size:>7} {g.after:>7}")
        lines.append(f"{'total':<40} {self.channels_before:>7} {self.channels_after:>7}")
        return "\n".join(lines)
