"""Model-made training pairs for `fit`: candidates that look like a real model's failures.

Corruptions of expert masks (`segqc.methods.base.make_training_pairs`) teach what bad
masks look like in general; these teach what a *network's* bad masks look like:

* ``segmenter_pairs``: segqc's own cross-fitted reference segmenter, its snapshots at
  early epochs and at the end, each predicting reference cases it never saw; and the
  trained segmenter on held-out cases as simulated new sites acquire them
  (`segqc.data.acquisition`): a good network's failures at an unfamiliar site, which QC
  must not mistake for successes; and networks of *other* architectures
  (`outsider_pairs`), cross-fitted beside it on the same cases, whose masks show the
  regressors and the calibration how a network unlike segqc's own fails;
* ``model_pairs``: the user's own model on the reference cases;
* ``manifest_pairs``: a manifest of the user's (candidate, expert mask) pairs.

Each returns the pairs of the fitting part and of the held-out calibration part.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from segqc import ui
from segqc.data.case import Case
from segqc.methods.base import TrainingPair

__all__ = ["default_outsiders", "manifest_pairs", "mask_on_grid", "model_pairs", "outsider_pairs", "segmenter_pairs",
           "simulated_cases", "site_pairs"]

Split = tuple[list[TrainingPair], list[TrainingPair]]

# an outsider architecture is cross-fitted over this many networks: each fitting case gets one that never saw it
OUTSIDER_FOLDS = 2
# epochs after which each outsider network also segments the cases it does not train on: an unfamiliar
# architecture's early failures (smooth, plausible blobs), not only its trained network's
OUTSIDER_SNAPSHOTS = (3, 8)


def default_outsiders(ndim: int) -> tuple[str, ...]:
    """The outsider architectures of a fit whose plan has ``ndim`` dimensions: a SegResNet (2D, slice by slice,
    unlike segqc's UNets), and for 3D images also a volumetric UNet. Volumetric data is mostly segmented by 3D
    networks (nnU-Net's default configuration for it is 3D), whose mistakes hold from slice to slice; every
    other network of the fit sees one slice at a time, and QC would otherwise never see such failures."""
    return ("segresnet", "unet3d") if ndim == 3 else ("segresnet",)


def _by_part(pairs: list[TrainingPair], cal_ids: set[str]) -> Split:
    fit = [p for p in pairs if p.reference_id not in cal_ids]
    return fit, [p for p in pairs if p.reference_id in cal_ids]


def _report(what: str, pairs: Sequence[TrainingPair], labels, started: float) -> None:
    d = [float(np.mean(p.true_dice(labels))) for p in pairs]
    if d:
        ui.console().print(f"  {what}: {len(d)} pairs, Dice mean {np.mean(d):.3f} (range {np.min(d):.2f}–"
                           f"{np.max(d):.2f}) in {time.time() - started:.0f} s", highlight=False)


def manifest_pairs(cases: Sequence[Case], cal_ids: set[str]) -> Split:
    """Pairs from manifest rows (``mask`` = candidate, ``truth`` = expert mask).

    The reference case is named by a ``reference_id`` column, else by the row's id as
    written (``source_id``: repeated ids are made unique when listed), else the row's id.
    """
    pairs = []
    for c in cases:
        if c.truth is None:
            raise ValueError(f"extra pair {c.case_id} has no truth mask")
        ref_id = str(c.meta.get("reference_id") or c.meta.get("source_id") or c.case_id)
        pairs.append(TrainingPair(Case(ref_id, c.image, c.truth, c.geometry, meta=c.meta), c.mask, "manifest"))
    return _by_part(pairs, cal_ids)


def model_pairs(model, fit_cases: Sequence[Case], cal_cases: Sequence[Case], plan) -> Split:
    """The user's model on the reference cases: its mask of each, with the expert mask."""
    t0 = time.time()
    fit = [TrainingPair(c, model.predict_mask(c.image), "user_model") for c in fit_cases]
    cal = [TrainingPair(c, model.predict_mask(c.image), "user_model") for c in cal_cases]
    _report("segmentation model on the reference cases", fit + cal, plan.labels, t0)
    return fit, cal


def mask_on_grid(proba_ms: np.ndarray, props: dict, plan) -> np.ndarray:
    """A network's model-space probabilities resampled to the case's grid, then argmax (as nnU-Net exports
    its predictions): smooth edges like a user's model's, not the model grid's staircase."""
    from segqc.data.labels import to_labels
    from segqc.plan.preprocess import invert_map

    return to_labels(invert_map(proba_ms, props).argmax(0), plan.labels)


def segmenter_pairs(fit_cases: Sequence[Case], cal_cases: Sequence[Case], plan, rng: np.random.Generator,
                    device: str, params: dict, simulated_sites: int = 0):
    """Train the cross-fitted reference segmenter; its snapshots' predictions become candidates.

    Returns the fitted segmenter (the methods may use it too) and the pairs. Every fitting
    case is predicted by the folds that did not train on it, every held-out case by all.
    With ``simulated_sites``, the trained segmenter also predicts every held-out case as
    each of that many simulated sites acquires it (`site_pairs`): calibration pairs only,
    since no method may train on an image whose original a segmenter fold has seen. The
    networks of ``params["outsider_architectures"]`` (default: `default_outsiders`; ``[]``: none)
    add their masks of the cases they never trained on (`outsider_pairs`).
    """
    from segqc.components.segmenter import ARCHITECTURES, VOLUMETRIC, CrossFittedSegmenter
    from segqc.data.labels import to_index
    from segqc.plan.preprocess import preprocess

    t0 = time.time()
    console = ui.console()
    ms_fit = [preprocess(c, plan) for c in fit_cases]
    ms_cal = {c.case_id: preprocess(c, plan) for c in cal_cases}
    params = dict(params)
    snapshots = tuple(params.pop("snapshot_epochs", (1, 2, 3, 5, 8, 13, 21, 34, 55)))
    outsiders = params.pop("outsider_architectures", default_outsiders(plan.ndim))
    outsiders = (outsiders,) if isinstance(outsiders, str) else tuple(outsiders)
    outsider_appearance = bool(params.pop("outsider_appearance", False))
    if set(outsiders) - set(ARCHITECTURES):  # said now, not after the segmenter's ten minutes
        raise ValueError(f"segmenter.outsider_architectures must be among {list(ARCHITECTURES)}, "
                         f"got {list(outsiders)}")
    architectures = params.get("architectures", ())
    architectures = (architectures,) if isinstance(architectures, str) else tuple(architectures)
    volumetric = [a for a in (*outsiders, *architectures) if a in VOLUMETRIC]
    if volumetric and plan.ndim != 3:
        raise ValueError(f"segmenter architectures {volumetric} see whole volumes: they need a 3D plan, and this "
                         "one is 2D")
    seg = CrossFittedSegmenter(**{"device": device, **params})
    props = {c.case_id: p for c, (_, _, p) in zip(fit_cases, ms_fit)} | {k: v[2] for k, v in ms_cal.items()}

    def render(case_id: str, proba_ms: np.ndarray) -> np.ndarray:
        return mask_on_grid(proba_ms, props[case_id], plan)

    # the segmenter's classes are label indices 0..L, whatever the label values
    data = [(im, to_index(mk, plan.labels)) for im, mk, _ in ms_fit]
    cal_images = {cid: im for cid, (im, _, _) in ms_cal.items()}
    seg.fit(data, len(plan.labels), rng, progress=lambda msg: console.print(f"  {msg}", highlight=False),
            case_ids=[c.case_id for c in fit_cases], snapshot_epochs=snapshots, predict_on=cal_images, render=render)

    fit_pairs, cal_pairs = (_snapshot_pairs(seg.snapshot_masks_, cases, lambda tag: f"segmenter:{tag}")
                            for cases in (fit_cases, cal_cases))
    sites: list = []
    moved_cal: list[Case] = []
    if simulated_sites:
        sites, moved_cal = simulated_cases(cal_cases, rng, simulated_sites)
        cal_pairs += site_pairs(seg, moved_cal, plan)
    outsider_history = []
    if outsiders:  # after the sites: each spawns a child of rng, and the sites' stays the one it was
        more_fit, more_cal, outsider_history = outsider_pairs(seg, outsiders, data, fit_cases, cal_images, cal_cases,
                                                              plan, rng, render, sites=sites, moved_cal=moved_cal,
                                                              appearance=outsider_appearance)
        fit_pairs, cal_pairs = fit_pairs + more_fit, cal_pairs + more_cal
    seg.snapshot_masks_ = {}  # not needed any more; keeps memory and the bundle small
    # how good segqc's own segmenter is on reference cases it never trained on (all folds, as at scoring)
    from segqc.metrics import dice

    held = [dice(seg.predict_proba(im).argmax(0).astype(np.uint8), to_index(mk, plan.labels),
                 list(range(1, len(plan.labels) + 1))) for im, mk, _ in ms_cal.values()]
    seg.report_ = {"heldout_dice_mean": float(np.mean(held)) if held else float("nan"), "heldout_cases": len(held),
                   "training": seg.history_, "outsiders": outsider_history}
    epochs = [h["epochs"] for h in seg.history_]
    console.print(f"  reference segmenter: Dice {seg.report_['heldout_dice_mean']:.3f} on the {len(held)} held-out "
                  f"reference cases (epochs per fold network: {epochs} of {seg.epochs})", highlight=False)
    capped = sum(h["epochs"] < seg.epochs for h in seg.history_)
    if capped:  # a slower or busier machine trains a weaker judge, and every QC answer rests on it
        console.print(f"  [yellow]note[/]: the time budget (segmenter.max_minutes = {seg.max_minutes:g}) cut "
                      f"{capped} of {len(seg.history_)} fold networks short of {seg.epochs} epochs; on a slower "
                      "or busier machine the same fit trains a weaker reference segmenter, and QC is only as "
                      "good as it: `--set segmenter.max_minutes=…` gives it its full schedule", highlight=False)
    _report(f"reference segmenter: {len(fit_pairs)} + {len(cal_pairs)} model-made bad masks", fit_pairs,
            plan.labels, t0)
    return seg, fit_pairs, cal_pairs


def _snapshot_pairs(masks: dict[str, list[tuple[str, np.ndarray]]], cases: Sequence[Case],
                    source) -> list[TrainingPair]:
    """A network's snapshot masks (``snapshot_masks_``: per case id, ``(tag, mask)``) of ``cases`` as pairs,
    each named ``source(tag)``."""
    return [TrainingPair(c, mask, source(tag)) for c in cases for tag, mask in masks.get(c.case_id, [])]


def simulated_cases(cases: Sequence[Case], rng: np.random.Generator, n_sites: int) -> tuple[list, list[Case]]:
    """``cases`` as ``n_sites`` simulated sites acquire them: the sites, and each site's copy of every case.

    Each site is one fixed draw of acquisition changes (`segqc.data.acquisition.draw_sites`,
    severities 1/n … 1) applied to every case, so that its pairs form one group, as a real
    site's batch does: the calibration sees how QC errs on a whole unfamiliar site. A
    changed case keeps its reference id and expert mask (the changes leave it in place);
    ``meta["site"]`` names the site. The sites are drawn from a child of ``rng``, so adding
    them leaves every other random draw of the fit as it was.
    """
    from segqc.data.acquisition import draw_sites

    rng = rng.spawn(1)[0]
    sites = draw_sites(n_sites, cases[0].n_channels if cases else 1, rng)
    return sites, [_acquired(site, c, rng) for site in sites for c in cases]


def _acquired(site, case: Case, rng: np.random.Generator) -> Case:
    """``case`` as ``site`` acquires it: its id and expert mask, the changed image, ``meta["site"]``."""
    from dataclasses import replace

    image = site.acquire(case.image, np.random.default_rng(rng.integers(1 << 31)))  # the noise differs per image
    return replace(case, image=image, meta={**case.meta, "site": site.name})


def _predict_moved(net, moved: Sequence[Case], plan, description: str, fold_of) -> list[np.ndarray]:
    """``net``'s masks of simulated sites' copies of cases, each by its network ``fold_of(case)``."""
    from segqc.plan.preprocess import preprocess

    masks = []
    for c in ui.track(list(moved), description):
        image_ms, _, props = preprocess(c.with_mask(None), plan)
        masks.append(mask_on_grid(net.predict_proba(image_ms, fold=fold_of(c)), props, plan))
    return masks


def site_pairs(seg, moved: Sequence[Case], plan) -> list[TrainingPair]:
    """The trained segmenter ``seg`` on simulated sites' copies of held-out cases (`simulated_cases`): pairs of
    the changed image, the segmenter's mask of it and the expert mask, one group per site.

    Held-out cases only: a fitting case's one fair maker, the fold network that did not train
    on it, is also its judge in training, and a candidate judged by its own maker looks
    perfect whatever its Dice (the outsiders make such pairs instead). Each case is segmented by one
    fold network (in turn, as the snapshots share out the held-out cases), never by the
    folds' average: that average is the very opinion QC judges a candidate against, and a
    candidate equal to it would look perfect whatever its Dice.
    """
    t0 = time.time()
    position = {cid: i for i, cid in enumerate(dict.fromkeys(c.case_id for c in moved))}  # the same at every site
    masks = _predict_moved(seg, moved, plan, "reference segmenter at the simulated sites",
                           lambda c: position[c.case_id] % len(seg.nets_))
    out = [TrainingPair(c, m, f"segmenter:{c.meta['site']}") for c, m in zip(moved, masks)]
    _report(f"reference segmenter at {len({c.meta['site'] for c in moved})} simulated sites", out, plan.labels, t0)
    return out


def outsider_pairs(seg, architectures: Sequence[str], data: list, fit_cases: Sequence[Case],
                   cal_images: dict[str, np.ndarray], cal_cases: Sequence[Case], plan, rng: np.random.Generator,
                   render, sites: Sequence = (), moved_cal: Sequence[Case] = (), appearance: bool = False,
                   ) -> tuple[list[TrainingPair], list[TrainingPair], list]:
    """Networks of other architectures than ``seg``'s: their failures as training and calibration pairs.

    QC judges a candidate mostly by how it agrees with segqc's own segmenter. A network of
    another architecture fails otherwise — a SegResNet's smooth, plausible blobs — and QC
    overestimates it: on the Kvasir benchmark every method judged the SegResNet checkpoints
    0.14–0.25 too high, while every training and calibration pair came from UNets or from
    corruptions of the expert mask. Each architecture here is cross-fitted like ``seg``
    (`OUTSIDER_FOLDS` networks, each trained on its share of the fitting cases), in the time
    of one of ``seg``'s fold networks, with its schedule and augmentation. Their final
    networks segment the fitting cases they did not train on (training pairs: the regressors
    learn what such failures look like) and the held-out cases (calibration pairs, one group
    per architecture: the calibration and the systematic error bound see how far QC errs on
    such a network). These masks are fair candidates — a trained network's failures — since
    none of ``seg``'s networks (the judges) made them. They also segment those cases after the
    epochs of `OUTSIDER_SNAPSHOTS` (3 and 8; one group per epoch): an unfamiliar architecture's
    early failures are smooth, plausible blobs, unlike ``seg``'s early snapshots. Only two: with
    ``seg``'s eight, on 2 CPU cores, the snapshots' predictions took three quarters of the
    outsiders' time and left them 3 epochs of training.

    They are trained as a user often trains a model: flips and a small gain and offset, no appearance
    changes (``appearance=False``). segqc's own segmenter learns with colour, gamma, blur,
    noise and resolution changes, so at a simulated site it hardly degrades, and its site
    pairs teach the calibration that a new site costs nothing. A deployed model may not have
    learned that robustness, and then a new camera costs it Dice while its masks stay
    plausible. So with ``sites`` (`simulated_cases`) each outsider also segments the
    held-out cases as every site acquires them (``moved_cal``: calibration pairs, one group
    per architecture and site), and each fitting case as one site drawn for it acquires it
    (training pairs, judged by segqc's network that never saw the case, on the changed image).
    A child of ``rng`` draws their randomness and torch's global state is restored
    afterwards, so every other draw of the fit stays as it was. Returns the fitting pairs,
    the calibration pairs and each network's training record.
    """
    import torch

    from segqc.components.segmenter import CrossFittedSegmenter

    t0 = time.time()
    rng = rng.spawn(1)[0]
    console = ui.console()
    params = {k: v for k, v in vars(seg).items() if not k.endswith("_") and k not in ("n_folds", "architectures")}
    params["max_minutes"] = seg.max_minutes / seg.n_folds  # one of seg's fold networks' share, for all of them
    params["appearance"] = appearance
    fit_ids = [c.case_id for c in fit_cases]
    fit_out, cal_out, history = [], [], []
    for arch in architectures:
        net = CrossFittedSegmenter(**params, n_folds=min(OUTSIDER_FOLDS, max(1, len(fit_cases))),
                                   architectures=(arch,))
        # the networks seed torch from rng: the global torch state of the rest of the fit stays as it was
        with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
            net.fit(data, len(plan.labels), rng, case_ids=fit_ids, predict_on=cal_images,
                    snapshot_epochs=OUTSIDER_SNAPSHOTS, render=render,
                    progress=lambda msg, a=arch: console.print(
                        f"  {msg.replace('segmenter fold', f'outsider {a} fold')}", highlight=False))
        # the final networks: each case by a network that did not train on it (a held-out case by the one
        # `predict_on` assigned it)
        final = {cid: render(cid, net.predict_proba(im, case_id=cid)) for cid, (im, _) in zip(fit_ids, data)}
        final |= {cid: render(cid, net.predict_proba(im, fold=net.extra_fold_[cid])) for cid, im in cal_images.items()}

        fit_out += [TrainingPair(c, final[c.case_id], f"outsider:{arch}_final") for c in fit_cases]
        cal_out += [TrainingPair(c, final[c.case_id], f"outsider:{arch}_final") for c in cal_cases]
        # the snapshots: one group per epoch over both networks (a tag is fold<k>_ep<e>)
        fit_early, cal_early = (_snapshot_pairs(net.snapshot_masks_, cases,
                                                lambda tag: f"outsider:{arch}_{tag.rsplit('_', 1)[1]}")
                                for cases in (fit_cases, cal_cases))
        fit_out, cal_out = fit_out + fit_early, cal_out + cal_early
        net.snapshot_masks_ = {}
        if sites:
            fit_out += _outsider_at_sites(net, arch, sites, fit_cases, plan, rng)
            masks = _predict_moved(net, moved_cal, plan, f"outsider {arch} at the simulated sites",
                                   lambda c: net.extra_fold_[c.case_id])
            cal_out += [TrainingPair(c, m, f"outsider:{arch}_{c.meta['site']}") for c, m in zip(moved_cal, masks)]
        history += net.history_
    _report(f"outsider networks ({', '.join(architectures)}): {len(fit_out)} + {len(cal_out)} bad masks",
            fit_out + cal_out, plan.labels, t0)
    return fit_out, cal_out, history


def _outsider_at_sites(net, arch: str, sites: Sequence, fit_cases: Sequence[Case], plan,
                       rng: np.random.Generator) -> list[TrainingPair]:
    """Training pairs: each fitting case as one site drawn for it acquires it, segmented by the outsider
    network that did not train on it."""
    moved = [_acquired(sites[int(rng.integers(len(sites)))], c, rng) for c in fit_cases]
    masks = _predict_moved(net, moved, plan, f"outsider {arch} on fitting cases at the simulated sites",
                           lambda c: net.fold_of(c.case_id))
    return [TrainingPair(c, m, f"outsider:{arch}_{c.meta['site']}") for c, m in zip(moved, masks)]
