import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from segqc.data import detect_layout, load_dataset, read_image, read_manifest, read_mask, write_image, write_mask
from segqc.data.case import Geometry
from segqc.data.errors import CaseError


def test_detect_layouts(sample, tmp_path):
    assert detect_layout(sample / "kvasir" / "reference") == "flat"
    assert detect_layout(sample / "hippocampus" / "reference") == "msd"
    assert detect_layout(sample / "kvasir" / "candidates.csv") == "csv"
    with pytest.raises(ValueError, match="cannot tell the layout"):
        detect_layout(tmp_path)


def test_kvasir_flat_rgb(sample):
    refs = load_dataset(sample / "kvasir" / "reference")
    assert len(refs) == 40
    case = refs[0].load()
    assert case.image.shape == (3, 256, 256) and case.image.dtype == np.float32
    assert case.mask.shape == (256, 256) and set(np.unique(case.mask)) <= {0, 1}
    assert case.spacing == (1.0, 1.0) and case.ndim == 2


def test_hippocampus_msd(sample):
    refs = load_dataset(sample / "hippocampus" / "reference")
    assert len(refs) == 20
    case = refs[0].load()
    assert case.image.shape[0] == 1 and case.ndim == 3
    assert case.mask.shape == case.shape and set(np.unique(case.mask)) <= {0, 1, 2}
    img = sitk.ReadImage(str(refs[0].image[0]))
    assert case.spacing == tuple(img.GetSpacing())[::-1]


def test_nnunet_multichannel_and_imagests(sample, tmp_path):
    src = sample / "hippocampus" / "reference"
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    (tmp_path / "imagesTs").mkdir()
    for p in sorted((src / "imagesTr").iterdir())[:2]:
        cid = p.name.replace(".nii.gz", "")
        shutil.copy(p, tmp_path / "imagesTr" / f"{cid}_0000.nii.gz")
        shutil.copy(p, tmp_path / "imagesTr" / f"{cid}_0001.nii.gz")
        shutil.copy(src / "labelsTr" / p.name, tmp_path / "labelsTr" / p.name)
        shutil.copy(p, tmp_path / "imagesTs" / f"{cid}_0000.nii.gz")
    assert detect_layout(tmp_path) == "nnunet"
    refs = load_dataset(tmp_path)
    case = refs[0].load()
    assert case.image.shape[0] == 2 and np.array_equal(case.image[0], case.image[1])
    ts = load_dataset(tmp_path, split="Ts", require_masks=False)
    assert len(ts) == 2 and ts[0].mask is None
    assert ts[0].load(require_mask=False).mask is None


def test_roundtrip_formats(tmp_path, hippo_cases):
    case = hippo_cases[0]
    for ext in (".nii.gz", ".nii", ".nrrd", ".mha"):
        write_image(tmp_path / f"img{ext}", case.image, case.geometry)
        write_mask(tmp_path / f"m{ext}", case.mask, case.geometry)
        img, geo = read_image(tmp_path / f"img{ext}")
        mask, mgeo = read_mask(tmp_path / f"m{ext}")
        assert np.allclose(img, case.image) and np.array_equal(mask, case.mask)
        assert geo.mismatch(case.geometry) is None and mgeo.mismatch(case.geometry) is None
    rgb = (np.random.default_rng(0).random((3, 20, 30)) * 255).astype(np.float32)
    write_image(tmp_path / "x.png", rgb, Geometry.identity(2))
    back, _ = read_image(tmp_path / "x.png")
    assert back.shape == (3, 20, 30) and np.allclose(back, rgb.astype(np.uint8))


def _pair(tmp_path, mask_arr, image_shape=(10, 10), name="a"):
    (tmp_path / "images").mkdir(exist_ok=True)
    (tmp_path / "masks").mkdir(exist_ok=True)
    Image.fromarray(np.zeros(image_shape, np.uint8)).save(tmp_path / "images" / f"{name}.png")
    Image.fromarray(mask_arr).save(tmp_path / "masks" / f"{name}.png")
    return next(r for r in load_dataset(tmp_path) if r.case_id == name)


def test_bad_masks_are_clear_errors(tmp_path):
    ramp = np.arange(100, dtype=np.uint8).reshape(10, 10)
    with pytest.raises(CaseError, match="distinct values"):
        _pair(tmp_path, ramp).load()
    with pytest.raises(CaseError, match="shape"):
        _pair(tmp_path, np.zeros((12, 10), np.uint8), name="b").load()


def test_geometry_mismatch_names_the_case(tmp_path, hippo_cases):
    case = hippo_cases[0]
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    write_image(tmp_path / "imagesTr" / "c1.nii.gz", case.image, case.geometry)
    moved = Geometry(case.spacing, tuple(o + 5 for o in case.geometry.origin), case.geometry.direction)
    write_mask(tmp_path / "labelsTr" / "c1.nii.gz", case.mask, moved)
    with pytest.raises(CaseError, match=r"c1: mask geometry differs.*origin"):
        load_dataset(tmp_path)[0].load()


def test_nan_image_and_corrupt_file(tmp_path, hippo_cases):
    case = hippo_cases[0]
    img = case.image.copy()
    img[0, 0, 0, 0] = np.nan
    # SimpleITK's NIfTI reader turns NaN into 0: the raw-voxel check must still see it
    for name in ("nan.mha", "nan.nii.gz", "nan.nii"):
        write_image(tmp_path / name, img, case.geometry)
        with pytest.raises(ValueError, match="1 NaN"):
            read_image(tmp_path / name)
    write_image(tmp_path / "ok.nii.gz", case.image, case.geometry)
    assert np.array_equal(read_image(tmp_path / "ok.nii.gz")[0], case.image)
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(ValueError, match="cannot read"):
        read_image(tmp_path / "broken.nii.gz")
    with pytest.raises(FileNotFoundError):
        read_mask(tmp_path / "missing.nii.gz")


def test_manifest(sample):
    refs = read_manifest(sample / "kvasir" / "candidates.csv")
    assert len(refs) == 20 and refs[0].truth is not None and refs[0].group
    case = refs[0].load()
    assert case.truth.shape == case.mask.shape and "dice" in case.meta
