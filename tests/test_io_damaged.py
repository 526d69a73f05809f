"""Damaged, truncated, oversized and odd inputs: each fails its own case with a clear reason.

Every bad file is made here at run time from tiny arrays, so the whole file runs in seconds.
"""

import gzip
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from segqc.data import (
    images,
    layouts,
    load_dataset,
    nifti_scan,
    read_image,
    read_manifest,
    read_mask,
    write_image,
    write_mask,
)
from segqc.data.case import Geometry
from segqc.data.errors import CaseError
from segqc.data.layouts import CaseRef
from segqc.data.nifti_scan import scan_nifti

RNG = np.random.default_rng(0)
GEO3 = Geometry.identity(3)


def _cut(path, fraction):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def _sitk_write(path, arr, compress=True):
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path), useCompression=compress)
    return path


_NIFTI_TYPES = {np.dtype("u1"): 2, np.dtype("i2"): 4, np.dtype("f4"): 16, np.dtype("f8"): 64}


def _nifti(arr, version=1, order="<"):
    """A single-file NIfTI-1 / NIfTI-2 in either byte order, made by hand (SimpleITK writes NIfTI-1 '<' only)."""
    shape = arr.shape[::-1]
    dim = (len(shape), *shape) + (1,) * (7 - len(shape))
    code, bits = _NIFTI_TYPES[arr.dtype], arr.dtype.itemsize * 8
    if version == 1:
        head = bytearray(348)
        struct.pack_into(order + "i", head, 0, 348)
        struct.pack_into(order + "8h", head, 40, *dim)
        struct.pack_into(order + "2h", head, 70, code, bits)
        struct.pack_into(order + "8f", head, 76, *[1.0] * 8)
        struct.pack_into(order + "f", head, 108, 352)
        head[344:348] = b"n+1\0"
    else:
        head = bytearray(540)
        struct.pack_into(order + "i", head, 0, 540)
        head[4:12] = b"n+2\0\r\n\x1a\n"
        struct.pack_into(order + "2h", head, 12, code, bits)
        struct.pack_into(order + "8q", head, 16, *dim)
        struct.pack_into(order + "8d", head, 104, *[1.0] * 8)
        struct.pack_into(order + "q", head, 168, 544)
    return bytes(head) + bytes(4) + arr.astype(arr.dtype.newbyteorder(order)).tobytes()


