"""Registry of QC methods: the single source of truth for names (imports no torch).

A new method is one module in this package plus one line here.
"""

from __future__ import annotations

import importlib

from segqc.utils import look_up_option

__all__ = ["METHODS", "get_method_class", "make_method"]

# name → "module:Class"; classes are imported only when used, so listing is cheap
METHODS: dict[str, str] = {
    "features": "segqc.methods.features:FeatureRegressor",
    "cnn": "segqc.methods.cnn:CNNRegressor",
    "autoencoder": "segqc.methods.autoencoder:MaskAutoencoder",
    "model_uncertainty": "segqc.methods.model_uncertainty:ModelUncertainty",
    "diffusion": "segqc.methods.diffusion_ensemble:DiffusionEnsemble",
    "nnqc": "segqc.methods.nnqc:NNQC",
    "rca": "segqc.methods.rca:RCA",
}


def get_method_class(name: str):
    target = METHODS[look_up_option(name, list(METHODS), "method")]
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


def make_method(name: str, **params):
    return get_method_class(name)(**params)
