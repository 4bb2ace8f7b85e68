"""The dependency-graph analyzer: coupling groups, removal decisions, plan application.

* :mod:`.analyzer` — :class:`DependencyAnalyzer`: groups of one architecture state, blocking rules,
  decisions at every consumer, ``--min-channels`` / ``--round-to``;
* :mod:`.apply` — expanding a plan into per-layer actions, validating and executing them once,
  index maps for optimizer-state slicing (:class:`ApplyResult`);
* :mod:`.tp_compat` — every reach into torch-pruning's internals, scoped and version-checked.
"""

from __future__ import annotations

from .analyzer import ChannelGroup, DependencyAnalyzer, GroupItem
from .apply import Action, ApplyResult, execute_actions

__all__ = ["DependencyAnalyzer", "ChannelGroup", "GroupItem", "ApplyResult", "Action", "execute_actions"]
