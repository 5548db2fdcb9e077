"""The trainer end to end on tiny synthetic records: the run folder, resume after SIGKILL,
determinism, refusing to retrain or mix runs, and MirroredStrategy on two logical CPUs."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tnbc_pipeline.config import AugmentConfig, DatasetConfig, ModelConfig, RecordsConfig, TrainConfig
from tnbc_pipeline.data.dataset import build_dataset
from tnbc_pipeline.data.records import build_records
from tnbc_pipeline.errors import TnbcError

ROOT = Path(__file__).resolve().parents[2]
TINY = TrainConfig(epochs=2, steps_per_epoch=2, batch_size=4, patch=32, val_batch_size=4, epoch_infer=2,
                   shuffle_buffer=16, model=ModelConfig(levels=3, base_filters=4))
TINY_TOML = """epochs = {epochs}\nsteps_per_epoch = {steps}\nbatch_size = 4\npatch = {patch}\nval_batch_size = 4
epoch_infer = 1\nshuffle_buffer = 16\n[model]\nlevels = 3\nbase_filters = 4\n"""


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory, release_root: Path) -> Path:
    out = tmp_path_factory.mktemp("train") / "TNBC"
    cfg = DatasetConfig(augment=AugmentConfig(rotations=(90.0,), alpha=(110.0,), sigma=(8.0,), distort=(), shrink=()))
    build_dataset(release_root, out, cfg, workers=1, progress=False)
    build_records(out, None, RecordsConfig(shard_mb=0.5), progress=False)
    return out / "tfrecords"


def _train(records: Path, run: Path, cfg: TrainConfig = TINY, **kw) -> dict:
    from tnbc_pipeline.model.train import train

    return train(records, run, cfg, progress=False, **kw)


def _weights(run: Path) -> list[np.ndarray]:
    import keras

    from tnbc_pipeline.model import losses  # noqa: F401 - registers the custom objects

    return keras.saving.load_model(run / "model.keras", safe_mode=True).get_weights()


def test_a_run_folder_holds_every_file(records: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = _train(records, run)
    for name in ("config.json", "model.keras", "history.csv", "train_losses.png", "train_metrics.png", "done.json",
                 "epoch_infer/epoch_001.png", "epoch_infer/epoch_002.png"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    assert not (run / "backup").exists()  # BackupAndRestore clears its state when the run completes
    config = json.loads((run / "config.json").read_text())
    assert config["config"] == json.loads(json.dumps(dataclasses.asdict(TINY)))
    assert config["records_manifest_sha256"] == json.loads((records / "index.json").read_text())["manifest_sha256"]
    lines = (run / "history.csv").read_text().splitlines()
    assert lines[0].startswith("epoch") and len(lines) == 3 and "val_dice_coef" in lines[0]
    import keras

    from tnbc_pipeline.model.speed import precision_policy  # a short run: auto is the fixed rule

    assert done["epochs_run"] == 2 and done["replicas"] == 1 and done["precision"] == precision_policy("auto")
    assert keras.mixed_precision.global_policy().name == "float32"  # restored for what the process runs next
    rows = list(csv.DictReader(open(run / "history.csv")))
    best = min(rows, key=lambda r: float(r["val_loss"]))
    assert done["best_epoch"] == int(best["epoch"]) + 1
    assert done["best"]["val_dice_coef"] == pytest.approx(float(best["val_dice_coef"]))
    made = json.loads((run / "identity.json").read_text())
    from tnbc_pipeline.config import identity_dict

    # config.json holds every setting; the identity holds the LATER ones only where they differ from their defaults
    assert made["stage"] == "run" and made["settings"]["config"] == json.loads(json.dumps(identity_dict(TINY)))
    assert made["inputs"]["records_index"] == hashlib.sha256((records / "index.json").read_bytes()).hexdigest()
    import keras

    model = keras.saving.load_model(run / "model.keras", safe_mode=True)
    assert model.predict(np.zeros((1, 96, 96, 3), np.float32), verbose=0).shape == (1, 96, 96, 1)


def test_a_finished_run_is_not_retrained_unless_forced(records: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    _train(records, run)
    stamp = (run / "model.keras").stat().st_mtime_ns
    _train(records, run)
    assert (run / "model.keras").stat().st_mtime_ns == stamp
    (run / "notes.txt").write_text("mine")
    _train(records, run, force=True)
    assert (run / "model.keras").stat().st_mtime_ns != stamp and (run / "notes.txt").read_text() == "mine"


def test_a_run_of_other_settings_is_refused_finished_or_not(records: Path, tmp_path: Path) -> None:
    from tnbc_pipeline import identity
    from tnbc_pipeline.model.speed import precision_policy
    from tnbc_pipeline.model.train import run_identity

    run = tmp_path / "run"
    _train(records, run, dataclasses.replace(TINY, epochs=1))
    stamp = (run / "model.keras").stat().st_mtime_ns
    with pytest.raises(TnbcError, match=r"run: made with other settings: config.epochs: 1 -> 2; use --force"):
        _train(records, run, dataclasses.replace(TINY, epochs=1 + 1))
    assert (run / "model.keras").stat().st_mtime_ns == stamp
    assert _train(records, run, dataclasses.replace(TINY, epochs=1))["epochs_run"] == 1  # same identity: reused
    assert _train(records, run, TINY, replace_stale=True)["epochs_run"] == 2  # other settings: trained again
    # an unfinished run (no done.json) of another model is refused the same way
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    seed_model = dataclasses.replace(TINY.model, name="unet_seed")
    identity.write(unfinished, run_identity(records, dataclasses.replace(TINY, model=seed_model),
                                            precision_policy("auto")))
    with pytest.raises(TnbcError, match="config.model.name: \"unet_seed\" -> \"unet\"; use"):
        _train(records, unfinished)
    # a folder with run files but no identity (an older version's run) is not taken for this one
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "done.json").write_text("{}")
    with pytest.raises(TnbcError, match="no identity.json"):
        _train(records, tmp_path / "old")


def test_a_run_on_other_records_is_refused(records: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    _train(records, run)
    other = tmp_path / "other"
    build_records(records.parent, other, RecordsConfig(shard_mb=0.25), progress=False)  # same data, other shards
    with pytest.raises(TnbcError, match="input records_index"):
        _train(other, run)


def test_a_resume_keeps_each_epoch_once(tmp_path: Path) -> None:
    from tnbc_pipeline.model.train import completed_epochs, trim_history

    history = tmp_path / "history.csv"
    history.write_text("epoch,loss,val_loss\n0,0.9,0.8\n1,0.7,0.6\n2,0.5,0.4\n2,0.55,0.45\n3,0.4")
    state = tmp_path / "backup" / "state"
    state.mkdir(parents=True)
    (state / "training_metadata.json").write_text(json.dumps({"epoch": 2, "batch": 0}))
    assert completed_epochs(tmp_path / "backup") == 2
    trim_history(history, completed_epochs(tmp_path / "backup"))
    assert history.read_text() == "epoch,loss,val_loss\n0,0.9,0.8\n1,0.7,0.6\n"
    trim_history(history, 0)
    assert not history.exists() and completed_epochs(tmp_path / "none") == 0


def test_cosine_schedule_keeps_the_last_epoch_at_the_floor_rate(records: Path, tmp_path: Path) -> None:
    import keras

    from tnbc_pipeline.model import losses  # noqa: F401 - registers the custom objects

    cfg = dataclasses.replace(TINY, schedule="cosine", epochs=3, lr=1e-3, min_lr=1e-5, patience=1)
    done = _train(records, tmp_path / "run", cfg)
    assert done["epochs_run"] == 3 and done["best_epoch"] == 3  # no early stop; the last epoch is the one kept
    model = keras.saving.load_model(tmp_path / "run" / "model.keras", safe_mode=True)
    assert int(model.optimizer.iterations) == 3 * cfg.steps_per_epoch  # saved after the last step
    # CosineDecay at its last step is alpha * lr = min_lr
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-5, rel=1e-4)


def test_multi_worker_with_a_bad_tf_config_is_refused_in_one_line_before_anything_is_written(
        records: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(TnbcError, match="TF_CONFIG: not JSON"):
        _train(records, tmp_path / "run", dataclasses.replace(TINY, strategy="multi_worker"))
    monkeypatch.delenv("TF_CONFIG")
    with pytest.raises(TnbcError, match="strategy multi_worker needs the TF_CONFIG environment variable"):
        _train(records, tmp_path / "run", dataclasses.replace(TINY, strategy="multi_worker"))
    assert not (tmp_path / "run").exists() and list(tmp_path.iterdir()) == []  # not even the lock


def test_same_seed_same_weights(records: Path, tmp_path: Path) -> None:
    _train(records, tmp_path / "a")
    _train(records, tmp_path / "b")
    _train(records, tmp_path / "c", dataclasses.replace(TINY, seed=1))
    a, b, c = _weights(tmp_path / "a"), _weights(tmp_path / "b"), _weights(tmp_path / "c")
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def _history_rows(path: Path) -> int:
    try:
        return max(0, len(path.read_text().splitlines()) - 1)
    except OSError:
        return 0


def test_sigkill_then_rerun_resumes_from_the_last_epoch(records: Path, tmp_path: Path) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_TOML.format(epochs=6, steps=25, patch=64))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "tnbc_pipeline", "-q", "train", "--config", str(config), "--records", str(records),
           "--run-dir", str(run)]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while _history_rows(run / "history.csv") < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    assert not (run / "done.json").exists() and (run / "backup").exists()
    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    done = json.loads((run / "done.json").read_text())
    assert done["epochs_run"] == 6 and done["epochs_this_session"] <= 5  # continued, not restarted from zero
    from tnbc_pipeline.report import read_history

    assert [int(r["epoch"]) for r in read_history(run / "history.csv")] == list(range(6))
    lines = (run / "history.csv").read_text().splitlines()
    assert len(lines) == 7 and [int(line.split(",")[0]) for line in lines[1:]] == list(range(6))  # each epoch once


MIRRORED = """
import json, sys
from pathlib import Path
from tnbc_pipeline.tf_env import tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tnbc_pipeline.config import ModelConfig, TrainConfig
from tnbc_pipeline.model.train import train
cfg = TrainConfig(epochs=1, steps_per_epoch=2, batch_size=4, patch=32, val_batch_size=4, epoch_infer=0,
                  shuffle_buffer=16, strategy="mirrored", model=ModelConfig(levels=3, base_filters=4))