def _png_1bit(path, width, height):
    """A blank 1-bit PNG of any size, streamed so that a huge one costs a few kB and no memory."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row = zlib.compressobj(9), bytes(1 + (width + 7) // 8)  # filter byte + packed pixels
    idat = b"".join(packer.compress(row * 1000) for _ in range(height // 1000))
    idat += packer.compress(row * (height % 1000)) + packer.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


# ----------------------------------------------------------------------------- 1, 2: truncated NIfTI


@pytest.mark.parametrize("name", ["img.nii.gz", "img.nii"])
def test_truncated_float_nifti_is_a_clear_error(tmp_path, name):
    path = _cut(_sitk_write(tmp_path / name, RNG.random((20, 20, 20)).astype(np.float32)), 0.6)
    with pytest.raises(ValueError, match=r"img\.nii(\.gz)? is truncated or damaged"):
        read_image(path)


@pytest.mark.parametrize("name", ["m.nii.gz", "m.nii"])
def test_truncated_nifti_mask_is_refused(tmp_path, name):
    # SimpleITK reads the missing voxels as 0 and accepts the mask
    path = _cut(_sitk_write(tmp_path / name, RNG.integers(0, 4, (30, 30, 30)).astype(np.uint8)), 0.6)
    with pytest.raises(ValueError, match="truncated or damaged"):
        read_mask(path)


def test_short_payload_in_a_valid_gzip_is_refused(tmp_path):
    mask = RNG.integers(0, 4, (10, 10, 10)).astype(np.uint8)
    full = gzip.decompress(_sitk_write(tmp_path / "full.nii.gz", mask).read_bytes())
    short = tmp_path / "short.nii.gz"
    short.write_bytes(gzip.compress(full[:-100]))  # a complete gzip stream, 100 voxels short
    why = f"short.nii.gz is truncated .*promises {len(full):,} bytes .*holds {len(full) - 100:,} once decompressed"
    for read in (read_mask, read_image):
        with pytest.raises(ValueError, match=why):
            read(short)


@pytest.mark.parametrize("order", ["<", ">"])
def test_nifti1_both_byte_orders(tmp_path, order):
    img = RNG.random((4, 5, 6)).astype(np.float32)
    (tmp_path / "ok.nii").write_bytes(_nifti(img, 1, order))
    assert np.array_equal(read_image(tmp_path / "ok.nii")[0][0], img)
    img[1, 2, 3] = np.inf
    (tmp_path / "inf.nii.gz").write_bytes(gzip.compress(_nifti(img, 1, order)))
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        read_image(tmp_path / "inf.nii.gz")
    (tmp_path / "short.nii").write_bytes(_nifti(img, 1, order)[:-8])
    with pytest.raises(ValueError, match="short.nii is truncated"):
        read_image(tmp_path / "short.nii")


@pytest.mark.parametrize("order", ["<", ">"])
def test_nifti2_payload_check(tmp_path, order):
    # this SimpleITK has no NIfTI-2 reader; the payload check knows the header all the same
    img = RNG.random((4, 5, 6))
    img[0, 0, :2] = np.nan
    data = _nifti(img, 2, order)
    (tmp_path / "ok.nii.gz").write_bytes(gzip.compress(data))
    assert scan_nifti(tmp_path / "ok.nii.gz") == 2
    (tmp_path / "short.nii").write_bytes(data[:-8])
    with pytest.raises(ValueError, match=f"promises {len(data):,} bytes .*holds {len(data) - 8:,}"):
        scan_nifti(tmp_path / "short.nii")


def test_nan_count_across_read_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(nifti_scan, "_CHUNK", 7)  # voxels straddle chunk ends
    img = RNG.random((3, 4, 5))
    img.flat[[0, 17, 59]] = [np.nan, np.inf, -np.inf]
    (tmp_path / "x.nii.gz").write_bytes(gzip.compress(_nifti(img, 1, ">")))
    assert scan_nifti(tmp_path / "x.nii.gz") == 3


def test_damaged_gzip_metaimage_and_nrrd_are_clear_errors(tmp_path):
    # SimpleITK refuses these itself (it does not zero-fill them as it does NIfTI): the message must say why
    arr = RNG.random((20, 20, 20)).astype(np.float32)
    crc = bytearray(_sitk_write(tmp_path / "crc.nii.gz", arr).read_bytes())
    crc[-6] ^= 0xFF  # the gzip CRC no longer matches
    (tmp_path / "crc.nii.gz").write_bytes(bytes(crc))
    paths = [tmp_path / "crc.nii.gz"]
    for name, compress in [("a.mha", False), ("b.mha", True), ("c.nrrd", False), ("d.nrrd", True)]:
        paths.append(_cut(_sitk_write(tmp_path / name, arr, compress), 0.6))
    _sitk_write(tmp_path / "e.mhd", arr, False)
    _cut(tmp_path / "e.raw", 0.6)
    paths.append(tmp_path / "e.mhd")
    for path in paths:
        with pytest.raises(ValueError, match=f"cannot read .*{path.name}: the file is damaged, truncated"):
            read_image(path)


# ----------------------------------------------------------------------------- 3: size limit


def test_huge_png_is_refused_from_its_header(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_VOXELS", 512 * 512 * 1024)
    path = _png_1bit(tmp_path / "huge.png", 20000, 20000)
    for read in (read_image, read_mask):
        with pytest.raises(ValueError, match=r"20000 x 20000 = 400,000,000 voxels, above the limit of 268,435,456 .*"
                                             "SEGQC_MAX_VOXELS"):
            read(path)


def test_pillow_bomb_guard_follows_max_voxels(tmp_path, monkeypatch):
    path = _png_1bit(tmp_path / "bomb.png", 14000, 14000)  # Pillow's own default refuses it (DecompressionBombError)
    monkeypatch.setattr(images, "MAX_VOXELS", 100_000_000)
    with pytest.raises(ValueError, match="196,000,000 voxels, above the limit of 100,000,000"):
        read_image(path)
    monkeypatch.setattr(images, "MAX_VOXELS", 1000)  # now above twice the limit: Pillow's error, turned into ours
    with pytest.raises(ValueError, match="more than 2,000 pixels, above the limit of 1,000 .*SEGQC_MAX_VOXELS"):
        read_image(path)


def test_max_voxels_is_checked_before_pixels(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_VOXELS", 999)
    arr = np.zeros((10, 10, 10), np.float32)
    for name in ("big.nii.gz", "big.mha", "big.nrrd"):
        path = _cut(_sitk_write(tmp_path / name, arr, False), 0.9)  # pixels cut: only the header is read
        with pytest.raises(ValueError, match="10 x 10 x 10 = 1,000 voxels, above the limit of 999"):
            read_mask(path)
    monkeypatch.setattr(images, "MAX_VOXELS", 1000)
    write_image(tmp_path / "ok.nii.gz", arr[None], GEO3)
    assert read_image(tmp_path / "ok.nii.gz")[0].shape == (1, 10, 10, 10)


def test_max_voxels_from_environment():
    code = "import segqc.data.images as m; print(m.MAX_VOXELS)"
    run = subprocess.run([sys.executable, "-c", code], env={**os.environ, "SEGQC_MAX_VOXELS": " 1234 "},
                         capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "1234"
    # without the variable: 512 × 512 × 1024, or what this machine's memory holds at BYTES_PER_VOXEL
    assert 2**24 <= images._limit_from_env({}) == images._default_limit() <= 512 * 512 * 1024
    with pytest.raises(ValueError, match="SEGQC_MAX_VOXELS must be a positive whole number"):
        images._limit_from_env({"SEGQC_MAX_VOXELS": "lots"})


# ----------------------------------------------------------------------------- 4, 5: manifests


def _manifest(tmp_path, text, encoding="utf-8"):
    path = tmp_path / "cases.csv"
    path.write_bytes(text.encode(encoding))
    return path


def test_manifest_bad_rows_fail_only_their_case(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    text = "case_id,image,mask\na,a.png,a.png\nb,,a.png\nc\n,a.png,a.png\n,,,\n"
    refs = read_manifest(_manifest(tmp_path, text))
    assert [r.case_id for r in refs] == ["a", "b", "c", "row5"]  # the padding row ",,," lists nothing
    assert refs[0].load().mask.shape == (4, 4) and refs[3].load().mask.shape == (4, 4)
    with pytest.raises(CaseError, match="b: manifest row 3 has no image path"):
        refs[1].load()
    with pytest.raises(CaseError, match="c: manifest row 4 has no image path"):
        refs[2].load()
    assert len({*refs}) == 4  # still hashable


def test_manifest_bom_crlf_whitespace_unicode(tmp_path):
    Image.fromarray(np.ones((4, 4), np.uint8) * 255).save(tmp_path / "patiënt ü.png")
    text = " case_id , image ,mask, note \r\n  p1 ,  patiënt ü.png ; , patiënt ü.png , héllo \r\n"
    refs = read_manifest(_manifest(tmp_path, "\ufeff" + text))
    assert refs[0].case_id == "p1" and refs[0].extra == {"note": "héllo", "source_id": "p1"}
    case = refs[0].load()
    assert case.image.shape == (1, 4, 4) and case.mask.max() == 1
    with pytest.raises(ValueError, match="not UTF-8"):
        read_manifest(_manifest(tmp_path, text, "utf-16"))


def test_manifest_ids_are_unique(tmp_path):
    text = "case_id,image\nx,a.png\nx,b.png\nx~2,c.png\nx#1,d.png\nx,e.png\n,f.png\nrow7,g.png\n"
    refs = read_manifest(_manifest(tmp_path, text))
    ids = [r.case_id for r in refs]
    assert ids == ["x", "x~3", "x~2", "x#1", "x~4", "row7~2", "row7"]
    assert [r.extra["source_id"] for r in refs] == ["x", "x", "x~2", "x#1", "x", "row7", "row7"]


# ----------------------------------------------------------------------------- 6: missing masks


def _flat(tmp_path, names, with_mask):
    for d in ("images", "masks"):
        (tmp_path / d).mkdir(exist_ok=True)
    for n in names:
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "images" / f"{n}.png")
    for n in with_mask:
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "masks" / f"{n}.png")
    return tmp_path


def test_flat_folder_missing_mask_fails_one_case(tmp_path):
    refs = load_dataset(_flat(tmp_path, "abc", "ac"))
    assert [r.case_id for r in refs] == ["a", "b", "c"] and refs[1].mask is None
    assert refs[0].load().mask is not None and refs[2].load().mask is not None
    with pytest.raises(CaseError, match=r"b: no mask named b\.\* in .*masks"):
        refs[1].load()
    loose = load_dataset(tmp_path, require_masks=False)
    assert loose[1].problem is None and loose[1].load(require_mask=False).mask is None


def test_no_mask_at_all_is_a_run_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no image has a mask in .*masks"):
        load_dataset(_flat(tmp_path, "ab", ""))
    with pytest.raises(FileNotFoundError, match="mask folder .*nowhere does not exist"):
        load_dataset(tmp_path / "images", masks=tmp_path / "nowhere")


def test_nnunet_missing_label_fails_one_case(tmp_path):
    for d in ("imagesTr", "labelsTr"):
        (tmp_path / d).mkdir()
    arr = np.zeros((3, 4, 5), np.uint8)
    for cid in ("c1", "c2"):
        write_image(tmp_path / "imagesTr" / f"{cid}_0000.nii.gz", arr[None].astype(np.float32), GEO3)
    write_mask(tmp_path / "labelsTr" / "c1.nii.gz", arr, GEO3)
    refs = load_dataset(tmp_path)
    assert refs[0].load().mask.shape == (3, 4, 5)
    with pytest.raises(CaseError, match="c2: no mask named c2"):
        refs[1].load()


# ----------------------------------------------------------------------------- 7: odd files and values


@pytest.mark.parametrize("name", ["empty.png", "empty.nii.gz", "empty.mha", "text.png", "text.nii.gz", "text.nrrd"])
def test_empty_and_text_files(tmp_path, name):
    (tmp_path / name).write_bytes(b"" if name.startswith("empty") else b"hello, not an image\n" * 40)
    for read in (read_image, read_mask):
        with pytest.raises(ValueError, match=f"cannot read .*{name}"):
            read(tmp_path / name)


def test_png_modes(tmp_path):
    rgba = RNG.integers(0, 256, (5, 6, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    deep = RNG.integers(0, 65536, (5, 6)).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    bits = RNG.integers(0, 2, (5, 6)).astype(bool)
    Image.fromarray(bits).save(tmp_path / "bits.png")
    labels = RNG.integers(0, 2, (5, 6)).astype(np.uint8)
    pal = Image.fromarray(labels, "P")
    pal.putpalette([0, 0, 0, 255, 0, 0])  # index 1 drawn red
    pal.save(tmp_path / "pal.png")
    assert np.array_equal(read_image(tmp_path / "rgba.png")[0], np.moveaxis(rgba[..., :3], -1, 0))
    assert np.array_equal(read_image(tmp_path / "deep.png")[0][0], deep)
    assert np.array_equal(read_image(tmp_path / "bits.png")[0][0], bits)
    assert read_image(tmp_path / "pal.png")[0].shape == (3, 5, 6)  # an image gets the palette's colours
    assert np.array_equal(read_mask(tmp_path / "pal.png")[0], labels)  # a mask gets the indices
    assert np.array_equal(read_mask(tmp_path / "bits.png")[0], bits)


def test_odd_values(tmp_path):
    img = RNG.random((3, 4, 5)).astype(np.float32)
    img[0, 0, 0] = -np.inf
    for name in ("inf.nii.gz", "inf.mha"):
        with pytest.raises(ValueError, match="1 NaN or infinite"):
            read_image(_sitk_write(tmp_path / name, img))
    cases = {"half.nii.gz": (np.full((3, 4, 5), 0.5, np.float32), "non-integer"),
             "nan.nii.gz": (np.where(img > 0.5, np.nan, 1).astype(np.float32), "NaN or infinite"),
             "neg.nii.gz": (np.full((3, 4, 5), -1, np.int16), "negative"),
             "big.nrrd": (np.array([[0, 70000]], np.int32), "label 70000")}
    for name, (arr, why) in cases.items():
        with pytest.raises(ValueError, match=why):
            read_mask(_sitk_write(tmp_path / name, arr))
    series = sitk.JoinSeries([sitk.GetImageFromArray(np.zeros((3, 4, 5), np.uint8))] * 2)  # a 4D mask
    sitk.WriteImage(series, str(tmp_path / "4d.nii.gz"))
    with pytest.raises(ValueError, match="2 components; expected one label per voxel"):
        read_mask(tmp_path / "4d.nii.gz")


def test_2d_mask_for_3d_image(tmp_path):
    write_image(tmp_path / "img.nii.gz", np.zeros((1, 3, 4, 5), np.float32), GEO3)
    write_mask(tmp_path / "m.png", np.zeros((4, 5), np.uint8), Geometry.identity(2))
    ref = CaseRef("c", (tmp_path / "img.nii.gz",), tmp_path / "m.png")
    with pytest.raises(CaseError, match=r"c: mask shape \(4, 5\) differs from image shape \(3, 4, 5\)"):
        ref.load()


def test_load_turns_any_read_error_into_case_error(tmp_path, monkeypatch):
    ref = CaseRef("c", (tmp_path / "img.nii.gz",))
    for error, why in [(MemoryError(), r"c: not enough memory to read .*img\.nii\.gz"),
                       (KeyError("x"), r"c: cannot read .*img\.nii\.gz: KeyError: 'x'")]:
        monkeypatch.setattr(layouts, "read_image", lambda path, e=error: (_ for _ in ()).throw(e))
        with pytest.raises(CaseError, match=why):
            ref.load(require_mask=False)
    monkeypatch.setattr(layouts, "read_image", lambda path: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        ref.load(require_mask=False)
