import math

import numpy as np
import pytest
import torch

from segqc import metrics
from segqc.data import read_manifest


def test_dice_by_hand():
    a = np.zeros((4, 4), np.uint8)
    b = np.zeros((4, 4), np.uint8)
    a[0, :2] = 1  # 2 px
    b[0, 1:4] = 1  # 3 px, overlap 1
    assert metrics.binary_dice(a, b) == pytest.approx(2 * 1 / 5)


def test_empty_conventions():
    z = np.zeros((5, 5), np.uint8)
    one = z.copy()
    one[2, 2] = 1
    assert metrics.binary_dice(z, z) == 1.0
    assert metrics.binary_dice(one, z) == 0.0
    assert metrics.binary_hd95(z, z, (1, 1)) == 0.0
    assert math.isnan(metrics.binary_hd95(one, z, (1, 1)))
    assert metrics.dice(z, z) == 1.0 and metrics.hd95(z, z, (1, 1)) == 0.0


def test_hd95_spacing_in_mm():
    a = np.zeros((1, 20, 20), np.uint8)
    b = np.zeros((1, 20, 20), np.uint8)
    a[0, 5:10, 5:10] = 1
    b[0, 5:10, 8:13] = 1  # shifted by 3 voxels along x
    assert metrics.binary_hd95(a, b, (1, 1, 1)) == pytest.approx(3.0)
    assert metrics.binary_hd95(a, b, (1, 1, 2.5)) == pytest.approx(7.5)
    with pytest.raises(ValueError, match="spacing"):
        metrics.binary_hd95(a, b, (1, 1))


def test_per_class_and_mean():
    a = np.array([[1, 1, 2, 0]])
    b = np.array([[1, 0, 2, 2]])
    d = metrics.dice_per_class(a, b)
    assert d == {1: pytest.approx(2 / 3), 2: pytest.approx(2 / 3)}
    assert metrics.dice(a, b) == pytest.approx(2 / 3)
    assert metrics.mean_foreground({1: float("nan"), 2: 2.0}) == 2.0


@pytest.mark.parametrize("dataset", ["hippocampus", "kvasir"])
def test_agrees_with_monai(sample, dataset):
    """The embedded candidates (real network predictions): |ΔDice| < 1e-6, |ΔHD95| < 0.01 mm."""
    from monai.metrics import compute_dice, compute_hausdorff_distance

    for ref in read_manifest(sample / dataset / "candidates.csv"):
        case = ref.load()
        labels = [1, 2] if dataset == "hippocampus" else [1]
        n = len(labels) + 1

        def onehot(m):
            t = torch.nn.functional.one_hot(torch.from_numpy(m.astype(np.int64)), n)
            return t.movedim(-1, 0)[None].float()

        dm = compute_dice(onehot(case.mask), onehot(case.truth), include_background=False)[0].numpy()
        hm = compute_hausdorff_distance(onehot(case.mask), onehot(case.truth), include_background=False,
                                        percentile=95, spacing=list(case.spacing))[0].numpy()
        d = metrics.dice_per_class(case.mask, case.truth, labels)
        h = metrics.hd95_per_class(case.mask, case.truth, case.spacing, labels)
        for i, k in enumerate(labels):
            assert abs(d[k] - dm[i]) < 1e-6
            assert abs(h[k] - hm[i]) < 0.01
        # and with the benchmark's own recorded Dice
        assert metrics.dice(case.mask, case.truth, labels) == pytest.approx(float(ref.extra["dice"]), abs=1e-6)
