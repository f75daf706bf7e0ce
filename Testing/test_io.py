"""RCSegNeXtCore.data.io: exact geometry through read/write, clear refusals, and every real file as PROVENANCE says."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from RCSegNeXtCore.data.io import Geometry, read_geometry, read_image, split_extension, write_image
from RCSegNeXtCore.data.validation import orientation_code
from RCSegNeXtCore.errors import ImageReadError

# what each format stores: MetaImage writes doubles (bit-exact), NRRD stores spacing x direction vectors (exact
# to double rounding), NIfTI stores float32 header values; tolerance in mm on the index-to-physical matrix
FORMAT_TOLERANCE = {".mha": 0.0, ".nrrd": 1e-12, ".nii": 1e-4, ".nii.gz": 1e-4}
PIR = sitk.DICOMOrientImageFilter.GetDirectionCosinesFromOrientation("PIR")  # sagittal, as ProstateX t2_tse_sag


def _oblique(angle_deg: float = 18.0) -> tuple:
    a = np.deg2rad(angle_deg)
    rotation = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    return tuple(rotation.ravel())


def _write_sitk(array: np.ndarray, path: Path, spacing=(1.0, 1.0, 1.0)) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing[: image.GetDimension()])
    sitk.WriteImage(image, str(path))
    return path


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("direction", [PIR, _oblique()], ids=["sagittal_PIR", "oblique"])
def test_round_trip_keeps_voxels_and_geometry(tmp_path, ext, direction):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 1200, size=(5, 7, 6)).astype(np.int16)
    geometry = Geometry((5, 7, 6), (3.5, 0.5625, 0.625), (-61.25, 97.5, -88.125), direction)
    back = read_image(write_image(array, geometry, tmp_path / f"case{ext}"))
    assert back.array.dtype == np.int16 and np.array_equal(back.array, array)
    assert back.geometry.shape == (5, 7, 6) and orientation_code(back.geometry) == orientation_code(geometry)
    if ext == ".mha":
        assert back.geometry == geometry  # bit for bit
    matrix, expected = back.geometry.index_to_physical(), geometry.index_to_physical()
    assert np.abs(matrix - expected).max() <= FORMAT_TOLERANCE[ext]
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir()), "atomic write left a temporary file"


def test_index_to_physical_matches_sitk(tmp_path):
    geometry = Geometry((4, 5, 6), (3.0, 0.5, 0.75), (10.0, -20.0, 30.0), _oblique(25))
    image = geometry.apply_to(sitk.Image(6, 5, 4, sitk.sitkUInt8))
    for index in [(0, 0, 0), (5, 4, 3), (2, 1, 3)]:
        expected = image.TransformIndexToPhysicalPoint(index)
        assert np.allclose(geometry.index_to_physical() @ [*index, 1], [*expected, 1], atol=1e-9)


def test_split_extension():
    assert split_extension("a/CASE_0000.nii.gz") == ("CASE_0000", ".nii.gz")
    assert split_extension("CASE.NII.GZ") == ("CASE", ".NII.GZ")
    assert split_extension("Seg.seg.nrrd") == ("Seg", ".seg.nrrd")
    assert split_extension("x_0001.mha") == ("x_0001", ".mha")


def test_geometry_differences_name_both_values():
    a = Geometry.identity((19, 320, 320), (3.6, 0.5625, 0.5625))
    b = Geometry.identity((19, 128, 84), (3.0, 2.0, 2.0))
    text = " | ".join(a.differences(b))
    assert "(19, 320, 320) vs (19, 128, 84)" in text and "(3.6, 0.5625, 0.5625) vs (3, 2, 2)" in text
    assert a.matches(a) and not a.differences(a)


# ---- refusals: each names the file and the reason ------------------------------------------------------------

def test_missing_and_empty_files(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "absent.nii.gz")
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.nii\.gz: file is empty"):
        read_image(tmp_path / "empty.nii.gz")
    with pytest.raises(ImageReadError, match="file is empty"):
        read_geometry(tmp_path / "empty.nii.gz")


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_truncated_files_are_refused(tmp_path, ext):
    # ITK zero-fills a truncated NIfTI silently; io must refuse it like the other formats
    array = np.arange(4 * 16 * 16, dtype=np.float32).reshape(4, 16, 16)
    path = write_image(array, Geometry.identity(array.shape), tmp_path / f"full{ext}")
    data = path.read_bytes()
    cut = tmp_path / f"cut{ext}"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ImageReadError, match=r"cut\.\w+.*(truncated|corrupt)"):
        read_image(cut)


def test_nifti_truncation_message_gives_byte_counts(tmp_path):
    path = write_image(np.ones((2, 8, 8), np.int16), Geometry.identity((2, 8, 8)), tmp_path / "a.nii",
                       compress=False)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ImageReadError, match=r"holds \d+ bytes .* header promises \d+"):
        read_image(path)
    gz = tmp_path / "b.nii.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))  # complete gzip stream, short payload
    with pytest.raises(ImageReadError, match="header promises"):
        read_image(gz)


def test_not_an_image(tmp_path):
    (tmp_path / "notes.nrrd").write_text("this is not an image at all", encoding="utf-8")
    with pytest.raises(ImageReadError, match=r"notes\.nrrd: cannot be read as an image"):
        read_image(tmp_path / "notes.nrrd")


def test_2d_4d_and_vector_images_are_refused(tmp_path):
    with pytest.raises(ImageReadError, match=r"is 2D with size \(8, 6\); a 3D volume is needed"):
        read_image(_write_sitk(np.zeros((6, 8), np.uint8), tmp_path / "slice.nii.gz"))
    series = sitk.JoinSeries([sitk.GetImageFromArray(np.zeros((3, 4, 5), np.float32))] * 2)
    sitk.WriteImage(series, str(tmp_path / "dyn.nii.gz"))
    with pytest.raises(ImageReadError, match=r"is 4D with size \(5, 4, 3, 2\)"):
        read_image(tmp_path / "dyn.nii.gz")
    vector = sitk.GetImageFromArray(np.zeros((3, 4, 5, 3), np.uint8), isVector=True)
    sitk.WriteImage(vector, str(tmp_path / "rgb.nrrd"))
    with pytest.raises(ImageReadError, match="3 components per voxel"):
        read_image(tmp_path / "rgb.nrrd")
    # a 4D file with a single time point is a 3D volume
    single = sitk.JoinSeries([sitk.GetImageFromArray(np.ones((3, 4, 5), np.float32))])
    sitk.WriteImage(single, str(tmp_path / "one.nii.gz"))
    assert read_image(tmp_path / "one.nii.gz").array.shape == (3, 4, 5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_non_finite_voxels_are_kept_not_zeroed(tmp_path, ext, dtype):
    # ITK 5.4's NIfTI reader turns NaN/inf into 0; io puts the file's real values back so checks can see them
    array = np.zeros((2, 3, 4), dtype)
    array[0, 0, 0], array[1, 1, 1], array[1, 2, 3], array[0, 1, 2] = np.nan, np.inf, -np.inf, 5.0
    back = read_image(write_image(array, Geometry.identity(array.shape), tmp_path / f"nan{ext}")).array
    assert back.dtype == dtype and np.array_equal(back, array, equal_nan=True)


def test_nii_beside_nii_gz_is_refused(tmp_path):
    # ITK would read the header of a.nii.gz with the voxels of a.nii (silently wrong values)
    write_image(np.full((2, 3, 4), 5.0), Geometry.identity((2, 3, 4)), tmp_path / "a.nii")
    write_image(np.full((2, 3, 4), 7.0, np.float32), Geometry.identity((2, 3, 4)), tmp_path / "a.nii.gz")
    with pytest.raises(ImageReadError, match=r"a\.nii\.gz: a\.nii lies beside it .* keep only one of them"):
        read_image(tmp_path / "a.nii.gz")
    assert read_image(tmp_path / "a.nii").array.max() == 5.0


def test_folder_without_dicom(tmp_path):
    (tmp_path / "series").mkdir()
    with pytest.raises(ImageReadError, match="no image file and no DICOM series"):
        read_image(tmp_path / "series")


# ---- real MRI (skipped when ../shared/data/real is absent) ---------------------------------------------------

# file -> (size (x, y, z), spacing (x, y, z), orientation code, dtype, max value, foreground voxels or None)
PROVENANCE = {
    "rectal_filitto/rectal_ca_ax_t2.nii.gz": ((512, 512, 30), (0.4297, 0.4297, 3.0), "LPS", np.int16, 1080, None),
    "rectal_filitto/rectal_ca_ax_t2_tumor.nii.gz": ((512, 512, 30), (0.4297, 0.4297, 3.0), "LPS", np.uint8, 1, 54700),
    "prostatex/ProstateX-0000/t2_tse_sag_dicom": ((320, 320, 19), (0.5625, 0.5625, 3.6), "PIR", np.uint16, 1115, None),
    "prostatex/ProstateX-0000/ProstateX-0000_t2w.mha": ((384, 384, 19), (0.5, 0.5, 3.0), "LPS", np.uint16, 1118, None),
    "prostatex/ProstateX-0000/ProstateX-0000_lesion.nii.gz": ((384, 384, 19), (0.5, 0.5, 3.0), "LAS", np.uint16, 1,
                                                              512),
    "prostatex/ProstateX-0001/ProstateX-0001_t2_tse_sag.mha": ((320, 320, 19), (0.5625, 0.5625, 3.6), "PIR",
                                                               np.uint16, 1294, None),
    "prostatex/ProstateX-0001/ProstateX-0001_t2w.mha": ((384, 384, 19), (0.5, 0.5, 3.0), "LPS", np.uint16, 1491, None),
    "prostatex/ProstateX-0001/ProstateX-0001_lesion_empty_2mm.nii.gz": ((84, 128, 19), (2.0, 2.0, 3.0), "LAS",
                                                                        np.uint8, 0, 0),
    "prostatex/ProstateX-0218/ProstateX-0218_t2_tse_sag.nii.gz": ((320, 320, 23), (0.625, 0.625, 3.6), "PIR",
                                                                  np.uint16, 2745, None),
    "other_mri/brain1_image.nrrd": ((256, 256, 25), (0.78125, 0.78125, 6.5), "LAS", np.int16, 3057, None),
    "other_mri/brain1_label.nrrd": ((256, 256, 25), (0.78125, 0.78125, 6.5), "LAS", np.int32, 1, 4137),
}


@pytest.mark.parametrize("name", sorted(PROVENANCE))
def test_real_files_match_provenance(real_data, name):
    size, spacing, code, dtype, maximum, foreground = PROVENANCE[name]
    image = read_image(real_data / name)
    assert image.array.shape == tuple(reversed(size))  # (z, y, x)
    assert np.allclose(image.geometry.spacing, tuple(reversed(spacing)), atol=1e-4)
    assert orientation_code(image.geometry) == code
    assert image.array.dtype == dtype and int(image.array.max()) == maximum and int(image.array.min()) == 0
    if foreground is not None:
        assert int(np.count_nonzero(image.array)) == foreground
    assert read_geometry(real_data / name) == image.geometry  # header-only read agrees with the full read


def test_real_label_slices_match_provenance(real_data):
    tumour = read_image(real_data / "rectal_filitto/rectal_ca_ax_t2_tumor.nii.gz").array
    lesion = read_image(real_data / "prostatex/ProstateX-0000/ProstateX-0000_lesion.nii.gz").array
    assert np.flatnonzero(tumour.any(axis=(1, 2))).tolist() == list(range(10, 27))  # k = 10..26
    assert np.flatnonzero(lesion.any(axis=(1, 2))).tolist() == list(range(8, 12))  # k = 8..11


def test_real_dicom_series_equals_itself_rewritten(real_data, tmp_path):
    dicom = read_image(real_data / "prostatex/ProstateX-0000/t2_tse_sag_dicom")
    # SimpleITK's own series reader, independent of io's folder handling
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(real_data / "prostatex/ProstateX-0000/t2_tse_sag_dicom")))
    reference = reader.Execute()
    assert np.array_equal(dicom.array, sitk.GetArrayFromImage(reference))
    assert dicom.geometry == Geometry.from_sitk(reference)
    for ext in (".nrrd", ".mha", ".nii.gz"):
        back = read_image(write_image(dicom.array, dicom.geometry, tmp_path / f"sag{ext}"))
        assert np.array_equal(back.array, dicom.array) and back.array.dtype == np.uint16
        tolerance = 1e-5 if ext == ".nii.gz" else 1e-12  # NIfTI keeps float32 header values
        assert np.allclose(back.geometry.origin, dicom.geometry.origin, atol=tolerance * 100)
        assert np.allclose(back.geometry.direction, dicom.geometry.direction, atol=tolerance)
        assert np.allclose(back.geometry.spacing, dicom.geometry.spacing, atol=tolerance)
        assert orientation_code(back.geometry) == "PIR"


@pytest.mark.parametrize("name", ["prostatex/ProstateX-0000/ProstateX-0000_t2w.mha",  # oblique ~18 deg, LPS
                                  "prostatex/ProstateX-0001/ProstateX-0001_t2_tse_sag.mha",  # sagittal PIR
                                  "prostatex/ProstateX-0218/ProstateX-0218_t2_tse_sag.nii.gz",  # sagittal PIR
                                  "rectal_filitto/rectal_ca_ax_t2.nii.gz"])  # slightly oblique axial
def test_real_geometry_preserved_exactly(real_data, tmp_path, name):
    original = read_image(real_data / name)
    same_format = split_extension(name)[1]
    for ext in sorted({same_format, ".nrrd", ".mha"}):
        back = read_image(write_image(original.array, original.geometry, tmp_path / f"copy{ext}", compress=False))
        assert np.array_equal(back.array, original.array) and back.array.dtype == original.array.dtype
        assert back.geometry.shape == original.geometry.shape
        assert orientation_code(back.geometry) == orientation_code(original.geometry)
        if ext == ".mha":
            assert back.geometry == original.geometry  # bit for bit
        difference = np.abs(back.geometry.index_to_physical() - original.geometry.index_to_physical()).max()
        assert difference <= FORMAT_TOLERANCE[ext], (ext, difference)
