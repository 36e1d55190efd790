"""Run state under --output is data, never code (trainables/state_io.py): every state a run
writes round-trips through ``torch.load(weights_only=True)``, and a planted pickle is refused
with a one-line UserError before anything in it runs."""

import dataclasses
import os
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from deepclust.config import from_dict
from deepclust.errors import UserError
from tests.trainables.test_methods import blobs, inputs_for
from trainables import inputs, loop, state_io
from trainables.methods import METHODS, ClusteringMethod

REFUSED = "is not a state file this version wrote"


class _Touch:
    """A pickle that creates ``marker`` when it is unpickled (what a planted file could do)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _assert_same(a, b, where="state"):
    assert type(a) is type(b), (where, type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b), where
    else:
        assert a == b, where


def _round_trip(state, path: Path):
    state_io.save_state(state, path)
    torch.load(path, map_location="cpu", weights_only=True)  # the format itself: data only
    return state_io.load_state(path)


class _FirstCheckpoint(Exception):
    pass


@pytest.fixture(scope="module")
def fitted_scan():
    """SCAN fitted with its smoke config (the one method with an export_state) and its
    inputs: what scan_selflabel starts from."""
    scan_cls = METHODS.get("scan")
    x, y = blobs(seed=2)
    fit_inputs = inputs_for(scan_cls, x, y)
    scan = scan_cls(from_dict(scan_cls.Config, scan_cls.smoke))
    scan.fit(fit_inputs)
    return scan, fit_inputs


def test_the_exporters_are_known():
    """A method that gains an export_state() gets its own round trip (fixture above)."""
    base = ClusteringMethod.export_state
    assert [n for n in METHODS.names() if METHODS.get(n).export_state is not base] == ["scan"]


def test_the_exported_state_round_trips(fitted_scan, tmp_path):
    """export_state() (what a staged method starts from) comes back equal from a weights-only
    load; a file an earlier version wrote with a plain torch.save of it still loads."""
    exported = fitted_scan[0].export_state()
    _assert_same(exported, _round_trip(exported, tmp_path / inputs.STATE_FILE))
    torch.save(exported, tmp_path / "old.pt")
    _assert_same(exported, inputs.load_state(str(tmp_path / "old.pt")))


@pytest.mark.parametrize("name", [n for n in METHODS.names() if METHODS.get(n).trainable])
def test_every_loop_checkpoint_round_trips(name, fitted_scan, tmp_path):
    """The checkpoint a trainable method's loop reports (model, optimiser, epoch: what Tune
    and Train store and a resumed run reads) comes back equal from a weights-only load."""
    method_cls = METHODS.get(name)
    checkpoints = []

    def report(metrics, state):
        checkpoints.append((state, _round_trip(state, tmp_path / "state.pt")))
        raise _FirstCheckpoint  # the later ones hold the same kinds of values

    scan, scan_inputs = fitted_scan
    if method_cls.starts_from == "scan":
        fit_inputs = dataclasses.replace(scan_inputs, init_state=scan.export_state())
    else:
        fit_inputs = inputs_for(method_cls, *blobs(seed=2))
    method = method_cls(from_dict(method_cls.Config, method_cls.smoke))
    with pytest.raises(_FirstCheckpoint):
        method.fit(fit_inputs, loop.LoopHooks(report=report, device=torch.device("cpu")))
    ((state, back),) = checkpoints
    assert {"model", "optimizer", "epoch"} <= set(state)
    _assert_same(state, back)


def test_a_staged_method_starts_from_the_state_file(fitted_scan, tmp_path):
    """scan_selflabel fitted from scan's state read back from disk equals one fitted from the
    in-memory state."""
    child_cls = METHODS.get("scan_selflabel")
    scan, fit_inputs = fitted_scan
    state_file = tmp_path / inputs.STATE_FILE
    state_io.save_state(scan.export_state(), state_file)
    preds = []
    for init_state in (scan.export_state(), inputs.load_state(str(state_file))):
        child = child_cls(from_dict(child_cls.Config, child_cls.smoke))
        child.fit(dataclasses.replace(fit_inputs, init_state=init_state))
        preds.append(child.predict(fit_inputs.embeddings))
    np.testing.assert_array_equal(*preds)


@dataclasses.dataclass(frozen=True)
class _Cfg:
    lr: float = 0.1
    name: str = "adam"
    sizes: tuple = (1, 2)


def test_the_encoding_layer_stores_numpy_configs_and_generators_as_data(tmp_path):
    gen = torch.Generator().manual_seed(7)
    sd = torch.nn.BatchNorm1d(3).state_dict()
    state = {
        "arr": np.arange(6, dtype=np.int32).reshape(2, 3),
        "zero_d": np.array(1.5),
        "np_scalars": [np.int64(3), np.float32(0.25), np.bool_(True), np.str_("x")],
        "config": _Cfg(),
        "rng": gen,
        "path": Path("/a/b"),
        "model": sd,
        "nested": {1: (None, b"raw", torch.float16, float("nan"))},
    }
    back = _round_trip(state, tmp_path / "s.pt")
    _assert_same(back["arr"], state["arr"])
    assert back["zero_d"].shape == () and float(back["zero_d"]) == 1.5
    assert back["np_scalars"] == [3, 0.25, True, "x"]
    assert [type(v) for v in back["np_scalars"]] == [int, float, bool, str]
    assert back["config"] == {"lr": 0.1, "name": "adam", "sizes": (1, 2)}  # a dict, not a class
    assert back["path"] == "/a/b"
    assert torch.equal(torch.rand(4, generator=back["rng"]), torch.rand(4, generator=gen))
    assert isinstance(back["model"], OrderedDict) and back["model"]._metadata == sd._metadata
    _assert_same(back["nested"], state["nested"])


@pytest.mark.parametrize(
    "bad", [object(), np.array([object()]), {"__deepclust_ndarray__": 1}, _Touch(Path("x"))]
)
def test_what_a_state_file_cannot_hold_is_refused_when_saving(bad, tmp_path):
    with pytest.raises(TypeError, match="state"):
        state_io.save_state({"x": bad}, tmp_path / "s.pt")
    assert not list(tmp_path.iterdir())  # no file, not even a temporary one


def _plant_torch_save(path: Path, marker: Path) -> None:
    torch.save({"head": _Touch(marker), "kind": "linear", "finetuned": False}, path)


def _plant_raw_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"head": _Touch(marker)}, protocol=2))


def _read_parent_state(directory: Path, monkeypatch):
    return inputs.load_state(str(directory / inputs.STATE_FILE))


def _read_tune_trial_state(directory: Path, monkeypatch):
    from trainables import tune_trial

    return tune_trial._resume_state(directory / "state.pt")


def _read_train_checkpoint(directory: Path, monkeypatch):
    from ray.train import Checkpoint

    from trainables import ray_train

    checkpoint = Checkpoint.from_directory(str(directory))
    monkeypatch.setattr(ray_train.ray.train, "get_checkpoint", lambda: checkpoint)
    return ray_train._resume_state()


READERS = {  # the file name each reader opens, and the reader (as a run calls it)
    "parent_state": (inputs.STATE_FILE, _read_parent_state),
    "tune_trial_state": ("state.pt", _read_tune_trial_state),
    "train_checkpoint": ("state.pt", _read_train_checkpoint),
}


@pytest.mark.parametrize("plant", [_plant_torch_save, _plant_raw_pickle])
@pytest.mark.parametrize("reader", list(READERS))
def test_a_planted_pickle_is_refused_and_never_runs(reader, plant, tmp_path, monkeypatch):
    file_name, read = READERS[reader]
    marker = tmp_path / "pwned"
    state_file = tmp_path / file_name
    plant(state_file, marker)
    assert not marker.exists()
    try:
        loaded, message = read(tmp_path, monkeypatch), None
    except UserError as exc:
        loaded, message = None, str(exc)
    assert not marker.exists(), "unpickling the planted file ran its code"
    assert loaded is None and message == (
        f"{state_file} {REFUSED} (it holds Python objects that would run code on loading); "
        "delete it and rerun"
    )
    assert "\n" not in message


DAMAGED = "it is damaged or in another format"


@pytest.mark.parametrize(
    "write, fragment",
    [
        (lambda path: path.write_bytes(b"not a checkpoint at all"), DAMAGED),
        (lambda path: path.write_bytes(b"PK\x03\x04truncated zip"), DAMAGED),
        (lambda path: torch.save({"x": {state_io.NUMPY_TAG: 3}}, path), DAMAGED),
        (lambda path: None, "is missing"),
        (lambda path: path.mkdir(), "cannot read state file"),
    ],
)
def test_a_damaged_or_missing_file_is_a_one_line_error(write, fragment, tmp_path):
    path = tmp_path / inputs.STATE_FILE
    write(path)
    with pytest.raises(UserError, match=fragment) as err:
        inputs.load_state(str(path))
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_a_file_that_is_not_a_dict_is_refused(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "s.pt")
    with pytest.raises(UserError, match=f"{REFUSED} \\(it holds a list, not a dict\\)"):
        state_io.load_state(tmp_path / "s.pt")


def test_a_planted_parent_state_fails_the_staged_run_in_one_line(
    ray_cluster, tiny_parquet, tmp_path
):
    """End to end: a model_state.pt planted in the results folder fails the staged method's
    run (the state is read inside a Ray task) with the one line the CLI prints
    (orchestrator.cli.run_cli), and its code never runs."""
    from deepclust.artifacts import ArtifactStore
    from deepclust.datasets import resolve_dataset
    from orchestrator.cli import user_error_in
    from orchestrator.pipeline import MethodRun, load_splits, run_benchmark
    from tests.conftest import sweep_settings

    settings = sweep_settings(tmp_path / "out", methods=("scan_selflabel",))
    store = ArtifactStore(settings.output)
    splits = load_splits(resolve_dataset(f"parquet:{tiny_parquet}"), settings)
    parent = {"min_steps": 100, "num_heads": 2}

    def run(epochs: int):  # workers=0: both stages train in Ray tasks, as a sweep runs them
        child = MethodRun("scan_selflabel", 0, {"threshold": 0.5, "epochs": epochs}, 0)
        child = dataclasses.replace(child, parent_config=parent)
        return run_benchmark(splits, settings, store, ray_cluster, [child])

    run(3)
    (state_file,) = settings.output.glob(f"runs/**/{inputs.STATE_FILE}")  # scan's
    marker = tmp_path / "pwned"
    _plant_torch_save(state_file, marker)
    with pytest.raises(Exception) as err:
        run(2)  # the child trains again, from the parent's (cached) run folder
    assert not marker.exists(), "the planted file ran its code"
    assert user_error_in(err.value) == (
        f"{state_file} {REFUSED} (it holds Python objects that would run code on loading); "
        "delete it and rerun"
    )
