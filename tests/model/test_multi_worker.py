"""`tnbc train --strategy multi_worker`: two worker processes on 127.0.0.1, as on two machines."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tnbc_pipeline.config import AugmentConfig, DatasetConfig, RecordsConfig
from tnbc_pipeline.data.dataset import build_dataset
from tnbc_pipeline.data.records import build_records
from tnbc_pipeline.report import read_history

ROOT = Path(__file__).resolve().parents[2]
TOML = """epochs = {epochs}\nsteps_per_epoch = {steps}\nbatch_size = 4\npatch = 32\nval_batch_size = {val}
epoch_infer = 1\nshuffle_buffer = 16\nstrategy = "multi_worker"\nprecision = "float32"\n[model]\nlevels = 2\nbase_filters = 4\n"""


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory, release_root: Path) -> Path:
    out = tmp_path_factory.mktemp("mw") / "TNBC"
    build_dataset(release_root, out, DatasetConfig(augment=AugmentConfig(rotations=(90.0,), alpha=(), sigma=(),
                                                                         distort=(), shrink=())),
                  workers=1, progress=False)
    build_records(out, None, RecordsConfig(shard_mb=0.5), progress=False)
    return out / "tfrecords"


def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _start(cmd: list[str], tmp_path: Path) -> list[subprocess.Popen]:
    """Worker 0 (the chief) and worker 1, each its own TF_CONFIG and TMPDIR, the same command."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _ports(2)]}
    procs = []
    for i in range(2):
        tmp = tmp_path / f"tmp{i}"
        tmp.mkdir(exist_ok=True)
        env = {**os.environ, "TMPDIR": str(tmp),
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    return procs


def _finish(procs: list[subprocess.Popen]) -> None:
    outs = [proc.communicate(timeout=300)[0] for proc in procs]
    for i, (proc, out) in enumerate(zip(procs, outs)):
        assert proc.returncode == 0, f"worker {i}: {out[-3000:]}"


def _train_cmd(records: Path, run: Path, config: Path) -> list[str]:
    return [sys.executable, "-m", "tnbc_pipeline", "-q", "train", "--config", str(config), "--records",
            str(records), "--run-dir", str(run)]


def _evaluate_alone(run: Path, records: Path) -> dict[str, float]:
    """The saved model evaluated in this one process on the valid originals, batched as the run's config says."""
    from tnbc_pipeline.config import TrainConfig, from_dict
    from tnbc_pipeline.data.pipeline import make_dataset, training_target
    from tnbc_pipeline.model.registry import load

    cfg = from_dict(TrainConfig, json.loads((run / "config.json").read_text())["config"], "config.json")
    valid = make_dataset(records, "valid", training=False, batch_size=cfg.val_batch_size, ops=cfg.val_ops).map(
        lambda b: (b["image"], training_target(b["labels"][..., None], cfg.model.interior, cfg.model.interior_target)))
    return load(run / "model.keras").evaluate(valid, verbose=0, return_dict=True)


def test_whole_validation_logs_what_evaluate_computes(records: Path) -> None:
    """The multi-worker validation callback, in one process: Keras' own val_loss and counting metrics."""
    import keras

    from tnbc_pipeline.config import ModelConfig, TrainConfig
    from tnbc_pipeline.data.pipeline import make_dataset, training_target
    from tnbc_pipeline.model import losses
    from tnbc_pipeline.model.callbacks import WholeValidation
    from tnbc_pipeline.model.train import build_model, compile_model

    cfg = TrainConfig(val_batch_size=5, model=ModelConfig(levels=2, base_filters=4))
    keras.utils.set_random_seed(0)
    model = build_model(cfg)
    compile_model(model, cfg)
    valid = make_dataset(records, "valid", training=False, batch_size=5, ops=("original",)).map(
        lambda b: (b["image"], training_target(b["labels"][..., None], cfg.model.interior, cfg.model.interior_target)))
    batches = list(valid.as_numpy_iterator())
    assert [len(x) for x, _ in batches] == [5, 1]
    callback, logs = WholeValidation(batches, losses.LOSSES[cfg.loss], losses.metrics), {"loss": 1.0}
    callback.set_model(model)
    callback.on_epoch_end(0, logs)
    kept = model.evaluate(valid, verbose=0, return_dict=True)
    for name in ("loss", "binary_accuracy", "precision", "recall"):
        assert logs[f"val_{name}"] == pytest.approx(kept[name], rel=1e-6)
    assert logs["loss"] == 1.0 and sorted(logs) == sorted(["loss"] + [f"val_{k}" for k in kept])


def test_two_workers_train_one_run_that_only_the_chief_writes(records: Path, tmp_path: Path) -> None:
    config = tmp_path / "mw.toml"
    config.write_text(TOML.format(epochs=2, steps=3, val=5))  # 6 valid images: 5 + 1, one worker none
    run = tmp_path / "run"
    _finish(_start(_train_cmd(records, run, config), tmp_path))
    done = json.loads((run / "done.json").read_text())
    assert done["replicas"] == 2 and done["epochs_run"] == 2
    assert sorted(p.name for p in run.iterdir()) == sorted(
        ["identity.json", "config.json", "model.keras", "history.csv", "train_losses.png",
         "train_metrics.png", "epoch_infer", "done.json"] + (["tensorboard"] if (run / "tensorboard").exists() else []))
    history = read_history(run / "history.csv")
    assert [int(r["epoch"]) for r in history] == [0, 1]
    # validated on all 6 valid images (5 + 1: sharded, one worker would get none): the logged val_loss is the
    # mean of the workers' (each its own BatchNorm statistics), within 1% of the chief's kept model alone
    kept = _evaluate_alone(run, records)
    assert history[done["best_epoch"] - 1]["val_loss"] == pytest.approx(kept["loss"], rel=1e-2)
    assert list((tmp_path / "tmp1").iterdir()) == []  # worker 1's scratch run folder was removed
    # beside the run: the chief's lock, as on one machine, and nothing of worker 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.lock", "mw.toml", "run", "tmp0", "tmp1"]


SHARDS = """
import hashlib, json, sys
from pathlib import Path
from tnbc_pipeline.model.distribute import make_strategy
strategy = make_strategy("multi_worker")
from tnbc_pipeline.data.pipeline import make_dataset
digest = lambda a: hashlib.sha256(a.tobytes()).hexdigest()[:16]
seen = {}
for buffer in (1, 16):
    ds = make_dataset(Path(sys.argv[1]), "train", training=True, batch_size=4, patch=32, seed=0, shuffle_buffer=buffer)
    it, whole = iter(strategy.experimental_distribute_dataset(ds)), iter(ds)
    seen[buffer] = {"mine": [[digest(x) for x in strategy.experimental_local_results(next(it)[0])[0].numpy()]
                             for _ in range(8)],  # this worker's one replica, 8 steps
                    "global": [[digest(x) for x in next(whole)[0].numpy()] for _ in range(8)]}  # undistributed
print("SHARD", json.dumps(seen))
"""


def test_each_global_batch_is_split_across_the_workers(records: Path, tmp_path: Path) -> None:
    procs = _start([sys.executable, "-c", SHARDS, str(records)], tmp_path)
    seen = []
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        line = next((x for x in out.splitlines() if x.startswith("SHARD ")), None)
        assert line, out[-3000:]
        seen.append(json.loads(line[6:]))
    w0, w1 = seen[0]["1"], seen[1]["1"]  # no shuffling: the global stream in its order
    assert w0["global"] == w1["global"] and len({c for b in w0["global"] for c in b}) == 32  # one pipeline
    # each worker takes its half of every global batch of 4: every crop once per step, none twice
    assert [a + b for a, b in zip(w0["mine"], w1["mine"])] == w0["global"]
    # shuffled (the rewritten pipeline shuffles in another order): still no crop on both workers
    s0, s1 = ({c for b in w["16"]["mine"] for c in b} for w in seen)
    assert len(s0) == len(s1) == 16 and not s0 & s1


def test_a_killed_worker_then_a_rerun_of_every_worker_resumes_from_the_backup(records: Path, tmp_path: Path) -> None:
    config = tmp_path / "mw.toml"
    config.write_text(TOML.format(epochs=5, steps=20, val=2))
    run = tmp_path / "run"
    cmd = _train_cmd(records, run, config)
    procs = _start(cmd, tmp_path)
    meta, deadline = run / "backup" / "state" / "training_metadata.json", time.monotonic() + 240
    while not meta.exists() and procs[0].poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(procs[1].pid, signal.SIGKILL)  # worker 1 is lost after the chief backed epoch 1 up
    try:  # the chief stops with an error or waits in a collective: the documented recovery stops it
        procs[0].wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(procs[0].pid, signal.SIGKILL)
    for proc in procs:
        proc.communicate()
    assert procs[1].returncode == -signal.SIGKILL and not (run / "done.json").exists(), "finished before the kill"
    _finish(_start(cmd, tmp_path))  # the same command on every worker again
    done = json.loads((run / "done.json").read_text())
    assert done["epochs_run"] == 5 and 1 <= done["epochs_this_session"] <= 4  # continued, not restarted
    assert [int(r["epoch"]) for r in read_history(run / "history.csv")] == list(range(5))
