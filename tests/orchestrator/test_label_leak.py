"""Selection is label-free, end to end: the pipeline (``run_benchmark`` with a search, the code
path of ``python -m orchestrator.sweep``) runs every method on the same images twice, once with
their true labels and once with the evaluation labels permuted. Everything a method decides
(its searched trials' objective values, the selected configuration, every prediction) must be
identical, while the scores differ: the permutation did reach the scorer, and nothing else.

* clustering: the label column permuted across all images;
* GCD (docs/gcd.md, GCD: what methods receive): the same split (the labelled rows and their
  labels identical), the hidden labels (of the unlabelled, scored rows) permuted among those
  rows. The split is
  drawn from which rows hold an Old class (deepclust/gcd.py ``make_split``), and the held-out
  rows a GCD search ranks trials on from the labelled rows' labels, so the hidden labels are
  permuted within the unlabelled Old-class rows and within the New-class rows separately:
  the drawn split (headline and search) is unchanged, which the test checks.
"""

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from deepclust.artifacts import ArtifactStore
from deepclust.datasets import resolve_dataset
from deepclust.gcd import default_old_classes, make_split
from orchestrator.leaderboard import SEARCH_FILE
from orchestrator.pipeline import SEARCH_VAL_FRAC, load_splits, run_benchmark
from orchestrator.search import SearchOptions
from tests.conftest import sweep_settings
from trainables.methods import METHODS

pytestmark = pytest.mark.ray

N_IMAGES = 150  # of scikit-learn's digits: 10 classes, no method gets them all right
NUM_CLASSES = 10
# FIFO, not ASHA: where ASHA stops a trial depends on when the other trial reports (timing)
SEARCH = SearchOptions(budget=2, fidelity="smoke", asha=False)
NO_SEARCH = SearchOptions(budget=0, fidelity="smoke")  # the smoke config, one run per seed
CLUSTERING = tuple(m for m in METHODS.names() if "clustering" in METHODS.get(m).settings)
GCD = tuple(m for m in METHODS.names() if "gcd" in METHODS.get(m).settings)
# Searched: one method per label-free search objective (trainables/objective.py), since the
# objective, not the method, is what a search reads: scan_selection (SCAN), the neighbour
# agreement of TEMI, IIC and SPICE (IIC), UNIC's selection score; in GCD every trial is ranked
# on held-out labelled images by the same code, searched through UNIC-GCD. Every other method
# runs its smoke config, so its own label-free choices (heads, restarts) and its predictions
# are still compared. (Each Tune search costs ~15 s of trial start-up on 2 cores.)
SEARCHED = {"clustering": ("scan", "iic", "unic"), "gcd": ("unic",)}


# Smoke fidelity made to train on 150 images, so that a leak has something to change:
# * scan_selflabel starts from a barely trained SCAN head (its most confident prediction is
#   0.10-0.2 of 10 classes): its smoke threshold (0.3) leaves no confident row and the fit
#   fails. A threshold below 1/C keeps every row;
# * SPICE's smoke config puts every image in one cluster (whose accuracy no permutation of the
#   labels changes); a few more rounds and semi steps give it several (~3 s a fit).
SMOKE_ON_150_IMAGES = {
    "scan_selflabel": {"threshold": 0.05},
    "spice": {"epochs": 10, "semi_epochs": 20, "semi_min_steps": 200},
}


@pytest.fixture(autouse=True)
def smoke_on_150_images(monkeypatch):
    """The search's base config (its fidelity) is read by the sweep's driver, which sends the
    trials and the final runs their configs: patching it there is enough."""
    from orchestrator import search

    real = search.fidelity_overrides

    def fidelity(method: str, level: str) -> dict:
        return {**real(method, level), **SMOKE_ON_150_IMAGES.get(method, {})}

    monkeypatch.setattr(search, "fidelity_overrides", fidelity)


@pytest.fixture(scope="module")
def digits() -> tuple[list[bytes], np.ndarray]:
    d = load_digits()
    images = []
    for pixels in d.images[:N_IMAGES]:
        buf = io.BytesIO()
        Image.fromarray(np.round(pixels * 255 / 16).astype(np.uint8)).save(buf, format="PNG")
        images.append(buf.getvalue())
    return images, d.target[:N_IMAGES].astype(np.int64)


@pytest.fixture(scope="module")
def out_root(tmp_path_factory) -> Path:
    """One output folder per label column, shared by both tests: the true labels' images are
    embedded and mined once for both settings (the artifacts are cached by key)."""
    return tmp_path_factory.mktemp("label_leak")


def _write(folder: Path, images: list[bytes], labels: np.ndarray) -> Path:
    """The images in the same order under the same file name; only the labels differ."""
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {"image": pa.array(images, type=pa.binary()), "label": pa.array(labels, type=pa.int16())}
    ).replace_schema_metadata({"classes": ",".join(str(c) for c in range(NUM_CLASSES))})
    pq.write_table(table, folder / "images.parquet")
    return folder / "images.parquet"


def _trials(record: dict) -> list[tuple[str, float | None]]:
    """Each trial's suggested params (JSON) and its last reported value of the search metric
    (None: the trial failed before its first report)."""
    out = []
    for params in Path(record["search_path"]).glob("*/params.json"):
        lines = params.with_name("result.json").read_text().splitlines()
        value = json.loads(lines[-1])[record["outcome"]["metric"]] if lines else None
        out.append((params.read_text(), value))
    return sorted(out, key=str)


