"""Averaged weights (`ema_momentum`): the saved model holds the moving average, training continues from the
weights it left; checked against the average computed by hand from every step's weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tnbc_pipeline.tf_env import tf  # noqa: F401 - Keras' TensorFlow backend

import keras  # noqa: E402

from tnbc_pipeline.config import TrainConfig  # noqa: E402
from tnbc_pipeline.errors import TnbcError  # noqa: E402
from tnbc_pipeline.model.callbacks import BestModel  # noqa: E402
from tnbc_pipeline.model.train import compile_model  # noqa: E402


class Record(keras.callbacks.Callback):
    """Every step's trainable weights, and each epoch's as the callbacks after BestModel see them."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[list[np.ndarray]] = []
        self.epochs: list[list[np.ndarray]] = []

    def on_train_batch_end(self, batch, logs=None) -> None:
        self.steps.append([v.numpy() for v in self.model.trainable_variables])

    def on_epoch_end(self, epoch, logs=None) -> None:
        self.epochs.append([v.numpy() for v in self.model.trainable_variables])


def _fit(tmp_path: Path, momentum: float) -> tuple[keras.Model, Record, keras.Model]:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")])
    compile_model(model, TrainConfig(optimizer="adamw", lr=0.05, ema_momentum=momentum))
    rng = np.random.default_rng(0)
    x = rng.random((12, 8, 8, 3), np.float32)
    y = (x[..., :1] > 0.5).astype(np.float32)
    record = Record()
    callbacks = [BestModel(tmp_path / "model.keras", tmp_path / "history.csv", monitor=None), record]
    model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0, callbacks=callbacks)
    return model, record, keras.saving.load_model(tmp_path / "model.keras")


def test_the_saved_model_is_the_moving_average_and_training_continues_from_its_own_weights(tmp_path: Path) -> None:
    m = 0.5
    model, record, saved = _fit(tmp_path, m)
    assert len(record.steps) == 6  # 2 epochs x 3 batches
    average = record.steps[0]  # the first step copies the weights (Keras: no momentum at step 0)
    for step in record.steps[1:]:
        average = [m * a + (1 - m) * w for a, w in zip(average, step)]
    for got, want in zip(saved.trainable_variables, average):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    # BestModel put the trained weights back: what the next callbacks (and epoch) saw was the last step's
    for epoch, last_step in ((0, 2), (1, 5)):
        for got, want in zip(record.epochs[epoch], record.steps[last_step]):
            np.testing.assert_array_equal(got, want)
    assert not np.allclose(record.steps[-1][0], average[0])  # the average differs from the last weights
    # and fit's end leaves the average in the model in memory too, as saved
    for got, want in zip(model.trainable_variables, saved.trainable_variables):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_without_ema_the_saved_model_is_the_last_step_and_the_trajectory_is_the_same(tmp_path: Path) -> None:
    _, record, saved = _fit(tmp_path, 0.0)
    for got, want in zip(saved.trainable_variables, record.steps[-1]):
        np.testing.assert_array_equal(got.numpy(), want)
    (tmp_path / "ema").mkdir()
    _, averaged, _ = _fit(tmp_path / "ema", 0.5)  # the average never feeds back into the steps
    for plain_step, ema_step in zip(record.steps, averaged.steps, strict=True):
        for a, b in zip(plain_step, ema_step):
            np.testing.assert_array_equal(a, b)


def test_ema_momentum_outside_0_1_is_refused() -> None:
    with pytest.raises(TnbcError, match="ema_momentum must be in"):
        TrainConfig(ema_momentum=1.0)
