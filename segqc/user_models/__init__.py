"""The user's segmentation model behind one small interface (`SegModel`).

QC methods that need the model itself (MC dropout, test-time augmentation, deep
ensembles: `segqc.components.uncertainty`) only see a `SegModel`: image on its own grid in,
logits in model space, class probabilities back on the image's grid. Adapters:

* ``monai``: a MONAI network rebuilt from ``config.json`` (``class`` + constructor
  ``kwargs``) and a ``state_dict`` file (``torch.load(weights_only=True)``: no code runs);
* ``torchscript``: a ``torch.jit`` file;
* ``onnx``: an ONNX file run by onnxruntime (no dropout at inference: TTA / ensembles only);
* in memory: any ``torch.nn.Module`` (`TorchModel`) or any object with a
  ``predict(image) -> probabilities`` method (`CallableModel`, e.g. an nnU-Net predictor).

A bundle refers to a model by path + kind + sha256 (`model_ref`), never by pickled code.
"""

from segqc.user_models.base import MODEL_KINDS, CallableModel, Preprocessing, SegModel, TorchModel
from segqc.user_models.loaders import load_model, model_ref, models_from_refs

__all__ = ["SegModel", "TorchModel", "CallableModel", "Preprocessing", "MODEL_KINDS", "load_model", "model_ref",
           "models_from_refs"]
