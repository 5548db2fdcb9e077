"""A trained run, loaded for inference: its model (safe_mode), output-channel map and chosen post-processing.

    RUN/model.keras         loaded with safe_mode=True (a file with a Lambda layer is refused)
    RUN/config.json         the resolved TrainConfig: patch, stride and the output-channel map come from it
    RUN/postprocess.json    the PostProcess `tnbc eval` chose on the valid split for this very model.keras
                            (its sha256 is recorded; a retrained model's file is ignored with a warning)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tnbc_pipeline import identity
from tnbc_pipeline.config import PostProcess, TrainConfig, from_dict, to_dict
from tnbc_pipeline.errors import TnbcError
from tnbc_pipeline.inference.tiling import predict_image
from tnbc_pipeline.io import read_json, sha256_file, write_json

log = logging.getLogger(__name__)

POSTPROCESS = "postprocess.json"


@dataclass(frozen=True)
class ChosenPostProcess:
    """The typed record of RUN/postprocess.json: a PostProcess and what it was chosen for."""

    post: PostProcess  # the decision
    model_sha256: str  # the model.keras it was chosen for
    tuning: str  # identity digest of the choice (model, valid records, fixed fields, grid, tta)
    chosen_on: str = "valid"  # the split it was chosen on
    criterion: str = "mean pixel dice"  # what the threshold maximised
    scores: dict[str, Any] = field(default_factory=dict)  # criterion per value tried, per field searched

    def to_json(self) -> dict[str, Any]:
        return {"postprocess": to_dict(self.post), "model_sha256": self.model_sha256, "tuning": self.tuning,
                "chosen_on": self.chosen_on, "criterion": self.criterion, "scores": self.scores}

    @classmethod
    def from_json(cls, data: Any, where: str) -> ChosenPostProcess:
        if not (isinstance(data, dict) and isinstance(data.get("model_sha256"), str)
                and isinstance(data.get("tuning"), str) and isinstance(data.get("scores", {}), dict)):
            raise TnbcError(f"{where}: malformed post-processing record")
        post = from_dict(PostProcess, data.get("postprocess"), where, "postprocess.")
        return cls(post, data["model_sha256"], data["tuning"], str(data.get("chosen_on", "valid")),
                   str(data.get("criterion", "")), dict(data.get("scores", {})))


def apply_overrides(post: PostProcess, overrides: dict[str, Any]) -> PostProcess:
    """`post` with the given fields replaced (validated again); unknown fields are an error."""
    return from_dict(PostProcess, {**to_dict(post), **overrides}, "post-processing options")


class RunModel:
    """A trained run: its model and how to call it on one image."""

    def __init__(self, run_dir: Path, tta: bool = False) -> None:
        from tnbc_pipeline.model.registry import load
        from tnbc_pipeline.tf_env import tf  # noqa: F401 - Keras' TensorFlow backend

        self.run_dir, self.tta = Path(run_dir), tta
        path = self.run_dir / "model.keras"
        if not path.is_file():
            raise TnbcError(f"{self.run_dir}: no model.keras (train the run first)")
        config_path = self.run_dir / "config.json"
        record = read_json(config_path) if config_path.is_file() else None
        if not isinstance(record, dict):
            raise TnbcError(f"{config_path}: missing or malformed run config")
        self.config: TrainConfig = from_dict(TrainConfig, record.get("config"), str(config_path))
        try:
            self.model = load(path)
        except Exception as exc:  # Keras raises bare ValueError/TypeError for unsafe or broken files
            raise TnbcError(f"{path}: cannot load the model safely ({str(exc).splitlines()[0][:200]})") from exc
        self.model_sha256 = sha256_file(path)
        self.channels = self.config.model.channels
        self.patch = self.config.patch
        self.multiple = self.config.model.stride
        found = identity.read(self.run_dir)
        self.identity = found.digest if found else ""

    def predict(self, image: np.ndarray) -> np.ndarray:
        """float32 (H, W, 3) in [0, 1] -> float32 (H, W, C) probabilities, channel i = `self.channels[i]`."""
        tile = self.patch if max(image.shape[:2]) > self.patch else None
        return predict_image(lambda b: np.asarray(self.model.predict_on_batch(b)), image, tile=tile,
                             multiple=self.multiple, tta=self.tta)

    def default_postprocess(self) -> PostProcess:
        """Before any is chosen: the interior cores split touching nuclei when the model has that channel,
        else connected components."""
        return PostProcess(instances="interior" if "interior" in self.channels else "components")

    def check(self, post: PostProcess) -> PostProcess:
        """`post`, refused in one line when it needs a channel this model lacks."""
        if post.instances == "interior" and "interior" not in self.channels:
            raise TnbcError(f"{self.run_dir}: the model has no interior channel (train with model.interior > 0)")
        return post

    def saved_postprocess(self) -> ChosenPostProcess | None:
        """RUN/postprocess.json if it was chosen for this very model.keras, else None (with a warning)."""
        path = self.run_dir / POSTPROCESS
        if not path.is_file():
            return None
        try:
            chosen = ChosenPostProcess.from_json(read_json(path), str(path))
        except TnbcError as exc:
            log.warning("%s; ignoring it", exc)
            return None
        if chosen.model_sha256 != self.model_sha256:
            log.warning("%s was chosen for another model.keras (retrained?); ignoring it", path)
            return None
        return chosen

    def save_postprocess(self, chosen: ChosenPostProcess) -> None:
        write_json(self.run_dir / POSTPROCESS, chosen.to_json())

    def resolve(self, overrides: dict[str, Any]) -> tuple[PostProcess, str]:
        """The post-processing infer uses: the saved choice, else the defaults (one warning line saying
        which), with `overrides` replacing fields one by one; and a word on where it came from."""
        chosen = self.saved_postprocess()
        if chosen is not None:
            post, source = chosen.post, f"{POSTPROCESS} (chosen on {chosen.chosen_on})"
        else:
            post, source = self.default_postprocess(), "defaults"
            if "threshold" not in overrides:
                log.warning("%s: no %s for this model (run tnbc eval to choose one on valid); using the defaults "
                            "%s", self.run_dir, POSTPROCESS,
                            ", ".join(f"{k}={v}" for k, v in to_dict(post).items()))
        if overrides:
            post = apply_overrides(post, overrides)
            source += " + " + ", ".join(f"{k}={v}" for k, v in overrides.items())
        return self.check(post), source

