"""Config: TOML + CLI overrides into frozen dataclasses; unknown keys, wrong types and ranges refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tnbc_pipeline.config import AugmentConfig, DatasetConfig, config_hash, load_config, to_dict
from tnbc_pipeline.errors import TnbcError

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_config_equals_the_defaults() -> None:
    assert load_config(DatasetConfig, ROOT / "configs" / "dataset.toml") == DatasetConfig()


def test_the_two_patient_valid_ablation_validates_on_two_patients_in_every_fold() -> None:
    from tnbc_pipeline.data.splits import assign
    from tnbc_pipeline.data.synth import PATIENT_COUNTS  # the release's images per patient

    cfg = load_config(DatasetConfig, ROOT / "configs" / "dataset_valid2.toml")
    assert cfg == dataclasses.replace(DatasetConfig(), split=dataclasses.replace(DatasetConfig().split, valid_fraction=0.15))
    valid = {f: assign(PATIENT_COUNTS, dataclasses.replace(cfg.split, folds=4, fold=f))["valid"] for f in range(4)}
    assert valid == {0: ["08", "11"], 1: ["08", "11"], 2: ["05", "06"], 3: ["08", "11"]}
    default = {f: assign(PATIENT_COUNTS, dataclasses.replace(DatasetConfig().split, folds=4, fold=f))["valid"]
               for f in range(4)}
    assert default == {0: ["08"], 1: ["08"], 2: ["02", "06"], 3: ["08"]}  # what the ablation changes


def test_the_offline_stain_arm_adds_stain_variants_only() -> None:
    valid2 = load_config(DatasetConfig, ROOT / "configs" / "dataset_valid2.toml")
    cfg = load_config(DatasetConfig, ROOT / "configs" / "dataset_stain.toml")
    assert cfg == dataclasses.replace(valid2, augment=dataclasses.replace(valid2.augment, stain=(0.05, 0.1, 0.2)))


def test_toml_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('seed = 4\n[augment]\nalpha = [90, 130]\nsigma = [10.0]\n[split]\ntest = ["09", "10"]\n')
    cfg = load_config(DatasetConfig, path, {"augment.sigma": [12.0]})
    assert cfg.seed == 4 and cfg.augment.alpha == (90.0, 130.0) and cfg.augment.sigma == (12.0,)
    assert cfg.split.test == ("09", "10")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 5  # type: ignore[misc]


@pytest.mark.parametrize("text, message", [
    ("sed = 1", "unknown key 'sed'"),
    ("[augment]\nelastic = 1", "unknown key 'augment.elastic'"),
    ("[augment]\nalpha = [0.0]", "augment.alpha values must be > 0"),
    ("[augment]\nsigma = [-1.0]", "augment.sigma values must be > 0"),
    ("[augment]\nalpha = 110", "augment.alpha: expected a list"),
    ("[augment]\nrotations = [400.0]", "within \\+-360"),
    ("[augment]\nalpha = []\nsigma = [8.0]", "both be empty or both non-empty"),
    ('[split]\ntest = [9]', "split.test\\[0\\]: expected str"),
    ('[split]\ntest = ["03"]\nvalid = ["03"]', "patient 03 is listed in both valid and test"),
    ("[split]\ntest_fraction = 0.6\nvalid_fraction = 0.5", "must leave patients for train"),
    ("seed = true", "seed: expected int"),
    ("[augment]\nflips = false\nrotations = []\nalpha = []\nsigma = []\ndistort = []\nshrink = []", "variant list is empty"),
    ("seed = ", "invalid TOML"),
    ("augment = 3", r"\[augment\] must be a table"),
])
def test_bad_config_is_one_clear_error_naming_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(TnbcError, match=message) as info:
        load_config(DatasetConfig, path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_bad_flag_values_are_refused() -> None:
    with pytest.raises(TnbcError, match="command line: augment.alpha values must be > 0"):
        load_config(DatasetConfig, None, {"augment.alpha": [-3.0]})


def test_hash_follows_content() -> None:
    assert config_hash(DatasetConfig()) == config_hash(DatasetConfig())
    assert config_hash(DatasetConfig()) != config_hash(DatasetConfig(augment=AugmentConfig(sigma=(8.0,))))


_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=4),
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                       max_leaves=8)
_keys = st.sampled_from(["seed", "mask_threshold", "png_compression", "png_strategy", "split", "augment", "bogus"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=4))
def test_any_document_gives_a_config_or_a_project_error(doc) -> None:
    from tnbc_pipeline.config import from_dict

    try:
        cfg = from_dict(DatasetConfig, doc, "fuzz")
    except TnbcError:
        return
    assert from_dict(DatasetConfig, to_dict(cfg), "round trip") == cfg
