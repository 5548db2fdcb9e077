"""The one place TensorFlow is imported from, so its C++ start-up chatter is quieted first.

Import it only inside functions that need TensorFlow: `from tnbc_pipeline.tf_env import tf`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep INFO/WARNING start-up lines off the terminal

import tensorflow as tf  # noqa: E402

__all__ = ["tf"]
