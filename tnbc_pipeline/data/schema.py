"""The TFRecord schema: one feature spec, with `encode_example` and `parse_example` side by side.

A record holds one image/mask pair exactly as the dataset stage wrote it (the PNG bytes, so nothing
is re-encoded or lost), its size, and where it came from. Decoded, an image is uint8 (H, W, 3) RGB and
a mask uint16 (H, W, 1): a binary mask's {0, 255} read as {0, 65535}, or 16-bit instance labels
(0 = background, 1..n = nuclei) where the dataset was made from instance-labelled masks.
"""

from __future__ import annotations

from tnbc_pipeline.tf_env import tf

SCHEMA_VERSION = 1
FEATURES = {
    "image_png": tf.io.FixedLenFeature([], tf.string),  # RGB PNG bytes, as on disk
    "mask_png": tf.io.FixedLenFeature([], tf.string),  # grey PNG bytes: 8-bit {0, 255} or 16-bit labels
    "height": tf.io.FixedLenFeature([], tf.int64),
    "width": tf.io.FixedLenFeature([], tf.int64),
    "key": tf.io.FixedLenFeature([], tf.string),  # item name, e.g. '04_2__elastic_a110_s8'
    "patient": tf.io.FixedLenFeature([], tf.string),  # '04'
    "source": tf.io.FixedLenFeature([], tf.string),  # source image key, '04_2'
    "op": tf.io.FixedLenFeature([], tf.string),  # augmentation op, 'elastic'
}


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def encode_example(image_png: bytes, mask_png: bytes, height: int, width: int, key: str, patient: str,
                   source: str, op: str) -> bytes:
    """One pair -> a serialized tf.train.Example following FEATURES."""
    feature = {"image_png": _bytes(image_png), "mask_png": _bytes(mask_png), "height": _int(height),
               "width": _int(width), "key": _bytes(key.encode()), "patient": _bytes(patient.encode()),
               "source": _bytes(source.encode()), "op": _bytes(op.encode())}
    # deterministic=True: map fields (the features) are written in key order, not in the hash order that
    # changes with every process's hash seed -- without it, shards differed from run to run.
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


def parse_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """A serialized Example -> {'image': uint8 (H, W, 3), 'mask': uint16 (H, W, 1) (0 background; 65535
    for a binary mask's nuclei, or instance labels 1..n), 'key', 'patient',
    'source', 'op': string scalars, 'height', 'width': int64}. Graph-safe (use inside Dataset.map)."""
    f = tf.io.parse_single_example(serialized, FEATURES)
    shape = tf.stack([f["height"], f["width"]])
    image = tf.io.decode_png(f["image_png"], channels=3)
    # uint16 for both mask kinds: an 8-bit {0, 255} mask reads as {0, 65535}, a 16-bit instance label
    # image (own data, data/layouts.py) keeps its labels exactly.
    mask = tf.io.decode_png(f["mask_png"], channels=1, dtype=tf.uint16)
    tf.debugging.assert_equal(tf.shape(image, out_type=tf.int64)[:2], shape, message="image size differs from record")
    return {"image": image, "mask": mask, "key": f["key"], "patient": f["patient"], "source": f["source"],
            "op": f["op"], "height": f["height"], "width": f["width"]}
