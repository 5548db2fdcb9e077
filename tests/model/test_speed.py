"""`precision = "auto"` on a CPU: measured once per machine and model, cached, recorded in the run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tnbc_pipeline.config import ModelConfig, TrainConfig
from tnbc_pipeline.model import speed

LONG = TrainConfig(epochs=20, steps_per_epoch=40, batch_size=8)  # 6,400 crops: worth measuring for
SHORT = dataclasses.replace(LONG, epochs=2)  # 640 crops: not


class FakeMeasure:
    """A measurement that answers `rates` and counts its calls."""

    def __init__(self, rates: dict[str, float]) -> None:
        self.rates, self.calls = rates, 0

    def __call__(self, cfg: TrainConfig) -> dict[str, float]:
        self.calls += 1
        return dict(self.rates)


@pytest.fixture
def bf16_cpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A CPU that reports native bfloat16, no GPU, and an empty cache of this test's own."""
    monkeypatch.setattr(speed, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(speed, "gpu_policy", lambda: None)
    monkeypatch.setenv("TNBC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "speed.json"


def test_the_faster_policy_wins_and_a_tie_keeps_float32() -> None:
    assert speed.fastest({"float32": 7.0, "mixed_bfloat16": 9.0}) == "mixed_bfloat16"
    assert speed.fastest({"float32": 8.1, "mixed_bfloat16": 5.7}) == "float32"
    assert speed.fastest({"float32": 6.0, "mixed_bfloat16": 6.0}) == "float32"


def test_a_long_run_is_measured_once_and_then_read_from_the_cache(bf16_cpu: Path) -> None:
    measure = FakeMeasure({"float32": 8.0, "mixed_bfloat16": 5.5})  # the Intel Xeon's answer
    assert speed.precision_policy("auto") == "mixed_bfloat16"  # what the fixed rule would have said
    assert speed.resolve(LONG, measure) == "float32" and measure.calls == 1
    assert speed.resolve(LONG, measure) == "float32" and measure.calls == 1  # cached
    saved = json.loads(bf16_cpu.read_text())
    assert list(saved.values()) == [{"precision": "float32", "images_per_s": {"float32": 8.0, "mixed_bfloat16": 5.5}}]
    # another model is measured on its own; the first answer is kept beside it
    other = dataclasses.replace(LONG, model=ModelConfig(base_filters=32))
    assert speed.resolve(other, FakeMeasure({"float32": 4.0, "mixed_bfloat16": 6.0})) == "mixed_bfloat16"
    assert sorted(v["precision"] for v in json.loads(bf16_cpu.read_text()).values()) == ["float32", "mixed_bfloat16"]
    assert speed.resolve(LONG, measure) == "float32" and measure.calls == 1
    # an unreadable cache is measured again and rewritten
    bf16_cpu.write_text("{not json")
    assert speed.resolve(LONG, measure) == "float32" and measure.calls == 2
    assert len(json.loads(bf16_cpu.read_text())) == 1


def test_what_is_not_measured_follows_the_fixed_rule(bf16_cpu: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    never = FakeMeasure({"float32": 9.0, "mixed_bfloat16": 1.0})
    assert speed.resolve(SHORT, never) == "mixed_bfloat16"  # too short to repay a minute of measuring
    assert speed.resolve(dataclasses.replace(LONG, precision="mixed_bfloat16"), never) == "mixed_bfloat16"
    assert speed.resolve(dataclasses.replace(LONG, strategy="multi_worker"), never) == "mixed_bfloat16"
    monkeypatch.setattr(speed, "gpu_policy", lambda: "mixed_float16")
    assert speed.resolve(LONG, never) == "mixed_float16"
    monkeypatch.setattr(speed, "gpu_policy", lambda: None)
    monkeypatch.setattr(speed, "cpu_has_bf16", lambda: False)
    assert speed.resolve(LONG, never) == "float32"  # nothing to choose between
    assert never.calls == 0 and not bf16_cpu.exists()


def test_a_real_measurement_times_both_policies_and_leaves_the_process_as_it_was() -> None:
    import keras

    tiny = TrainConfig(batch_size=2, patch=32, model=ModelConfig(levels=2, base_filters=4, interior=2))
    rates = speed.images_per_s(tiny)
    assert list(rates) == ["float32", "mixed_bfloat16"] and all(r > 0 for r in rates.values())
    assert keras.mixed_precision.global_policy().name == "float32"


def test_where_the_cache_cannot_be_written_one_process_measures_once(bf16_cpu: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("TNBC_CACHE_DIR", str(tmp_path / "file" / "cache"))  # under a file: cannot be created
    measure = FakeMeasure({"float32": 8.0, "mixed_bfloat16": 5.5})
    monkeypatch.setattr(speed, "_UNKEPT", {})
    assert speed.resolve(LONG, measure) == "float32" and speed.resolve(LONG, measure) == "float32"
    assert measure.calls == 1  # the run's identity and its training get the same answer
