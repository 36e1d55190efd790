import pytest
import torch
from torch import nn

from deepclust.errors import UserError
from trainables.loop import LoopConfig, LoopHooks, fit


class Regression:
    """y = 3x - 1 with a fixed per-epoch batch stream (deterministic)."""

    def batches(self, epoch, steps):
        gen = torch.Generator().manual_seed(epoch)
        for _ in range(steps):
            x = torch.randn(32, 1, generator=gen)
            yield {"x": x, "y": 3 * x - 1}

    def training_step(self, model, batch):
        loss = ((model(batch["x"]) - batch["y"]) ** 2).mean()
        return loss, {"mse": float(loss.detach())}


def _model():
    torch.manual_seed(0)
    return nn.Linear(1, 1)


CFG = LoopConfig(epochs=4, steps_per_epoch=25, lr=0.05)


def test_learns_and_reports_every_epoch():
    reports = []
    model = fit(_model(), Regression(), CFG, LoopHooks(report=lambda m, s: reports.append(m)))
    assert [r["epoch"] for r in reports] == [1, 2, 3, 4]
    assert reports[-1]["mse"] < 0.05 < reports[0]["mse"]
    assert abs(float(model.weight) - 3) < 0.1


def test_resume_from_a_checkpoint_matches_an_uninterrupted_run():
    states = []
    full = fit(_model(), Regression(), CFG, LoopHooks(report=lambda m, s: states.append(s)))
    resumed = fit(_model(), Regression(), CFG, LoopHooks(resume_state=states[1]))
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_resume_from_a_checkpoint_file_matches_an_uninterrupted_run(optimizer, tmp_path):
    """The checkpoint goes to disk as data (weights-only loadable, as Tune/Train store it) and
    a run resumed from the file ends where the uninterrupted one does."""
    from trainables.state_io import load_state, save_state

    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(1, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))

    cfg = LoopConfig(4, 5, 0.01, 0.01, optimizer, "cosine", warmup_steps=3)
    path = tmp_path / "state.pt"

    def report(metrics, state):
        if state["epoch"] == 2:
            save_state(state, path)

    full = fit(model(), Regression(), cfg, LoopHooks(report=report))
    torch.load(path, weights_only=True)
    resumed = fit(model(), Regression(), cfg, LoopHooks(resume_state=load_state(path)))
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_report_every_keeps_the_last_epoch():
    epochs = []
    cfg = LoopConfig(epochs=5, steps_per_epoch=2, lr=0.01, report_every=2)
    fit(_model(), Regression(), cfg, LoopHooks(report=lambda m, s: epochs.append(m["epoch"])))
    assert epochs == [2, 4, 5]


def test_nan_loss_is_a_one_line_user_error():
    class Broken(Regression):
        def training_step(self, model, batch):
            return model(batch["x"]).sum() * float("nan"), {}

    with pytest.raises(UserError, match="loss became nan at epoch 1, step 1"):
        fit(_model(), Broken(), CFG, LoopHooks())


def test_cosine_schedule_ends_at_the_floor():
    lrs = []
    cfg = LoopConfig(epochs=2, steps_per_epoch=5, lr=0.1, schedule="cosine", optimizer="sgd")
    fit(_model(), Regression(), cfg, LoopHooks(report=lambda m, s: lrs.append(m["lr"])))
    assert 0.1 > lrs[0] > lrs[1] and lrs[1] < 0.01  # cosine decay towards lr * 1e-3


@pytest.mark.parametrize("native_bf16", [True, False])
@pytest.mark.parametrize("cpu_amp", [True, False])
def test_cpu_bf16_autocast_only_when_asked_and_native(monkeypatch, cpu_amp, native_bf16):
    """``cpu_amp`` trains the step under bf16 autocast on a CPU with native bf16 units, and
    in fp32 otherwise (emulated bf16 would be slower than fp32); the model still learns."""
    import trainables.loop as loop

    monkeypatch.setattr(loop, "cpu_has_bf16", lambda: native_bf16)
    seen = []

    class Recording(Regression):
        def training_step(self, model, batch):
            out = model(batch["x"])
            seen.append((torch.is_autocast_enabled("cpu"), out.dtype))
            return ((out.float() - batch["y"]) ** 2).mean(), {}

    cfg = LoopConfig(epochs=4, steps_per_epoch=25, lr=0.05, cpu_amp=cpu_amp)
    model = fit(_model(), Recording(), cfg, LoopHooks(device=torch.device("cpu")))
    on = cpu_amp and native_bf16
    assert set(seen) == {(on, torch.bfloat16 if on else torch.float32)}
    assert model.weight.dtype == torch.float32  # autocast casts the matmul, not the weights
    assert abs(float(model.weight) - 3) < 0.1
