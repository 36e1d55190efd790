import csv
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from deepclust import gallery


def _clusters(k: int = 3, per: int = 12):
    """k tight groups of unit vectors, a solid-colour image per row (its group's colour)."""
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((k, 16))
    pred = np.repeat(np.arange(k), per)
    x = centers[pred] + 0.05 * rng.standard_normal((k * per, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
    images = [np.full((20, 20, 3), colours[c % 4], np.uint8) for c in pred]
    return x.astype(np.float32), pred, images


def test_confidence_is_the_share_of_neighbours_in_the_same_cluster():
    x, pred, _ = _clusters()
    assert np.allclose(
        gallery.confidence(pred, gallery.confidence_neighbors(x, k=5)), 1.0
    )  # tight, separate groups
    mixed = pred.copy()
    mixed[0] = 1  # a row of group 0 put in cluster 1: none of its neighbours agree
    conf = gallery.confidence(mixed, gallery.confidence_neighbors(x, k=5))
    assert conf[0] == 0.0 and conf[1:12].min() >= 0.8
    one = gallery.confidence_neighbors(x[:1])  # a single image has no neighbour: confidence 1
    assert one.shape == (1, 0) and gallery.confidence(pred[:1], one).tolist() == [1.0]


def test_summary_and_assignments(tmp_path):
    x, pred, _ = _clusters()
    conf = gallery.confidence(pred, gallery.confidence_neighbors(x, k=5))
    conf[3] = 0.1
    labels = np.where(np.arange(len(pred)) == 5, 2, pred)  # one row of cluster 0 is class 2
    summary = gallery.cluster_summary(pred, conf, 4, labels, ("a", "b", "c"))
    assert [s["size"] for s in summary] == [12, 12, 12, 0]
    assert summary[0]["majority"] == "a" and summary[0]["purity"] == pytest.approx(11 / 12)
    assert summary[0]["low"][0] == 3 and 3 not in summary[0]["top"]
    assert "majority" not in summary[3] and summary[3]["top"] == []
    path = tmp_path / "a.csv"
    gallery.write_assignments(path, pred, conf, lambda i: f"img{i}.png")
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == len(pred) and rows[3] == {
        "image_id": "3", "source": "img3.png", "cluster": "0", "confidence": "0.100"
    }  # fmt: skip


def _gallery(tmp_path, k=3):
    x, pred, images = _clusters(k)
    conf = gallery.confidence(pred, gallery.confidence_neighbors(x, k=5))
    summary = gallery.cluster_summary(pred, conf, k)
    path = tmp_path / "gallery.html"
    gallery.write_gallery(
        path, "test gallery", summary, lambda i: images[i], lambda i: f"img{i}", "3 clusters"
    )
    return path, x, pred


def test_the_gallery_is_one_self_contained_file(tmp_path):
    path, x, pred = _gallery(tmp_path)
    text = path.read_text()
    assert text.count("<img ") == 3 * gallery.SHOWN_TOP + 3 * gallery.SHOWN_LOW
    assert "http" not in text and "<script" not in text  # no server, nothing fetched
    assert all(f"id='cluster-{c}'" in text for c in range(3))
    rows, xy = gallery.map_layout(x)
    gallery.write_map(tmp_path / "map.png", rows, xy, pred, "map")
    with Image.open(tmp_path / "map.png") as img:
        assert img.size[0] > 100 and np.asarray(img.convert("L")).std() > 5


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return name
    pytest.skip(
        "needs Chromium for the browser test (the CI set-up, .ci/chromium, installs Debian's "
        "chromium where it can; it could not here)"
    )


def test_the_gallery_renders_in_a_real_browser_with_every_cluster(tmp_path):
    path, _, _ = _gallery(tmp_path)
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=900,1400",
            f"--screenshot={shot}",
            path.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    assert pixels.std() > 10  # not blank
    for c in range(3):  # every cluster's header bar, in its own colour, is on screen
        colour = np.array(Image.new("RGB", (1, 1), gallery.cluster_color(c)).getpixel((0, 0)))
        assert (np.abs(pixels.astype(int) - colour).sum(1) <= 6).sum() > 2000, c
    # and every cluster's thumbnails: the images' solid colours
    for colour in ((200, 30, 30), (30, 200, 30), (30, 30, 200)):
        assert (np.abs(pixels.astype(int) - colour).sum(1) <= 6).sum() > 1000, colour
