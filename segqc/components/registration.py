"""Intensity-based image registration with SimpleITK (2D and 3D), for atlas-based QC.

`register` aligns a *moving* image to a *fixed* one in stages — ``rigid``, ``affine``
and/or ``bspline`` — each maximising Mattes mutual information over a small
multi-resolution pyramid; every stage starts from the composition of the previous ones,
so the result is one transform mapping fixed-space points to moving-space points.
`warp_labels` then brings a label map of the moving grid onto the fixed grid (each
label's indicator resampled linearly, then argmax, which keeps thin parts better than
nearest neighbour).

Arrays are numpy ``(Y, X)`` / ``(Z, Y, X)`` with ``spacing`` (mm) in the same axis order;
the origin is 0 and the direction the identity (model space), so no geometry beyond
spacing is involved. SimpleITK wants ``(x, y[, z])`` order: the reversal happens here only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segqc.utils import look_up_option

__all__ = ["STAGES", "register", "warp_labels", "warp_image", "to_sitk"]

STAGES = ("rigid", "affine", "bspline")


def to_sitk(array: np.ndarray, spacing: Sequence[float]):
    """A SimpleITK image of a numpy array ``(Y, X)`` / ``(Z, Y, X)`` with spacing in array order."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(array))
    img.SetSpacing([float(s) for s in reversed(tuple(spacing))])
    return img


def _linear_transform(kind: str, dim: int):
    import SimpleITK as sitk

    if kind == "rigid":
        return sitk.Euler2DTransform() if dim == 2 else sitk.Euler3DTransform()
    return sitk.AffineTransform(dim)


def _centre(img) -> tuple[float, ...]:
    size = np.asarray(img.GetSize(), dtype=float)
    return tuple(img.TransformContinuousIndexToPhysicalPoint(((size - 1) / 2).tolist()))


