"""Reading the release: accepted layouts, pairing by name, quirks, and one-line errors for bad input."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import SIZE, make_zip, tree_digest
from tnbc_pipeline.data.raw import Release
from tnbc_pipeline.data.synth import PATIENT_COUNTS, RGB_KEYS
from tnbc_pipeline.errors import TnbcError


def _arrays(rel: Release) -> dict[str, tuple[bytes, bytes]]:
    out = {}
    for case in rel.cases:
        image, mask, _, _ = rel.load(case)
        out[case.key] = (image.tobytes(), mask.tobytes())
    return out


def test_every_accepted_layout_reads_the_same_pairs(release_root: Path, tmp_path: Path) -> None:
    reference = _arrays(Release(release_root))
    assert len(reference) == 50
    doubled = tmp_path / "doubled" / "TNBC_NucleiSegmentation"
    shutil.copytree(release_root, doubled / "TNBC_NucleiSegmentation")
    archive = make_zip(release_root, tmp_path / "TNBC_NucleiSegmentation.zip")
    doubled_zip = tmp_path / "doubled.zip"
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(doubled_zip, "w") as dst:
        for info in src.infolist():
            dst.writestr("TNBC_NucleiSegmentation/" + info.filename, src.read(info))
    for path in (release_root, release_root.parent, doubled.parent, doubled, archive, doubled_zip):
        assert _arrays(Release(path)) == reference, path


def test_cases_patients_and_quirks(release_root: Path) -> None:
    rel = Release(release_root)
    assert rel.patients == PATIENT_COUNTS
    assert [c.key for c in rel.cases][:8] == ["01_1", "01_2", "01_3", "01_4", "01_5", "01_6", "01_7", "02_1"]
    for case in rel.cases:
        assert case.image == f"Slide_{case.patient}/{case.key}.png"
        assert case.mask == f"GT_{case.patient}/{case.key}.png"
    # The synthetic release keeps the real one's mix: RGBA files, and RGB for 09_2..09_4.
    stored = {c.key: cv2.imread(str(release_root / c.image), cv2.IMREAD_UNCHANGED).shape[2] for c in rel.cases}
    assert {k for k, ch in stored.items() if ch == 3} == RGB_KEYS
    image, mask, _, _ = rel.load(next(c for c in rel.cases if c.key == "09_2"))
    assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 255}


def test_alpha_is_dropped_and_channels_are_rgb(release: Path) -> None:
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200  # pure red in RGB
    bgra = np.dstack([rgb[..., ::-1], np.full((8, 8), 7, np.uint8)])
    for d in release.iterdir():
        if d.name not in ("Slide_01", "GT_01"):
            shutil.rmtree(d) if d.is_dir() else d.unlink()
    for k in range(2, 8):
        (release / "Slide_01" / f"01_{k}.png").unlink()
        (release / "GT_01" / f"01_{k}.png").unlink()
    cv2.imwrite(str(release / "Slide_01" / "01_1.png"), bgra)
    cv2.imwrite(str(release / "GT_01" / "01_1.png"), np.zeros((8, 8), np.uint8))
    image, _, _, _ = Release(release).load(Release(release).cases[0])
    assert image.shape == (8, 8, 3) and (image[..., 0] == 200).all() and (image[..., 1:] == 0).all()


def test_pairs_by_name_not_position(release: Path) -> None:
    (release / "GT_03" / "03_2.png").unlink()
    with pytest.raises(TnbcError, match=r"Slide_03/03_2\.png: no matching mask"):
        Release(release)


def test_mask_without_image(release: Path) -> None:
    (release / "Slide_05" / "05_4.png").unlink()
    with pytest.raises(TnbcError, match=r"GT_05/05_4\.png: mask without image"):
        Release(release)


def test_file_name_must_match_its_patient_folder(release: Path) -> None:
    shutil.copy(release / "Slide_01" / "01_1.png", release / "Slide_02" / "01_9.png")
    with pytest.raises(TnbcError, match=r"Slide_02/01_9\.png: unexpected file name"):
        Release(release)


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[: len(b) // 2], "truncated PNG|CRC"),
    (lambda b: b"", "empty file"),
    (lambda b: b"GIF89a not a png at all", "not a PNG"),
    (lambda b: b[:60] + bytes([b[60] ^ 0xFF]) + b[61:], "CRC mismatch"),
])
def test_damaged_image_is_named(release: Path, damage, message: str) -> None:
    path = release / "Slide_04" / "04_2.png"
    path.write_bytes(damage(path.read_bytes()))
    rel = Release(release)
    case = next(c for c in rel.cases if c.key == "04_2")
    with pytest.raises(TnbcError, match=rf"Slide_04/04_2\.png: .*({message})"):
        rel.load(case)


def test_non_binary_mask_is_refused_unless_threshold_given(release: Path) -> None:
    path = release / "GT_02" / "02_1.png"
    grey = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    blurred = cv2.GaussianBlur(grey, (5, 5), 0)
    cv2.imwrite(str(path), blurred)
    case = next(c for c in Release(release).cases if c.key == "02_1")
    with pytest.raises(TnbcError, match=r"GT_02/02_1\.png: mask is not binary"):
        Release(release).load(case)
    _, mask, _, _ = Release(release, mask_threshold=127).load(case)
    assert set(np.unique(mask)) <= {0, 255}
    assert np.array_equal(mask, np.where(blurred > 127, 255, 0))


def test_size_mismatch_is_named(release: Path) -> None:
    path = release / "GT_06" / "06_3.png"
    cv2.imwrite(str(path), np.zeros((SIZE, SIZE + 4), np.uint8))
    case = next(c for c in Release(release).cases if c.key == "06_3")
    with pytest.raises(TnbcError, match=r"GT_06/06_3\.png: mask is 100x96 but its image is 96x96"):
        Release(release).load(case)


def test_empty_and_unrecognised_layouts(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "other" / "images").mkdir(parents=True)
    (tmp_path / "other" / "images" / "a.png").write_bytes(b"x")
    for folder in ("empty", "other"):
        with pytest.raises(TnbcError, match="unrecognised release layout"):
            Release(tmp_path / folder)
    with pytest.raises(TnbcError, match="no such file"):
        Release(tmp_path / "missing")
    (tmp_path / "notzip.zip").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(TnbcError, match="not a zip archive"):
        Release(tmp_path / "notzip.zip")


def test_two_releases_side_by_side_are_ambiguous(release_root: Path, tmp_path: Path) -> None:
    shutil.copytree(release_root, tmp_path / "a" / "TNBC_NucleiSegmentation")
    shutil.copytree(release_root, tmp_path / "b" / "TNBC_NucleiSegmentation")
    with pytest.raises(TnbcError, match="several releases found"):
        Release(tmp_path)


def test_archive_members_are_checked(tmp_path: Path) -> None:
    for name, member, message in [("slip.zip", "../Slide_01/01_1.png", "unsafe member path"),
                                  ("abs.zip", "/Slide_01/01_1.png", "unsafe member path")]:
        with zipfile.ZipFile(tmp_path / name, "w") as zf:
            zf.writestr(member, b"x")
        with pytest.raises(TnbcError, match=message):
            Release(tmp_path / name)
    with zipfile.ZipFile(tmp_path / "link.zip", "w") as zf:
        info = zipfile.ZipInfo("Slide_01/01_1.png")
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(TnbcError, match="symbolic link"):
        Release(tmp_path / "link.zip")


def test_reading_never_writes_to_the_release(release_root: Path) -> None:
    before = tree_digest(release_root.parent)
    rel = Release(release_root)
    _arrays(rel)
    assert tree_digest(release_root.parent) == before


_names = st.sampled_from(["Slide_01", "GT_01", "Slide_1", "GT_02", "__MACOSX", ".hidden", "TNBC_NucleiSegmentation", "x"])
_files = st.sampled_from(["01_1.png", "01_2.png", "02_1.png", "1_1.png", "01_1.PNG", ".DS_Store", "a.txt"])


def _png(arr: np.ndarray) -> bytes:
    return cv2.imencode(".png", arr)[1].tobytes()


_RGB = _png(np.dstack([np.arange(16, dtype=np.uint8).reshape(4, 4)] * 2 + [np.full((4, 4), 9, np.uint8)]))
_MASK = _png(np.where(np.eye(4, dtype=bool), 255, 0).astype(np.uint8))
_payload = st.one_of(st.binary(max_size=40), st.sampled_from([_RGB, _MASK]))
_VALID = [(["Slide_01"], "01_1.png", _RGB), (["GT_01"], "01_1.png", _MASK), (["Slide_02"], "02_1.png", _RGB),
          (["x", "GT_02"], "02_1.png", _MASK)]


@example(entries=_VALID)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.lists(_names, min_size=0, max_size=3), _files, _payload), max_size=8))
def test_any_file_tree_gives_cases_or_a_project_error(tmp_path_factory, entries) -> None:
    root = tmp_path_factory.mktemp("fuzz")
    for dirs, name, data in entries:
        folder = root.joinpath(*dirs)
        if folder.is_file():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / name).is_dir():
            (folder / name).write_bytes(data)
    try:
        rel = Release(root)
        loaded = [(case, rel.load(case)) for case in rel.cases]
    except TnbcError:
        return
    # A tree that parses gives well-formed cases: unique keys named by their files, each image in its
    # patient's Slide_ folder paired with the GT_ file of the same name, and arrays of matching shape.
    keys = [case.key for case, _ in loaded]
    assert len(keys) == len(set(keys)) and keys
    for case, (image, mask, image_sha, mask_sha) in loaded:
        assert case.patient == case.key.split("_")[0] and case.image.endswith(f"Slide_{case.patient}/{case.key}.png")
        assert case.mask.endswith(f"GT_{case.patient}/{case.key}.png")
        assert image.dtype == mask.dtype == np.uint8 and image.shape == (*mask.shape, 3)
        assert set(np.unique(mask)) <= {0, 255} and len(image_sha) == len(mask_sha) == 64
    if entries == _VALID:
        assert keys == ["01_1", "02_1"]