print("DONE", json.dumps(train(Path(sys.argv[1]), Path(sys.argv[2]), cfg, progress=False)))
"""


def test_mirrored_strategy_on_two_logical_cpus(records: Path, tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", MIRRORED, str(records), str(tmp_path / "run")], cwd=ROOT,
                         capture_output=True, text=True)
    line = next((x for x in out.stdout.splitlines() if x.startswith("DONE ")), None)
    assert line, out.stderr[-3000:]
    done = json.loads(line[5:])
    assert done["replicas"] == 2 and done["epochs_run"] == 1 and (tmp_path / "run" / "model.keras").exists()


def test_train_command_with_flags(records: Path, tmp_path: Path) -> None:
    from tnbc_pipeline.cli import main

    config = tmp_path / "tiny.toml"
    config.write_text(TINY_TOML.format(epochs=3, steps=1, patch=32))
    args = ["-q", "train", "--config", str(config), "--records", str(records), "--run-dir", str(tmp_path / "r"),
            "--epochs", "1", "--loss", "tversky", "--seed", "3"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "r" / "config.json").read_text())["config"]
    assert (saved["epochs"], saved["loss"], saved["seed"], saved["steps_per_epoch"]) == (1, "tversky", 3, 1)
    assert "best epoch 1 of 1" in result.output


def test_auto_precision_is_bfloat16_on_a_cpu_with_native_bf16_and_the_run_identity_says_so(
        records: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tnbc_pipeline.model import speed
    from tnbc_pipeline.model import train as train_module

    for native, policy in ((True, "mixed_bfloat16"), (False, "float32")):
        monkeypatch.setattr(speed, "cpu_has_bf16", lambda native=native: native)
        assert speed.precision_policy("auto") == policy  # no GPU in the tests
        assert speed.precision_policy("float32") == "float32"  # an explicit choice is kept
    auto = train_module.run_identity(records, TINY, "mixed_bfloat16")
    assert auto.settings["precision"] == "mixed_bfloat16"
    # float32 (what auto meant before) and an explicit policy leave the identity as it was
    assert "precision" not in train_module.run_identity(records, TINY, "float32").settings
    explicit = dataclasses.replace(TINY, precision="mixed_bfloat16")
    assert "precision" not in train_module.run_identity(records, explicit, "mixed_bfloat16").settings
    assert auto.digest != train_module.run_identity(records, TINY, "float32").digest


def test_identities_leave_out_a_later_setting_at_its_default(records: Path) -> None:
    """`model.stain_norm` (like interior_target, train_on, blur_jitter) came after runs were recorded: at "none"
    a run's identity is what it was before the setting existed (so those runs are still reused); any other value
    is recorded."""
    from tnbc_pipeline.config import identity_dict, load_train_config, to_dict
    from tnbc_pipeline.identity import canonical
    from tnbc_pipeline.model.train import run_identity

    before = to_dict(TINY)
    del before["model"]["stain_norm"], before["model"]["interior_target"], before["train_on"], before["blur_jitter"]
    assert identity_dict(TINY) == before
    assert run_identity(records, TINY, "float32").settings["config"] == canonical(before)
    macenko = dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, stain_norm="macenko"))
    assert run_identity(records, macenko, "float32").settings["config"]["model"]["stain_norm"] == "macenko"
    assert run_identity(records, macenko, "float32").digest != run_identity(records, TINY, "float32").digest
    assert load_train_config(None, {"model.stain_norm": "macenko"}).model.stain_norm == "macenko"
    with pytest.raises(TnbcError, match="model.stain_norm: unknown choice 'reinhard'"):
        ModelConfig(stain_norm="reinhard")
    both = dataclasses.replace(TINY, schedule="cosine", train_on="train+valid")
    assert run_identity(records, both, "float32").settings["config"]["train_on"] == "train+valid"
    only_train = dataclasses.replace(both, train_on="train")
    assert "train_on" not in run_identity(records, only_train, "float32").settings["config"]
    blurred = dataclasses.replace(TINY, blur_jitter=1.0)  # a blurred run is never taken for an unblurred one
    assert run_identity(records, blurred, "float32").settings["config"]["blur_jitter"] == 1.0
    assert run_identity(records, blurred, "float32").digest != run_identity(records, TINY, "float32").digest


def test_validation_scores_every_valid_image_as_evaluate_does(records: Path, tmp_path: Path) -> None:
    """fit validates from the valid images held in memory: the last epoch's val_* are what Keras' evaluate()
    computes for the saved (last-epoch) model on every original valid image, a partial last batch included."""
    import keras

    from tnbc_pipeline.data.pipeline import make_dataset, training_target
    from tnbc_pipeline.model import losses  # noqa: F401 - registers the custom objects

    cfg = dataclasses.replace(TINY, schedule="cosine", val_batch_size=4, precision="float32")
    run = tmp_path / "run"
    _train(records, run, cfg)
    batches = list(make_dataset(records, "valid", training=False, batch_size=64, ops=cfg.val_ops))
    images = np.concatenate([b["image"].numpy() for b in batches])
    targets = np.concatenate([training_target(b["labels"][..., None], cfg.model.interior).numpy() for b in batches])
    assert len(images) % cfg.val_batch_size != 0  # the last batch is partial
    model = keras.saving.load_model(run / "model.keras", safe_mode=True)
    expected = model.evaluate(images, targets, batch_size=cfg.val_batch_size, verbose=0, return_dict=True)
    last = list(csv.DictReader(open(run / "history.csv")))[-1]
    assert float(last["val_loss"]) == pytest.approx(expected["loss"], abs=1e-5)
    assert float(last["val_dice_coef"]) == pytest.approx(expected["dice_coef"], abs=1e-5)


def test_a_run_trains_in_the_policy_measured_fastest_and_its_identity_records_it(
        records: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU with native bfloat16 the fixed rule says mixed_bfloat16; where float32 measures faster (as on
    the Intel Xeon of BENCHMARKS §3) a long enough run trains in float32, and done.json and identity say so."""
    from tnbc_pipeline.model import speed
    from tnbc_pipeline.model.train import run_identity

    monkeypatch.setattr(speed, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(speed, "gpu_policy", lambda: None)
    monkeypatch.setattr(speed, "MEASURE_MIN_IMAGES", 1)  # TINY counts as a long run here
    for faster, rates in (("float32", {"float32": 8.0, "mixed_bfloat16": 5.5}),
                          ("mixed_bfloat16", {"float32": 5.5, "mixed_bfloat16": 8.0})):
        monkeypatch.setenv("TNBC_CACHE_DIR", str(tmp_path / faster))
        monkeypatch.setattr(speed, "images_per_s", lambda cfg, rates=rates: rates)
        assert speed.resolve(TINY) == faster
        recorded = run_identity(records, TINY).settings.get("precision", "float32")  # float32: left out, as before
        assert recorded == faster
    monkeypatch.setenv("TNBC_CACHE_DIR", str(tmp_path / "float32"))
    done = _train(records, tmp_path / "run")
    assert done["precision"] == "float32"
    assert "precision" not in json.loads((tmp_path / "run" / "identity.json").read_text())["settings"]
