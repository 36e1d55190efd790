import numpy as np
import pytest

from deepclust.errors import UserError
from deepclust.neighbors import clean_positives
from trainables.methods import METHODS
from trainables.methods.unic import PairSampler, UnicConfig, resolve_scale, validate


@pytest.mark.parametrize(
    "n,c,pos_k,batch",
    [
        (10_000, 10, 20, 125),
        (1_797, 10, 20, 32),
        (100, 10, 5, 32),
        (1_281_167, 1000, 20, 512),
        (20, 2, 5, 20),
    ],
)
def test_scale_rules_follow_n_and_c(n, c, pos_k, batch):
    cfg = resolve_scale(UnicConfig(), n, c, kmax=50)
    assert (cfg.pos_k, cfg.batch_size, cfg.clean_m) == (pos_k, batch, pos_k)
    steps = cfg.epochs * -(-n // cfg.batch_size)
    assert cfg.epochs >= 100 and steps >= 8000


def test_explicit_values_win_and_are_validated():
    cfg = resolve_scale(UnicConfig(pos_k=60), 1000, 10, kmax=50)
    with pytest.raises(UserError, match="pos_k=60 exceeds kmax=50"):
        validate(cfg, 50, 10)
    with pytest.raises(UserError, match="at least 2 clusters"):
        validate(resolve_scale(UnicConfig(), 1000, 1, 50), 50, 1)
    with pytest.raises(
        UserError, match="UnicConfig.neg_rule='far' is not a choice; valid: far_rank"
    ):
        UnicConfig(neg_rule="far")  # a choice field is checked when the config is built


def test_unic_never_asks_for_labels():
    assert METHODS.get("unic").uses_labels is False


def test_all_empty_cleaning_is_a_clear_error():
    nbr = np.array([[1, 2], [2, 0], [0, 1], [4, 5], [5, 3], [3, 4]])
    table = clean_positives(nbr, 2, "pair_overlap", min_shared_frac=1.0)
    assert table.count.sum() == 0
    with pytest.raises(UserError, match="no positive pair"):
        PairSampler(UnicConfig(pos_k=2), table, nbr, None)


def test_empty_anchor_policies():
    import torch

    nbr = np.array([[1, 2], [0, 2], [0, 1], [1, 0]])
    table = clean_positives(nbr, 2, "none")
    table.count[3] = 0  # anchor 3 has nothing left
    gen = torch.Generator().manual_seed(0)
    for policy, mask_value, positive in [("skip", False, 3), ("self", True, 3), ("top1", True, 1)]:
        sampler = PairSampler(UnicConfig(pos_k=2, empty_policy=policy), table, nbr, None)
        batch = sampler.sample(64, gen)
        rows = batch["anchor"] == 3
        assert rows.any()
        assert (batch["pos_mask"][rows] == mask_value).all()
        assert (batch["positive"][rows] == positive).all()


@pytest.mark.parametrize("neg_source", ["mined", "labels", "both"])
def test_gcd_labelled_anchors_use_their_labels(neg_source):
    """docs/methods.md, UNIC: GCD mode: labelled anchors take same-label labelled positives;
    labels veto contradicting mined pairs and negatives; unlabelled anchors keep mined
    positives."""
    import torch

    from deepclust.gcd import make_split
    from deepclust.knn import knn_self
    from tests.trainables.test_methods import blobs
    from trainables.methods import FitInputs

    x, y = blobs(n_per=30, k=4, d=8, seed=3)
    x = (x + 0.8 * np.random.default_rng(0).normal(size=x.shape)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # overlapping: some mined pairs are wrong
    split = make_split(y, (0, 1))
    nbr = knn_self(x, 20)[0]
    inputs = FitInputs(
        x, 4, 0, neighbors=nbr, labelled_idx=split.labelled_idx, labelled_y=split.labelled_y
    )
    unic = METHODS.get("unic")(UnicConfig(gcd_neg_source=neg_source, neg_rule="random"))
    _, sampler = unic._prepare(inputs)
    assert 0 < unic.diagnostics["gcd_vetoed_pair_frac"] < 1
    lab = np.full(len(y), -1)
    lab[split.labelled_idx] = split.labelled_y
    gen = torch.Generator().manual_seed(0)
    batch = sampler.sample(4000, gen)
    a, p = batch["anchor"].numpy(), batch["positive"].numpy()
    n = batch["negative"].numpy()[:, 0]
    labelled = lab[a] >= 0
    assert (lab[p[labelled]] == lab[a[labelled]]).all()  # ground-truth positives
    assert not ((lab[a] >= 0) & (lab[p] >= 0) & (lab[p] != lab[a])).any()  # no vetoed pair
    assert not (labelled & (lab[n] == lab[a])).any()  # a negative never shares the label
    from_labels = (lab[n] >= 0)[labelled].mean()  # labelled anchors' negatives from labels
    assert from_labels == 1.0 if neg_source == "labels" else from_labels < 0.9


def test_gcd_supervised_option_targets_the_fixed_cluster_of_each_labelled_class():
    import torch

    from deepclust.neighbors import LabelledPool

    labels = np.array([3, -1, 7, 3, -1, 7, 9])
    pool = LabelledPool(labels)
    targets = pool.cluster_of(torch.arange(7)).tolist()
    assert targets == [0, -1, 1, 0, -1, 1, 2]  # classes 3, 7, 9 -> clusters 0, 1, 2


@pytest.mark.parametrize(
    "source,want4,want0",
    [("labels", {5}, {1}), ("labels+mined", {5, 6}, {1, 2, 3}), ("mined", {5, 6}, {1, 2, 3})],
)
def test_gcd_positive_sources_on_the_spec_graph(source, want4, want0):
    """docs/methods.md, UNIC: hand-checked cases, case 10: labelled {0: A, 1: A, 4: B, 5: B};
    anchor 4 gets {5} from labels and {5} u [5, 6] with labels+mined; unlabelled anchor 3 keeps
    its cleaned mined list [2, 0]."""
    import torch

    from deepclust.neighbors import LabelledPool, label_veto

    nbr = np.array(
        [[1, 2, 3], [0, 2, 3], [0, 1, 3], [2, 4, 0], [5, 6, 3], [4, 6, 7], [5, 7, 4], [6, 5, 4]]
    )
    labels = np.array([0, 0, -1, -1, 1, 1, -1, -1])
    cfg = UnicConfig(pos_k=3, gcd_pos_labelled=source)
    table = clean_positives(
        nbr, 3, "pair_overlap", m=3, min_shared_frac=1 / 3, veto=label_veto(nbr, labels)
    )
    sampler = PairSampler(cfg, table, nbr, None, LabelledPool(labels))
    batch = sampler.sample(20_000, torch.Generator().manual_seed(0))
    a, p, m = batch["anchor"], batch["positive"], batch["pos_mask"]

    def positives(i):
        return set(p[(a == i) & m].tolist())

    assert positives(4) == want4 and positives(0) == want0
    assert positives(3) == {2, 0}


def test_gcd_supervised_term_enters_the_step_loss():
    import torch

    from trainables.heads import ClusterHead
    from trainables.methods.unic import unic_step

    torch.manual_seed(0)
    head = ClusterHead(4, 3)
    batch = {
        "anchor": torch.randn(6, 4),
        "positive": torch.randn(6, 4),
        "pos_mask": torch.ones(6, dtype=torch.bool),
        "anchor_target": torch.tensor([0, -1, 2, -1, 1, 0]),
    }
    plain, logs0 = unic_step(
        head, {k: v for k, v in batch.items() if k != "anchor_target"}, UnicConfig()
    )
    with_sup, logs = unic_step(head, batch, UnicConfig(w_sup=2.0))
    assert "loss/sup" in logs and "loss/sup" not in logs0
    assert float(with_sup) == pytest.approx(float(plain) + 2.0 * logs["loss/sup"], rel=1e-5)


def test_selection_score_of_a_saturated_head_is_finite():
    # a confident head (one-hot float32 probabilities) whose random partners share clusters:
    # the negative term must sit at its -log(eps) bound, not log1p(-1) = inf (which would rank
    # a healthy, confident head with the degenerate ones)
    import torch

    from trainables.heads import ClusterHead
    from trainables.methods import FitInputs

    c, n = 4, 400
    feats = np.eye(c, dtype=np.float32)[np.arange(n) % c]  # balanced, unit norm
    nbr = np.stack([(np.arange(n) + c * s) % n for s in range(1, 6)], axis=1)  # same class
    head = ClusterHead(c, c)
    with torch.no_grad():
        head.net.weight.copy_(200.0 * torch.eye(c))
        head.net.bias.zero_()
    method = METHODS.get("unic")(UnicConfig())
    method.model = head.eval()
    score = method.selection_score(FitInputs(feats, c, 0, neighbors=nbr))
    assert np.isfinite(score)


def test_labels_plus_mined_runs_end_to_end_in_gcd():
    """The third source of labelled anchors' positives (docs/methods.md, UNIC: GCD mode) passes
    the config, the validation and a whole GCD fit (it was once refused by validate)."""
    from deepclust.config import from_dict
    from deepclust.gcd import make_split
    from deepclust.knn import knn_self
    from tests.trainables.test_methods import blobs
    from trainables.methods import FitInputs

    x, y = blobs(n_per=20, k=3, d=8, seed=1)
    split = make_split(y, (0, 1))
    inputs = FitInputs(
        x,
        3,
        0,
        neighbors=knn_self(x, 10)[0],
        labelled_idx=split.labelled_idx,
        labelled_y=y[split.labelled_idx],
        unlabelled_idx=split.unlabelled_idx,
    )
    cfg = from_dict(UnicConfig, {"gcd_pos_labelled": "labels+mined", "epochs": 3})
    validate(resolve_scale(cfg, len(x), 3, 10), 10, 3)
    unic = METHODS.get("unic")(cfg)
    diagnostics = unic.fit(inputs)
    assert "gcd_vetoed_pair_frac" in diagnostics
    pred = unic.predict(x)
    assert pred.shape == (len(x),) and 0 <= pred.min() and pred.max() < 3
