"""The ablations' verdict arithmetic (tools/ablations.py): mean ± sd over seeds, matched pairs of
settings, and a verdict over the pairs that counts a difference only beyond the seed spread."""

from __future__ import annotations

import math
from typing import Any

from tool_common import mean_sd

__all__ = ["mean_sd", "differ", "combine", "pair", "values", "pairs_over", "grid"]


def differ(a: dict[str, Any], b: dict[str, Any], key: str) -> int:
    """+1 / -1: ``a[key]`` above / below ``b[key]`` beyond the seed spread (hypot of the sds), else 0."""
    diff = a[key + "_mean"] - b[key + "_mean"]
    spread = math.hypot(a[key + "_sd"], b[key + "_sd"])
    return 0 if abs(diff) <= max(spread, 1e-12) else (1 if diff > 0 else -1)


def combine(pairs: list[dict[str, Any]], what: str) -> dict[str, Any]:
    """A verdict over matched pairs, each with ``outcome`` +1 (for the claim), -1 (against) or 0."""
    n_for = sum(p["outcome"] > 0 for p in pairs)
    n_against = sum(p["outcome"] < 0 for p in pairs)
    n_tie = len(pairs) - n_for - n_against
    word = ("inconclusive (no matched pair was run)" if not pairs else "holds" if n_against == 0 < n_for >= n_tie
            else "does not hold" if n_for == 0 < n_against >= n_tie else "inconclusive (within seed spread)"
            if not (n_for and n_against) else "inconclusive (mixed: for in some pairs, against in others)")
    detail = f"{n_for} of {len(pairs)} matched pairs for, {n_against} against, {n_tie} within the seed spread"
    return {"claim": what, "verdict": word, "detail": detail, "pairs": pairs}


def pair(rows: list[dict[str, Any]], a: dict[str, Any], b: dict[str, Any],
         key: str = "sparsity") -> dict[str, Any] | None:
    """The matched pair of the rows whose factors include ``a`` and ``b``; outcome = differ(a, b)."""
    ra = next((r for r in rows if a.items() <= r["factors"].items()), None)
    rb = next((r for r in rows if b.items() <= r["factors"].items()), None)
    if ra is None or rb is None:
        return None
    return {"a": ra["label"], "b": rb["label"], "key": key, "outcome": differ(ra, rb, key),
            "a_mean": ra[key + "_mean"], "b_mean": rb[key + "_mean"],
            "accuracy_delta": ra["accuracy_mean"] - rb["accuracy_mean"],
            "per_seed_delta": [x - y for x, y in zip(ra["per_seed"][key], rb["per_seed"][key], strict=True)]}


def values(rows: list[dict[str, Any]], factor: str) -> list[Any]:
    """The distinct values of one factor, in the order the settings were listed."""
    return list(dict.fromkeys(r["factors"][factor] for r in rows if factor in r["factors"]))


def pairs_over(rows: list[dict[str, Any]], a: dict[str, Any], b: dict[str, Any], over: list[str],
               key: str = "sparsity") -> list[dict[str, Any]]:
    """Pairs ``a`` vs ``b`` at every combination of the factors in ``over`` (those that exist)."""
    found = [pair(rows, {**a, **c}, {**b, **c}, key) for c in grid(**{f: values(rows, f) for f in over})]
    return [p for p in found if p is not None]


def grid(**axes: list[Any]) -> list[dict[str, Any]]:
    combos: list[dict[str, Any]] = [{}]
    for name, vals in axes.items():
        combos = [{**c, name: v} for c in combos for v in vals]
    return combos
