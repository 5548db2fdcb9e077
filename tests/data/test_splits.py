"""Patient-level splits: never an image-level split, disjoint, complete, seeded, k-fold partitions."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tnbc_pipeline.config import SplitConfig
from tnbc_pipeline.data.splits import assign, check_disjoint, kfold
from tnbc_pipeline.data.synth import PATIENT_COUNTS
from tnbc_pipeline.errors import TnbcError

patients_st = st.dictionaries(st.from_regex(r"\A[0-9]{2}\Z"), st.integers(1, 12), min_size=3, max_size=15)


@settings(max_examples=200, deadline=None)
@given(patients_st, st.integers(0, 2**31), st.floats(0.05, 0.45), st.floats(0.0, 0.3))
def test_default_split_is_a_disjoint_cover(patients, seed, test_fraction, valid_fraction) -> None:
    if test_fraction + valid_fraction >= 0.95:
        return
    cfg = SplitConfig(seed=seed, test_fraction=test_fraction, valid_fraction=valid_fraction)
    try:
        result = assign(patients, cfg)
    except TnbcError as exc:  # only when nothing is left for train
        assert "no patient for train" in str(exc)
        return
    all_ids = result["train"] + result["valid"] + result["test"]
    assert sorted(all_ids) == sorted(patients)  # every patient exactly once
    assert result["test"], "test takes at least one patient"
    assert result == assign(patients, cfg)  # seeded: the same every time
    for ids in result.values():
        assert ids == sorted(ids)


def test_default_split_of_the_real_counts_is_close_to_the_fractions() -> None:
    result = assign(PATIENT_COUNTS, SplitConfig())
    images = {s: sum(PATIENT_COUNTS[p] for p in ids) for s, ids in result.items()}
    assert 7 <= images["test"] <= 13  # target 20% of 50
    assert 3 <= images["valid"] <= 8  # target 10% of 50
    assert images["train"] == 50 - images["test"] - images["valid"]
    assert assign(PATIENT_COUNTS, SplitConfig(seed=1)) != result  # the seed matters


@settings(max_examples=100, deadline=None)
@given(patients_st, st.integers(2, 5), st.integers(0, 1000))
def test_kfold_test_sets_partition_the_patients(patients, folds, seed) -> None:
    if folds > len(patients):
        with pytest.raises(TnbcError, match="folds"):
            kfold(patients, folds, seed)
        return
    groups = kfold(patients, folds, seed)
    assert sorted(p for g in groups for p in g) == sorted(patients)
    tests = []
    for i in range(folds):
        try:
            result = assign(patients, SplitConfig(folds=folds, fold=i, seed=seed, valid_fraction=0.1))
        except TnbcError as exc:  # too few patients to leave one for train after test and valid
            assert "no patient for train" in str(exc) and len(patients) - len(groups[i]) <= 1
            return
        check_disjoint(result)
        assert result["test"] == groups[i]
        tests += result["test"]
    assert sorted(tests) == sorted(patients)  # every patient is in exactly one test fold


def test_kfold_balances_image_counts() -> None:
    sizes = [sum(PATIENT_COUNTS[p] for p in g) for g in kfold(PATIENT_COUNTS, 4, 0)]
    assert max(sizes) - min(sizes) <= 1, sizes  # 50 images into 4 folds: 12/13 is the best possible


def test_explicit_lists() -> None:
    result = assign(PATIENT_COUNTS, SplitConfig(test=("09", "10", "11"), valid=("08",)))
    assert result["test"] == ["09", "10", "11"] and result["valid"] == ["08"]
    assert result["train"] == ["01", "02", "03", "04", "05", "06", "07"]
    with pytest.raises(TnbcError, match="patient '12' is not in the release"):
        assign(PATIENT_COUNTS, SplitConfig(test=("12",)))


def test_a_patient_in_two_lists_is_refused() -> None:
    with pytest.raises(TnbcError, match="patient 03 is listed in both valid and test"):
        SplitConfig(valid=("03",), test=("03",))
    with pytest.raises(TnbcError, match="patient 03 is in both train and test"):
        check_disjoint({"train": ["01", "03"], "valid": [], "test": ["03"]})
