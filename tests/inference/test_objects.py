"""Nuclei as objects: label images, QuPath GeoJSON polygons and per-nucleus measurements, on known shapes."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from tnbc_pipeline.inference.objects import features, measure, polygon, rasterise, save_objects, write_geojson


def _known_labels() -> np.ndarray:
    """A 60 x 120 image (wider than tall, so a transposition shows): a 10 x 10 square, a disk, an ellipse,
    a one-pixel dot and a one-pixel-wide line."""
    labels = np.zeros((60, 120), np.int32)
    labels[10:20, 65:75] = 1  # the square: x 65..74, y 10..19
    cv2.circle(labels, (30, 40), 9, 2, -1)
    cv2.ellipse(labels, (95, 40), (14, 6), 30, 0, 360, 3, -1)
    labels[5, 5] = 4
    labels[50, 40:50] = 5
    return labels


def test_polygons_round_trip_and_are_not_transposed() -> None:
    labels = _known_labels()
    for i in range(1, 6):
        ring = polygon(labels == i)
        assert ring[0] == ring[-1] and len(ring) >= 5
        x, y = np.array(ring)[:-1].T
        assert np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y) > 0  # counter-clockwise by the shoelace
        back = rasterise(ring, labels.shape)
        truth = labels == i
        if truth.sum() >= 30:
            assert (back & truth).sum() / (back | truth).sum() >= 0.9, i
    square = np.array(polygon(labels == 1))
    assert (square[:, 0].min(), square[:, 0].max(), square[:, 1].min(), square[:, 1].max()) == (65.5, 74.5, 10.5, 19.5)
    assert np.array_equal(rasterise(polygon(labels == 1), labels.shape), labels == 1)  # exact for the square


def test_measurements_of_known_shapes() -> None:
    labels = _known_labels()
    image = np.full((*labels.shape, 3), 255, np.uint8)
    image[labels == 1] = (80, 40, 160)  # a purple (haematoxylin-like) square on white
    rows = {r["id"]: r for r in measure(labels, image, np.full(labels.shape, 0.8, np.float32), mpp=0.5)}
    sq = rows[1]
    assert (sq["centroid_x"], sq["centroid_y"], sq["area_px"], sq["area_um2"]) == (70.0, 15.0, 100, 25.0)
    assert sq["equivalent_diameter_px"] == pytest.approx(np.sqrt(400 / np.pi), abs=0.01)
    assert (sq["solidity"], sq["eccentricity"], sq["mean_probability"]) == (1.0, 0.0, 0.8)
    assert sq["mean_hematoxylin_od"] > 0.05 > abs(rows[2]["mean_hematoxylin_od"])  # stained square vs white disk
    assert rows[3]["eccentricity"] > 0.8 and rows[2]["eccentricity"] < 0.2  # the ellipse is elongated
    assert measure(labels, image, np.zeros(labels.shape, np.float32))[0]["area_um2"] == ""  # no pixel size


def test_the_three_outputs_agree(tmp_path: Path) -> None:
    labels = _known_labels()
    image = np.full((*labels.shape, 3), 200, np.uint8)
    rows = save_objects(tmp_path, "img.jpg", labels, image, np.ones(labels.shape, np.float32))
    saved = cv2.imread(str(tmp_path / "labels" / "img.png"), cv2.IMREAD_UNCHANGED)
    assert saved.dtype == np.uint16 and np.array_equal(saved, labels)
    collection = json.loads((tmp_path / "geojson" / "img.geojson").read_text())
    feats = collection["features"]
    assert collection["type"] == "FeatureCollection" and len(feats) == len(rows) == labels.max() == 5
    for feat, row in zip(feats, rows):
        assert feat["properties"]["objectType"] == "detection" and feat["properties"]["classification"]["name"]
        assert feat["properties"]["measurements"]["area_px"] == row["area_px"] and row["image"] == "img.jpg"
        ring = np.array(feat["geometry"]["coordinates"][0])
        assert ring[:, 0].min() <= row["centroid_x"] <= ring[:, 0].max()  # x is x, y is y
        assert ring[:, 1].min() <= row["centroid_y"] <= ring[:, 1].max()


def test_an_image_without_nuclei_writes_empty_objects(tmp_path: Path) -> None:
    import io

    empty = np.zeros((8, 8), np.int32)
    assert save_objects(tmp_path, "e.png", empty, np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.float32)) == []
    assert json.loads((tmp_path / "geojson" / "e.geojson").read_text())["features"] == []
    buf = io.StringIO()
    assert write_geojson(buf, features(empty, [])) == 0 and json.loads(buf.getvalue())["features"] == []
