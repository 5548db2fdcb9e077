"""Macenko stain normalisation as the model's first layer (`[model] stain_norm = "macenko"`), pure Keras 3.

Inside the model, so training, eval, infer and slides normalise the same way with no extra files, and a
saved model carries it (safe_mode loads it). Per image of the batch (Macenko et al. 2009):

    RGB (B, H, W, 3) float in [0, 1] -> optical density OD = -ln(max(RGB, 1/255))
    tissue = pixels whose OD exceeds BETA in every channel
    the plane of the two largest principal directions of the tissue OD (eigh of its 3x3 covariance)
    each tissue pixel's angle in that plane; its 1st and 99th percentiles give the two stain vectors,
      haematoxylin first (the one absorbing more red)
    concentrations C = OD projected on the stains (least squares); C scaled so that its 99th percentile
      over all pixels becomes the reference's; RGB = exp(-C @ REF_STAINS), in [0, 1]

An image with fewer than MIN_TISSUE tissue pixels, or whose tissue is one colour (the two stain vectors
coincide), passes unchanged: there is nothing to estimate or separate. The
reference is the one every public Macenko implementation ships (Veta's MATLAB code, torchstain, staintools:
H = (0.5626, 0.7201, 0.4062), E = (0.2159, 0.8012, 0.5581), 99th-percentile concentrations 1.9705, 1.0308).
Percentiles are nearest-rank. The statistics are the input's own: a training crop's, an image's, a tile's.
Computed in float32 whatever the mixed-precision policy (eigh and logs in bfloat16 are too coarse).
"""

from __future__ import annotations

import keras
from keras import layers, ops

BETA = 0.15  # OD under this in any channel: background, not used to find the stains
PERCENTILE = 0.01  # the stain vectors sit at the 1st and 99th percentile angles (robust extremes)
MAX_PERCENTILE = 0.99  # the concentration each image is scaled to match
MIN_TISSUE = 64  # fewer tissue pixels than this: the image is returned unchanged
MIN_DET = 1e-4  # stain vectors (unit) closer than ~0.6 degrees: one stain, the image is returned unchanged
REF_STAINS = ((0.5626, 0.7201, 0.4062), (0.2159, 0.8012, 0.5581))  # H, E optical densities per unit concentration
REF_MAX = (1.9705, 1.0308)  # H, E 99th-percentile concentrations of the reference
_FAR = 1e9  # sorts masked-out values after every real one


def _percentile(values, mask, q: float):
    """Nearest-rank q-quantile of `values` (B, N) over the True entries of `mask` (B, N) -> (B,)."""
    ranked = ops.sort(ops.where(mask, values, _FAR), axis=-1)
    count = ops.sum(ops.cast(mask, "float32"), axis=-1)
    index = ops.cast(ops.round(q * ops.maximum(count - 1.0, 0.0)), "int32")
    return ops.take_along_axis(ranked, index[:, None], axis=-1)[:, 0]


def _unit(v):
    return v / ops.sqrt(ops.sum(v * v, axis=-1, keepdims=True))


@keras.saving.register_keras_serializable(package="tnbc")
class MacenkoNormalize(layers.Layer):
    """(B, H, W, 3) RGB float in [0, 1] -> the same images with their stains mapped to the reference's."""

    def __init__(self, **kwargs) -> None:
        kwargs["dtype"] = "float32"  # its own policy: float32 maths under mixed precision too
        super().__init__(**kwargs)

    def call(self, rgb):
        rgb = ops.cast(rgb, "float32")
        shape = ops.shape(rgb)
        od = ops.reshape(-ops.log(ops.maximum(rgb, 1.0 / 255.0)), (shape[0], -1, 3))  # (B, N, 3)
        tissue = ops.all(od > BETA, axis=-1)  # (B, N)
        weight = ops.cast(tissue, "float32")[..., None]
        count = ops.maximum(ops.sum(weight, axis=1), 1.0)  # (B, 1)
        mean = ops.sum(od * weight, axis=1) / count  # (B, 3)
        centred = (od - mean[:, None, :]) * weight
        cov = ops.einsum("bni,bnj->bij", centred, centred) / count[:, :, None]
        _, vectors = ops.eigh(cov)  # ascending eigenvalues: the plane is the last two columns
        plane = vectors[:, :, 1:]  # (B, 3, 2)
        # eigenvectors have no sign; stains absorb in every channel, so point each into the positive octant
        plane = plane * ops.where(ops.sum(plane, axis=1, keepdims=True) < 0, -1.0, 1.0)
        coords = ops.einsum("bni,bik->bnk", od, plane)  # (B, N, 2)
        angle = ops.arctan2(coords[..., 1], coords[..., 0])
        ends = [_percentile(angle, tissue, q) for q in (PERCENTILE, 1.0 - PERCENTILE)]
        first, second = (_unit(ops.einsum("bik,bk->bi", plane, ops.stack([ops.cos(a), ops.sin(a)], -1)))
                         for a in ends)
        h_first = (first[:, 0] > second[:, 0])[:, None]  # haematoxylin absorbs more red than eosin
        stains = ops.stack([ops.where(h_first, first, second), ops.where(h_first, second, first)], axis=-1)
        # least-squares concentrations: OD @ S (S^T S)^-1, the 2x2 inverse in closed form
        gram = ops.einsum("bik,bil->bkl", stains, stains)
        det = gram[:, 0, 0] * gram[:, 1, 1] - gram[:, 0, 1] * gram[:, 1, 0]
        distinct = det > MIN_DET  # one colour of tissue gives one stain twice: nothing to separate
        inverse = ops.stack([ops.stack([gram[:, 1, 1], -gram[:, 0, 1]], -1),
                             ops.stack([-gram[:, 1, 0], gram[:, 0, 0]], -1)], 1)
        inverse = inverse / ops.where(distinct, det, 1.0)[:, None, None]
        conc = ops.einsum("bni,bik,bkl->bnl", od, stains, inverse)  # (B, N, 2)
        everywhere = ops.ones_like(tissue)
        high = ops.stack([_percentile(conc[..., k], everywhere, MAX_PERCENTILE) for k in range(2)], -1)
        scaled = conc * (ops.convert_to_tensor(REF_MAX, "float32") / ops.maximum(high, 1e-6))[:, None, :]
        out = ops.exp(-ops.einsum("bnk,ki->bni", scaled, ops.convert_to_tensor(REF_STAINS, "float32")))
        out = ops.reshape(ops.clip(out, 0.0, 1.0), shape)
        usable = (ops.sum(ops.cast(tissue, "float32"), axis=1) >= MIN_TISSUE) & distinct & ops.all(high > 1e-6, -1)
        return ops.where(usable[:, None, None, None], out, rgb)

    def compute_output_shape(self, shape):
        return shape


def with_stain_norm(model: keras.Model) -> keras.Model:
    """`model` behind a MacenkoNormalize input layer; same name, inputs and outputs otherwise."""
    inputs = keras.Input((None, None, 3), name="image")
    return keras.Model(inputs, model(MacenkoNormalize(name="macenko")(inputs)), name=model.name)
