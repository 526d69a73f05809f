"""Network weights ↔ named arrays, the form bundles store them in (safetensors, no pickle)."""

from __future__ import annotations

import numpy as np

__all__ = ["net_to_arrays", "load_net_arrays"]


def net_to_arrays(net, prefix: str = "") -> dict[str, np.ndarray]:
    """A network's state as float32 arrays named ``prefix + parameter name``."""
    return {f"{prefix}{k}": v.detach().cpu().float().numpy() for k, v in net.state_dict().items()}


def load_net_arrays(net, arrays: dict[str, np.ndarray], prefix: str = "", what: str = "network"):
    """Load arrays written by `net_to_arrays` into ``net`` (dtype and shape follow ``net``); returns it.

    Arrays named with other prefixes belong to other networks and are ignored; a missing or
    unexpected weight under ``prefix`` is an error naming ``what``.
    """
    import torch

    ref = net.state_dict()
    mine = {k[len(prefix):] for k in arrays if k.startswith(prefix)}
    missing, unexpected = sorted(set(ref) - mine), sorted(mine - set(ref))
    if missing or unexpected:
        raise ValueError(f"{what} weights do not match the network: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    net.load_state_dict({k: torch.from_numpy(np.asarray(arrays[prefix + k])).to(v.dtype).reshape(v.shape)
                         for k, v in ref.items()})
    return net
