"""The `tnbc` command: instant help listing every stage, one-line errors, the dataset command end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from tnbc_pipeline.cli import main

STAGES = ["fetch", "synth", "dataset", "records", "train", "eval", "infer", "cv", "study"]


def test_help_lists_every_stage_without_heavy_imports() -> None:
    code = ("import sys; from click.testing import CliRunner; from tnbc_pipeline.cli import main; "
            "r = CliRunner().invoke(main, ['--help']); print(r.output); "
            "print('HEAVY', sorted(m for m in ('tensorflow', 'keras', 'cv2', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for stage in STAGES:
        assert f"  {stage} " in out
    assert "HEAVY []" in out


def test_dataset_command_end_to_end(release_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "TNBC"
    args = ["-q", "dataset", "--raw", str(release_root), "--out", str(out), "--alpha", "90", "--sigma", "10",
            "--workers", "1", "--split-seed", "3"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "train" in result.output and "rendered" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["augment"]["alpha"] == [90.0] and manifest["config"]["split"]["seed"] == 3
    assert [e["sigma"] for e in manifest["elastic"]] == [10.0]
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "up to date" in again.output


def test_errors_are_one_line_and_non_zero(release_root: Path, tmp_path: Path) -> None:
    cases = [
        (["dataset", "--raw", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], "no such file or folder"),
        (["dataset", "--raw", str(release_root), "--out", str(tmp_path / "o"), "--alpha", "0"], "augment.alpha values must be > 0"),
        (["eval", "--run-dir", str(tmp_path / "norun")], "no model.keras"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.output
    assert not (tmp_path / "o").exists()


def test_synth_command(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["synth", "--out", str(tmp_path), "--size", "64", "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "TNBC_NucleiSegmentation").glob("Slide_*/*.png"))) == 50


def test_choices_are_written_once() -> None:
    """The click choices are the config's Literal types, so a name cannot drift between them."""
    from tnbc_pipeline.config import InstanceMethod, LossName, ModelName, StrategyName, choices

    params = {c: {p.name: p for p in main.commands[c].params} for c in ("train", "eval", "infer", "cv")}
    assert list(params["train"]["loss"].type.choices) == list(choices(LossName))
    assert list(params["train"]["model_name"].type.choices) == list(choices(ModelName))
    assert list(params["train"]["strategy"].type.choices) == list(choices(StrategyName))
    for command in ("eval", "infer", "cv"):
        assert list(params[command]["instances"].type.choices) == ["auto", *choices(InstanceMethod)]
