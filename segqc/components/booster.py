"""A fitted LightGBM regressor rebuilt from its text model, refusing text LightGBM cannot read safely.

Bundles keep boosters as LightGBM's text model (`Booster.model_to_string`, no pickle);
`features` and `model_uncertainty` rebuild theirs with `booster_from_text`.
"""

from __future__ import annotations

import re

import numpy as np

__all__ = ["booster_from_text"]


class _BoosterRegressor:
    """The loaded booster behind the same ``predict`` as the fitted sklearn wrapper."""

    def __init__(self, booster):
        self.booster_ = booster

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.booster_.predict(X)


# A fitted LightGBM text model (`Booster.model_to_string`) ends its trees with this line.
_END_OF_TREES = "\nend of trees\n"
# per-tree arrays LightGBM reads: one value per leaf, or per internal node (num_leaves - 1)
_LEAF_ARRAYS = ("leaf_value", "leaf_weight", "leaf_count")
_NODE_ARRAYS = ("split_feature", "split_gain", "threshold", "decision_type", "left_child", "right_child",
                "internal_value", "internal_weight", "internal_count")
_REQUIRED_ARRAYS = ("leaf_value", "split_feature", "threshold", "decision_type", "left_child", "right_child")
_INT_KEYS = ("num_leaves", "max_feature_idx", "leaf_count", "split_feature", "decision_type", "left_child",
             "right_child", "internal_count")
_MAX_TREE_LINES = 22  # LightGBM reads at most this many lines of a tree and skips the rest
# numbers as LightGBM writes them; Python's int() and float() also take forms (1_000, "infinity") that its
# parser reads differently, which would make the counts checked here differ from the ones it reads
_INT = re.compile(r"-?\d+")
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|[-+]?(inf|nan)", re.IGNORECASE)


def booster_from_text(text) -> _BoosterRegressor:
    """Rebuild a LightGBM regressor from its text model, refusing text LightGBM cannot read safely.

    LightGBM's parser does not always fail with an exception on malformed text: it aborts the
    process on an error while parsing trees in parallel (as the ``tree_sizes`` header line asks),
    reads past the end of a truncated section or of an array shorter than ``num_leaves`` says,
    and follows child indices without bounds checks. So the trees are checked here first, and
    LightGBM gets the header without ``tree_sizes`` and the trees only (parsed one after the
    other, where its remaining errors are exceptions); the parameters section after the trees
    is not needed to predict.
    """
    import lightgbm as lgb

    end = text.find(_END_OF_TREES) if isinstance(text, str) else -1
    if end < 0 or not text.startswith("tree\n") or "\0" in text or "\r" in text:
        raise ValueError("the booster text is not a complete LightGBM model (it starts with 'tree' and holds "
                         "'end of trees')")
    head, *trees = re.split(r"^Tree=(.*)\n", text[: end + 1], flags=re.MULTILINE)
    # the header's parser is bounds-checked: only the fields the checks below need are read
    header = dict(line.split("=", 1) for line in head.split("\n") if "=" in line)
    if (header.get("num_class"), header.get("num_tree_per_iteration"), header.get("objective")) != (
            "1", "1", "regression"):
        raise ValueError("the booster is not a LightGBM single-output regression model")
    n_features = _values(header, "max_feature_idx", 1, "the booster header")[0] + 1
    for index, block in zip(trees[::2], trees[1::2]):
        where = f"booster tree {index}"
        _check_tree(_key_values(block, where), n_features, where)
    model = re.sub(r"^tree_sizes=.*\n", "", text[: end + len(_END_OF_TREES)], flags=re.MULTILINE)
    try:
        return _BoosterRegressor(lgb.Booster(model_str=model))
    except lgb.basic.LightGBMError as e:
        raise ValueError(f"LightGBM cannot read the booster text: {e}") from None


def _key_values(block: str, where: str) -> dict[str, str]:
    """A tree's ``key=value`` lines up to the first blank line, after which nothing may follow.

    LightGBM reads a tree line by line up to a blank line and scans each for "=" without a bound.
    """
    lines = block.split("\n")
    n = lines.index("") if "" in lines else len(lines)
    if any(lines[n:]) or n > _MAX_TREE_LINES or not all("=" in line for line in lines[:n]):
        raise ValueError(f"{where} is not a block of key=value lines")
    return dict(line.split("=", 1) for line in lines[:n])


def _values(kv: dict[str, str], key: str, count: int, where: str) -> list:
    """The ``count`` numbers under ``key``: LightGBM reads some arrays without checking their length."""
    parse, pattern = (int, _INT) if key in _INT_KEYS else (float, _FLOAT)
    tokens = kv.get(key, "").split(" ")
    if tokens == [""]:
        tokens = []
    if not all(pattern.fullmatch(t) for t in tokens):
        raise ValueError(f"{where}: {key} must hold {parse.__name__}s separated by single spaces")
    if len(tokens) != count:
        raise ValueError(f"{where}: {key} holds {len(tokens)} values, not {count}")
    return [parse(t) for t in tokens]


def _check_tree(kv: dict[str, str], n_features: int, where: str) -> None:
    """Array lengths, feature and child indices: what LightGBM trusts without checking."""
    n_leaves = _values(kv, "num_leaves", 1, where)[0]
    if n_leaves < 1 or kv.get("num_cat") != "0" or kv.get("is_linear", "0") != "0":
        raise ValueError(f"{where}: needs num_leaves ≥ 1, no categorical splits and no linear leaves")
    if n_leaves == 1:  # LightGBM reads nothing but the leaf value of a one-leaf tree
        _values(kv, "leaf_value", 1, where)
        return
    if missing := [k for k in _REQUIRED_ARRAYS if k not in kv]:
        raise ValueError(f"{where}: lacks {missing}")
    arrays = {k: _values(kv, k, n_leaves if k in _LEAF_ARRAYS else n_leaves - 1, where)
              for k in _LEAF_ARRAYS + _NODE_ARRAYS if k in kv}
    if any(not 0 <= f < n_features for f in arrays["split_feature"]) or any(
            not 0 <= d < 128 or d & 1 for d in arrays["decision_type"]):  # bit 0: a categorical split
        raise ValueError(f"{where}: splits on a feature out of range or on a categorical feature")
    # a child is a later internal node (index > its parent's, so traversal ends) or a leaf ~index
    for node, children in enumerate(zip(arrays["left_child"], arrays["right_child"])):
        if any(not (node < c < n_leaves - 1 if c >= 0 else ~c < n_leaves) for c in children):
            raise ValueError(f"{where}: node {node} has a child index out of range")