def register(fixed: np.ndarray, moving: np.ndarray, fixed_spacing: Sequence[float],
             moving_spacing: Sequence[float], *, stages: Sequence[str] = ("affine", "bspline"),
             iterations: Sequence[int] | int = (60, 30), shrink: Sequence[int] = (2, 1), bins: int = 32,
             sampling: float = 0.25, mesh: int = 4, bspline_shrink: Sequence[int] | None = None,
             threads: int = 1, seed: int = 0):
    """Register ``moving`` onto ``fixed`` (single-channel float arrays of the same dimension).

    Args:
        fixed, moving: ``(Y, X)`` or ``(Z, Y, X)`` intensity arrays (luminance for RGB).
        fixed_spacing, moving_spacing: mm, array order.
        stages: any ordered subset of ``rigid``, ``affine``, ``bspline``.
        iterations: optimiser iterations per stage and per pyramid level (one int for all).
        shrink: pyramid shrink factors, coarse to fine (Gaussian sigma = factor / 2 voxels, none at 1).
        bins: Mattes mutual-information histogram bins.
        sampling: fraction of fixed voxels sampled (random, seeded) for the metric.
        mesh: B-spline control-grid cells per axis (the grid has ``mesh + 3`` nodes).
        bspline_shrink: pyramid of the B-spline stage (default: ``shrink``); e.g. ``(2,)``
            stops it at half resolution, ~5× faster in 3D.
        threads: ITK threads for this registration (1 when atlases run in parallel).
        seed: seed of the metric's voxel sampling (results are reproducible).

    Returns:
        ``(transform, metric)``: a SimpleITK transform mapping fixed points to moving
        points, and the final Mattes MI of the last stage (negative; lower is better).

    Raises:
        ValueError: unknown stage, mismatched dimensions, or non-positive settings.
    """
    import SimpleITK as sitk

    stages = [look_up_option(s, STAGES, "registration stage") for s in stages]
    if not stages:
        raise ValueError("stages must name at least one of rigid, affine, bspline, got []")
    its = [int(iterations)] * len(stages) if np.isscalar(iterations) else [int(i) for i in iterations]
    if len(its) != len(stages) or any(i < 1 for i in its):
        raise ValueError(f"iterations must be one positive int or one per stage {stages}, got {iterations}")
    if fixed.ndim != moving.ndim or fixed.ndim not in (2, 3):
        raise ValueError(f"fixed and moving must both be 2D or 3D, got {fixed.shape} and {moving.shape}")
    if not 0 < sampling <= 1:
        raise ValueError(f"sampling must be in (0, 1], got {sampling}")
    shrink = [int(s) for s in shrink] or [1]
    dim = fixed.ndim
    # a pyramid level may not shrink an axis below a few voxels (thin 3D stacks, small photos)
    min_side = min(min(fixed.shape), min(moving.shape))
    def clamp(factors):
        return [max(1, min(int(s), min_side // 4)) for s in factors] or [1]

    shrink = clamp(shrink)
    f_img = to_sitk(fixed.astype(np.float32), fixed_spacing)
    m_img = to_sitk(moving.astype(np.float32), moving_spacing)

    done: list = []
    metric = float("nan")
    for stage, n_it in zip(stages, its):
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=int(bins))
        if sampling < 1:
            reg.SetMetricSamplingStrategy(reg.RANDOM)
            # SimpleITK reads seed 0 as "wall clock": shift by one to stay reproducible
            reg.SetMetricSamplingPercentage(float(sampling), int(seed) % (2**31 - 2) + 1)
        reg.SetInterpolator(sitk.sitkLinear)
        levels = shrink if stage != "bspline" or bspline_shrink is None else clamp(bspline_shrink)
        reg.SetShrinkFactorsPerLevel(levels)
        reg.SetSmoothingSigmasPerLevel([0.0 if s == 1 else s / 2.0 for s in levels])
        reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
        reg.SetNumberOfThreads(int(threads))
        if stage == "bspline":
            tx = sitk.BSplineTransformInitializer(f_img, [int(mesh)] * dim, 3)
            # L-BFGS (libLBFGS): few metric evaluations per useful step for ~10² – 10³ B-spline
            # parameters. Not ITK's L-BFGS-B: its netlib code keeps static state and corrupts
            # memory when atlases are registered in parallel threads.
            reg.SetOptimizerAsLBFGS2(solutionAccuracy=1e-5, numberOfIterations=n_it, hessianApproximateAccuracy=5,
                                     lineSearchMaximumEvaluations=10)
        else:
            tx = _linear_transform(stage, dim)
            if not done:
                # first stage: centres aligned, the rest left to the optimiser
                tx = sitk.CenteredTransformInitializer(f_img, m_img, tx,
                                                       sitk.CenteredTransformInitializerFilter.GEOMETRY)
            else:
                tx.SetCenter(_centre(f_img))
            reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=n_it,
                                                         relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
            reg.SetOptimizerScalesFromPhysicalShift()
        if done:
            reg.SetMovingInitialTransform(sitk.CompositeTransform(list(done)))
        reg.SetInitialTransform(tx, inPlace=True)
        try:
            reg.Execute(f_img, m_img)
            metric = float(reg.GetMetricValue())
        except RuntimeError:
            # e.g. too few samples overlap after a wild step: keep the stages that worked
            continue
        done.append(tx)
    if not done:
        done.append(sitk.CenteredTransformInitializer(f_img, m_img, _linear_transform("rigid", dim),
                                                      sitk.CenteredTransformInitializerFilter.GEOMETRY))
    # full map x ↦ T1(T2(…Tn(x))): a composite applies its last transform first
    return sitk.CompositeTransform(done), metric


def warp_image(moving: np.ndarray, moving_spacing: Sequence[float], transform, fixed_shape: Sequence[int],
               fixed_spacing: Sequence[float], *, default: float = 0.0) -> np.ndarray:
    """Resample an intensity array onto the fixed grid (linear); outside the moving image → ``default``."""
    import SimpleITK as sitk

    ref = to_sitk(np.zeros(tuple(fixed_shape), dtype=np.uint8), fixed_spacing)
    out = sitk.Resample(to_sitk(moving.astype(np.float32), moving_spacing), ref, transform, sitk.sitkLinear,
                        float(default), sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def warp_labels(mask: np.ndarray, moving_spacing: Sequence[float], transform, fixed_shape: Sequence[int],
                fixed_spacing: Sequence[float], labels: Sequence[int]) -> np.ndarray:
    """Resample a label map onto the fixed grid: linear one-hot per label, then argmax.

    A voxel gets label ``k`` when ``k``'s interpolated indicator is the largest and above
    0.5 minus the others (ties and anything outside the moving image → background 0).
    Returns ``fixed_shape`` with ``mask``'s dtype.
    """
    labels = [int(k) for k in labels]
    shape = tuple(int(s) for s in fixed_shape)
    if not labels:
        return np.zeros(shape, dtype=mask.dtype)
    probs = np.stack([warp_image((mask == k).astype(np.float32), moving_spacing, transform, shape, fixed_spacing)
                      for k in labels])
    bg = 1.0 - probs.sum(0)
    full = np.concatenate([bg[None], probs])
    values = np.asarray([0] + labels, dtype=mask.dtype)
    return values[full.argmax(0)]