def _sweep(ray_cluster, parquet: Path, out: Path, methods, setting: str) -> dict[str, dict]:
    """Search and run every method (one seed); per method what it decided and how it scored."""
    searched = SEARCHED[setting]
    results: list[dict] = []
    failures: list[str] = []
    for group, opts in (
        (searched, SEARCH),
        (tuple(m for m in methods if m not in searched), NO_SEARCH),
    ):
        settings = sweep_settings(out, group, setting=setting)
        splits = load_splits(resolve_dataset(f"parquet:{parquet}"), settings)
        results += run_benchmark(
            splits, settings, ArtifactStore(out), ray_cluster, search=opts, failures=failures
        )
    assert not failures
    assert sorted(r["method"] for r in results) == sorted(methods)
    records = [json.loads(p.read_text()) for p in (out / "tune").glob(f"*/{SEARCH_FILE}")]
    searches = {rec["method"]: rec for rec in records if rec["setting"] == setting}
    assert set(searches) == set(searched)  # searched for real
    runs = {}
    for r in results:
        pred = pq.read_table(Path(r["run_dir"]) / "predictions.parquet")["cluster"].to_numpy()
        search = searches.get(r["method"])
        runs[r["method"]] = {
            "predictions": pred,
            "decided": {
                "config": r["config"],
                "config_hash": r["config_hash"],
                "objective_value": r["objective_value"],
                "search": search
                and {
                    "config": search["outcome"]["config"],
                    "config_hash": search["config_hash"],
                    "best_value": search["outcome"]["best_value"],
                    "trials": _trials(search),
                },
            },
            "acc": r["acc"],
        }
        if search:
            assert len(runs[r["method"]]["decided"]["search"]["trials"]) == SEARCH.budget
            assert search["config_hash"] == r["config_hash"]  # the selected config was run
    return runs


def _differences(a, b, path: str = ""):
    """'path: a != b' for every leaf where two nested dicts differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            yield from _differences(a.get(key), b.get(key), f"{path}.{key}" if path else key)
    elif a != b:
        yield f"{path}: {a!r} != {b!r}"


def _assert_label_free(true: dict[str, dict], permuted: dict[str, dict]) -> None:
    """Same decisions and predictions for every method; different scores wherever the
    predictions are not one cluster (whose accuracy a permutation cannot change)."""
    assert set(true) == set(permuted)
    leaks = []
    for method in sorted(true):
        a, b = true[method], permuted[method]
        leaks += [f"{method} {d}" for d in _differences(a["decided"], b["decided"])]
        if not np.array_equal(a["predictions"], b["predictions"]):
            changed = int((a["predictions"] != b["predictions"]).sum())
            leaks.append(f"{method} predictions: {changed} of {len(a['predictions'])} changed")
    if leaks:
        pytest.fail("labels changed what methods decided (true != permuted):\n" + "\n".join(leaks))
    for method in sorted(true):
        if len(np.unique(true[method]["predictions"])) > 1:
            assert true[method]["acc"] != permuted[method]["acc"], method


def test_permuted_labels_change_no_clustering_search_or_prediction(ray_cluster, digits, out_root):
    images, labels = digits
    permuted = np.random.default_rng(0).permutation(labels)
    assert (permuted != labels).mean() > 0.5
    runs = {}
    for which, y in (("true", labels), ("permuted", permuted)):
        parquet = _write(out_root / which, images, y)
        runs[which] = _sweep(
            ray_cluster, parquet, out_root / which / "out", CLUSTERING, "clustering"
        )
    _assert_label_free(runs["true"], runs["permuted"])


def _stored_splits(out: Path) -> list[dict[str, np.ndarray]]:
    """Every GCD split the sweep drew (headline, and the search's with held-out rows)."""
    splits = []
    for path in out.glob("artifacts/gcd/*/*/split.npz"):
        with np.load(path) as f:
            splits.append(dict(f))
    return sorted(splits, key=lambda s: len(s["val_idx"]))


def test_hidden_gcd_labels_change_no_search_or_prediction(ray_cluster, digits, out_root):
    images, labels = digits
    old = default_old_classes("parquet:x", NUM_CLASSES)
    split = make_split(labels, old)  # as orchestrator.pipeline.ensure_gcd_split draws it
    unlabelled = split.unlabelled_idx
    is_old = np.isin(labels[unlabelled], old)
    hidden = labels.copy()
    rng = np.random.default_rng(0)
    for rows in (unlabelled[is_old], unlabelled[~is_old]):
        hidden[rows] = labels[rng.permutation(rows)]
    assert (hidden[unlabelled] != labels[unlabelled]).mean() > 0.5
    np.testing.assert_array_equal(hidden[split.labelled_idx], labels[split.labelled_idx])
    runs, drawn = {}, {}
    for which, y in (("true", labels), ("hidden_permuted", hidden)):
        parquet = _write(out_root / which, images, y)
        out = out_root / which / "out"
        runs[which] = _sweep(ray_cluster, parquet, out, GCD, "gcd")
        drawn[which] = _stored_splits(out)
    # the same splits were drawn: the headline one, and the search's with held-out rows
    assert [len(s["val_idx"]) > 0 for s in drawn["true"]] == [False, True]
    assert len(drawn["true"][1]["val_idx"]) == sum(
        int(SEARCH_VAL_FRAC * (split.labelled_y == c).sum()) for c in old
    )
    for a, b in zip(drawn["true"], drawn["hidden_permuted"], strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    np.testing.assert_array_equal(drawn["true"][0]["unlabelled_idx"], unlabelled)
    _assert_label_free(runs["true"], runs["hidden_permuted"])
