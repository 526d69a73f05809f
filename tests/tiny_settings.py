"""Tiny settings of every QC method: seconds to fit on 3 cases (the method tests, `benchmarks/same_answers.py`).

Plain data, importing nothing of segqc, so that any revision's code can be fitted with them.
"""

TINY = {
    "features": {"pairs_per_case": 3, "n_estimators": 20, "segmenter_epochs": 1},
    "cnn": {"epochs": 1, "pairs_per_case": 2, "batch_size": 4},
    "autoencoder": {"epochs": 1, "batch_size": 4},
    "model_uncertainty": {"n_samples": 2, "pairs_per_case": 1, "n_estimators": 10},
    "diffusion": {"size": 16, "channels": (8, 8), "train_steps": 2, "batch_size": 4, "timesteps": 50,
                  "ddim_steps": 2, "n_samples": 2},
    "nnqc": {"ae_channels": (8, 8), "unet_channels": (8, 16), "expert_channels": (8,), "context_dim": 16,
             "stage1_steps": 2, "stage2_steps": 2, "batch_size": 4, "pairs_per_case": 1, "n_samples": 2,
             "ddim_steps": 2},
    "rca": {"k": 2, "iterations": (5, 3), "shrink": (1,)},
}
