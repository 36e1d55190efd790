import numpy as np
import pytest
import torch

from deepclust import knn as knn_module
from deepclust.errors import UserError
from deepclust.knn import (
    knn_search,
    knn_self,
    l2_normalize,
    merge_topk,
    neighbor_precision,
    resolve_backend,
)
from deepclust.knn_stream import (
    HEADER_BYTES,
    FeatureFile,
    knn_self_blockwise,
    mine_knn_npy,
    non_candidate_bound,
    plan_blocks,
    sort_keys,
    topc_grouped,
    write_features_npy,
)
from deepclust.knn_stream.certify import _low_copy, _split_norms

BACKENDS = ["torch", "faiss"]


def brute_force(x: np.ndarray, k: int) -> np.ndarray:
    """Reference: float64 cosine similarities with self masked out, (N, N)."""
    x = x.astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    return sims


def assert_matches_brute_force(x, k, ids, sims, tol=1e-5):
    ref = brute_force(x, k)
    n = len(x)
    assert ids.shape == sims.shape == (n, k)
    ref_sorted = -np.sort(-ref, axis=1)[:, :k]
    for i in range(n):
        assert len(set(ids[i])) == k, "duplicate neighbours"
        assert i not in ids[i], "self not excluded"
        np.testing.assert_allclose(sims[i], ref[i, ids[i]], atol=tol)  # sims are true sims
        np.testing.assert_allclose(sims[i], ref_sorted[i], atol=tol)  # and the top-k values
        # every candidate clearly above the k-th similarity must be present
        clear = np.flatnonzero(ref[i] > ref_sorted[i, -1] + tol)
        assert set(clear) <= set(ids[i])
    assert np.all(np.diff(sims, axis=1) <= tol), "not sorted by similarity"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tile", [10**9, 4 * 200 * 7])  # one block, and ~7-row blocks
def test_blockwise_equals_brute_force(backend, tile):
    x = np.random.default_rng(0).normal(size=(200, 16)).astype(np.float32)
    ids, sims = knn_self(x, 10, backend=backend, max_tile_bytes=tile)
    assert_matches_brute_force(x, 10, ids, sims)
    # no ties in continuous random data: the neighbour sets are exactly the reference's
    ref_ids = np.argsort(-brute_force(x, 10), axis=1, kind="stable")[:, :10]
    assert np.array_equal(ids, ref_ids)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_from_duplicate_points(backend):
    base = np.random.default_rng(1).normal(size=(20, 8)).astype(np.float32)
    x = np.repeat(base, 4, axis=0)  # every point has 3 exact duplicates (sim 1.0 ties)
    ids, sims = knn_self(x, 5, backend=backend, max_tile_bytes=4 * 80 * 3)
    assert_matches_brute_force(x, 5, ids, sims)
    for i in range(len(x)):  # the three duplicates always come first
        assert set(ids[i, :3]) == {j for j in range(4 * (i // 4), 4 * (i // 4) + 4)} - {i}


@pytest.mark.parametrize("backend", BACKENDS)
def test_k_close_to_n(backend):
    x = np.random.default_rng(2).normal(size=(30, 4)).astype(np.float32)
    ids, sims = knn_self(x, 29, backend=backend, max_tile_bytes=4 * 30 * 4)
    assert_matches_brute_force(x, 29, ids, sims)
    for i in range(30):
        assert set(ids[i]) == set(range(30)) - {i}


@pytest.mark.parametrize("k", [30, 31, 0])
def test_k_out_of_range_is_a_user_error(k):
    x = np.ones((30, 4), np.float32)
    with pytest.raises(UserError, match="out of range"):
        knn_self(x, k)


def test_unknown_backend():
    with pytest.raises(UserError, match="valid: auto, faiss, torch"):
        knn_self(np.eye(5, dtype=np.float32), 2, backend="annoy")


class _FakeGpuFaiss:
    """A faiss that claims one GPU: what a CUDA machine with faiss-gpu looks like."""

    knn_gpu = object()

    @staticmethod
    def get_num_gpus():
        return 1


@pytest.mark.parametrize("backend", ["auto", "faiss", "torch", "stream"])
def test_device_cpu_never_picks_cuda_even_where_a_gpu_is_visible(monkeypatch, backend):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(knn_module, "_faiss", lambda: _FakeGpuFaiss)
    assert resolve_backend(backend)[1] == "cuda"  # auto: whatever is visible
    assert resolve_backend(backend, "cpu")[1] == "cpu"
    assert resolve_backend(backend, "cuda")[1] == "cuda"


def test_device_errors_name_the_fix(monkeypatch):
    with pytest.raises(UserError, match="valid: auto, cpu, cuda"):
        resolve_backend("auto", "tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="use device 'cpu'"):
        resolve_backend("torch", "cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(knn_module, "_faiss", lambda: None)
    assert resolve_backend("auto", "cuda") == ("torch", "cuda")
    with pytest.raises(UserError, match="needs faiss"):
        resolve_backend("faiss", "cuda")


def test_knn_search_on_cpu_device_equals_auto_here():
    x = np.random.default_rng(5).normal(size=(60, 8)).astype(np.float32)
    ids, sims = knn_search(x, x, 5, query_ids=np.arange(60), device="cpu")
    ref_ids, ref_sims = knn_search(x, x, 5, query_ids=np.arange(60))
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(sims, ref_sims, rtol=1e-6)


def test_query_database_search_without_self_exclusion():
    rng = np.random.default_rng(3)
    db, q = rng.normal(size=(50, 8)), rng.normal(size=(7, 8))
    ids, _ = knn_search(q, db, 50, backend="torch")
    assert all(set(r) == set(range(50)) for r in ids)


def test_merge_of_database_shards_equals_full_search():
    x = np.random.default_rng(4).normal(size=(120, 8)).astype(np.float32)
    q = x[:20]
    full_ids, full_sims = knn_search(q, x, 6, backend="torch")
    parts = []
    for s, e in [(0, 50), (50, 120)]:
        ids, sims = knn_search(q, x[s:e], 6, backend="torch")
        parts.append((ids + s, sims))
    ids, sims = merge_topk(parts, 6)
    assert np.array_equal(ids, full_ids)
    np.testing.assert_allclose(sims, full_sims, atol=1e-6)


def test_neighbor_precision():
    labels = np.array([0, 0, 1, 1])
    nbr = np.array([[1, 2], [0, 3], [3, 0], [2, 1]])
    assert neighbor_precision(labels, nbr, ks=(1, 2, 5)) == {
        "nbr_precision@1": 1.0,
        "nbr_precision@2": 0.5,
    }


# --- streaming self-kNN over a feature file (deepclust.knn_stream) ---------------------------


def mine(tmp_path, x, k, **kw):
    """Write x, stream-mine it, and load the two output files."""
    path = tmp_path / "features.npy"
    write_features_npy(path, x)
    stats = mine_knn_npy(path, k, tmp_path / "ids.npy", tmp_path / "sims.npy", **kw)
    return np.load(tmp_path / "ids.npy"), np.load(tmp_path / "sims.npy"), stats


def exact_reference(x: np.ndarray, k: int) -> np.ndarray:
    """Integer features: exact int64 similarities; order sim desc, index asc, self excluded."""
    xi = x.astype(np.int64)
    sims = xi @ xi.T
    np.fill_diagonal(sims, -(10**9))
    order = [np.lexsort((np.arange(len(x)), -row))[:k] for row in sims]
    return np.stack(order), sims


# (query rows, database rows): one block, blocks that do not divide N=203, one-row blocks
STREAM_BLOCKS = [(203, 203), (64, 50), (17, 203), (203, 9), (1, 37)]


@pytest.mark.parametrize("blocks", STREAM_BLOCKS)
def test_stream_equals_knn_self(tmp_path, blocks):
    x = np.random.default_rng(10).normal(size=(203, 16)).astype(np.float32)
    ref_ids, ref_sims = knn_self(x, 10, backend="torch")
    ids, sims, stats = mine(tmp_path, x, 10, blocks=blocks)
    assert (stats.bq, stats.bd) == blocks
    assert ids.dtype == np.int64 and sims.dtype == np.float32
    assert np.array_equal(ids, ref_ids)
    # same GEMM inputs; a BLAS may pick another kernel for another tile shape (an ulp or two)
    np.testing.assert_array_max_ulp(sims, ref_sims, maxulp=4)


@pytest.mark.parametrize("blocks", [(60, 60), (7, 4), (13, 11), (1, 1)])
def test_stream_ties_lowest_index_wins_whatever_the_blocks(tmp_path, blocks):
    # small integer features: every similarity is exact in float32, so ties abound
    x = np.random.default_rng(5).integers(-2, 3, size=(60, 4)).astype(np.float32)
    ref, exact = exact_reference(x, 7)
    ids, sims, _ = mine(tmp_path, x, 7, blocks=blocks, normalize=False)
    assert np.array_equal(ids, ref)
    assert np.array_equal(sims, np.take_along_axis(exact, ref, 1).astype(np.float32))
    # knn_self orders the same way; only which tied candidate fills the last slots may differ
    k_ids, k_sims = knn_self(x, 7, backend="torch", normalize=False)
    assert np.array_equal(k_sims, sims)
    above = sims > sims[:, -1:]
    assert np.array_equal(k_ids[above], ids[above])


def test_stream_duplicates_match_knn_self(tmp_path):
    base = np.random.default_rng(1).normal(size=(20, 8)).astype(np.float32)
    x = np.repeat(base, 4, axis=0)  # 3 exact duplicates per point
    ids, sims, _ = mine(tmp_path, x, 5, blocks=(7, 4))
    assert_matches_brute_force(x, 5, ids, sims)
    for i in range(len(x)):
        assert list(ids[i, :3]) == sorted(set(range(4 * (i // 4), 4 * (i // 4) + 4)) - {i})


def test_stream_k_at_the_limit_and_beyond(tmp_path):
    x = np.random.default_rng(2).normal(size=(30, 4)).astype(np.float32)
    ids, sims, _ = mine(tmp_path, x, 29, blocks=(7, 4))
    ref_ids, _ = knn_self(x, 29, backend="torch")
    assert np.array_equal(ids, ref_ids)
    assert all(set(r) == set(range(30)) - {i} for i, r in enumerate(ids))
    with pytest.raises(UserError, match=r"k=30 is out of range: need 1 <= k <= N - 1"):
        mine(tmp_path, x, 30)
    with pytest.raises(UserError, match="out of range"):
        knn_self_blockwise(x, 30)


def test_query_range_shards_concatenate_to_the_full_result(tmp_path):
    x = np.random.default_rng(3).normal(size=(203, 16)).astype(np.float32)
    full_ids, full_sims, _ = mine(tmp_path, x, 8, blocks=(32, 50))
    parts = []
    for start, stop in [(0, 70), (70, 71), (71, 203)]:
        ids, sims, stats = mine(tmp_path, x, 8, start=start, stop=stop, blocks=(32, 50))
        assert ids.shape == (stop - start, 8) and stats.rows == stop - start
        parts.append((ids, sims))
    assert np.array_equal(np.concatenate([p[0] for p in parts]), full_ids)
    # a 1-row query block is a GEMV in the BLAS: its similarities may differ by an ulp
    np.testing.assert_array_max_ulp(np.concatenate([p[1] for p in parts]), full_sims, maxulp=4)
    with pytest.raises(UserError, match=r"query range \[70, 300\)"):
        mine(tmp_path, x, 8, start=70, stop=300)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_rescore_has_recall_one(precision):
    x = l2_normalize(np.random.default_rng(4).normal(size=(1500, 768)))
    ref_ids, ref_sims, _ = knn_self_blockwise(x, 10, normalize=False)
    ids, sims, stats = knn_self_blockwise(
        x, 10, precision=precision, normalize=False, blocks=(512, 700)
    )
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, ref_ids, strict=True)])
    assert recall == 1.0
    assert np.array_equal(ids, ref_ids)  # no near-ties at 1e-7 in this sample
    np.testing.assert_allclose(sims, ref_sims, atol=1e-6)  # re-scored in fp32
    assert stats.candidates == 10 + {"bf16": 96, "fp16": 32}[precision]


def test_grouped_candidate_selection_in_the_stream(tmp_path):
    x = np.random.default_rng(12).normal(size=(2500, 32)).astype(np.float32)
    ref_ids, ref_sims = knn_self(x, 5, backend="torch")
    ids, sims, stats = mine(tmp_path, x, 5, precision="fp16", candidates=10, blocks=(500, 1000))
    assert stats.group == 8  # runs of 8 columns, top-10 runs, then top-10 of their 80 values
    assert np.array_equal(ids, ref_ids)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-6)


def test_too_few_candidates_fall_back_to_fp32_and_stay_exact(tmp_path):
    x = l2_normalize(np.random.default_rng(6).normal(size=(600, 768)))
    ref_ids, _ = knn_self(x, 10, backend="torch", normalize=False)
    ids, _, stats = mine(tmp_path, x, 10, precision="bf16", candidates=10, blocks=(256, 300))
    assert stats.fallback_rows > 0  # the certificate caught the rows bf16 could not settle
    assert np.array_equal(ids, ref_ids)


def test_low_precision_bound_holds_for_every_pair():
    rng = np.random.default_rng(7)
    x = torch.from_numpy(l2_normalize(rng.normal(size=(300, 768))))
    x[:, :50] *= 1e-4  # tiny entries (fp16 subnormals)
    x[::2] *= 0.3
    exact = x.double() @ x.double().T
    for precision, dtype in [("bf16", torch.bfloat16), ("fp16", torch.float16)]:
        low = _low_copy(x, dtype, None)
        hi, lo = _split_norms(x, low)
        score = (low @ low.T).to(dtype)  # what the GPU tile holds
        bound = non_candidate_bound(precision, 768, score, hi[:, None], lo[:, None], hi, lo)
        assert (bound.double() >= exact).all()
        assert (bound.double() - exact).max() < (0.01 if precision == "bf16" else 0.002)
        # the CPU emulation (fp32 GEMM of rounded inputs) is what torch's bf16 matmul gives
        native = low.to(dtype) @ low.to(dtype).T
        assert (native.float() - score.float()).abs().max() <= 2 * 2.0**-8


def test_topc_grouped_is_an_exact_top_c():
    rng = np.random.default_rng(8)
    s = torch.from_numpy(rng.integers(0, 50, size=(5, 2003)).astype(np.float32))  # ties
    s[0, :7] = float("-inf")
    for c, g in [(10, 8), (12, 16), (31, 16)]:
        v, cols = topc_grouped(s, c, g)
        ref = s.topk(c, dim=1).values
        assert torch.equal(v.sort(1, descending=True).values, ref)
        assert torch.equal(s.gather(1, cols), v)
        assert all(len(set(r.tolist())) == c for r in cols)


def test_sort_keys_order_similarity_desc_then_index_asc():
    vals = torch.tensor([[0.5, -0.0, 0.0, -1.5, 0.5, float("-inf"), 2.0, -0.25]])
    ids = torch.tensor([[7, 3, 1, 0, 2, 4, 9, 5]])
    order = sort_keys(vals, ids).argsort(1)
    assert ids[0, order[0]].tolist() == [9, 2, 7, 1, 3, 5, 0, 4]


def test_npy_files_are_loadable_and_checked(tmp_path):
    blocks = (np.full((m, 3), i, np.float32) for i, m in enumerate([4, 1, 5]))
    assert write_features_npy(tmp_path / "f.npy", blocks) == (10, 3)
    loaded = np.load(tmp_path / "f.npy")
    assert loaded.shape == (10, 3) and loaded[4, 0] == 1 and loaded[-1, 0] == 2
    x = np.random.default_rng(9).normal(size=(40, 6)).astype(np.float32)
    ids, sims, _ = mine(tmp_path, x, 5, blocks=(16, 16))
    assert ids.shape == sims.shape == (40, 5)
    assert (tmp_path / "ids.npy").stat().st_size == HEADER_BYTES + 40 * 5 * 8
    assert not list(tmp_path.glob("*.partial"))
    np.save(tmp_path / "f64.npy", x.astype(np.float64))
    with pytest.raises(UserError, match="must hold a 2-D C-order float32 array"):
        FeatureFile(tmp_path / "f64.npy")
    data = (tmp_path / "features.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[:-4])
    with pytest.raises(UserError, match="is truncated"):
        FeatureFile(tmp_path / "cut.npy")
    x[17, 2] = np.nan
    with pytest.raises(UserError, match="row 17 has NaN or inf"):
        mine(tmp_path, x, 5, blocks=(16, 16))


def test_plan_memory_is_bounded_independently_of_n():
    small = plan_blocks(10**5, 768, 50, memory_budget=256 * 2**20)
    large = plan_blocks(10**8, 768, 50, memory_budget=256 * 2**20)
    assert (small.bq, small.bd) == (large.bq, large.bd)
    assert small.predicted_peak_bytes == large.predicted_peak_bytes <= 256 * 2**20
    assert large.resident_bytes == 0  # streamed from the file on CPU
    with pytest.raises(UserError, match="memory budget 1000 bytes is too small"):
        plan_blocks(10**5, 768, 50, memory_budget=1000)
    with pytest.raises(UserError, match="unknown precision 'int8'"):
        plan_blocks(10, 4, 2, precision="int8")


def assert_same_up_to_fp32_ties(ids, sims, ref_ids, ref_sims, tol=1e-5):
    """Different GEMMs (CPU vs GPU) round differently: sims agree within tol, and ids may only
    differ where two candidates are that close."""
    np.testing.assert_allclose(sims, ref_sims, atol=tol)
    recall = np.mean([len(set(a) & set(b)) for a, b in zip(ids, ref_ids, strict=True)])
    assert recall / ids.shape[1] > 0.999


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_stream_equals_cpu(tmp_path, precision):
    x = l2_normalize(np.random.default_rng(11).normal(size=(20_000, 768)))
    ref_ids, ref_sims, _ = knn_self_blockwise(x[:3000], 20)
    ids, sims, stats = knn_self_blockwise(
        torch.from_numpy(x[:3000]).cuda(), 20, precision=precision
    )
    assert stats.device == "cuda"
    assert_same_up_to_fp32_ties(ids, sims, ref_ids, ref_sims)
    # streamed from the file through device buffers, several blocks, grouped top-c (g > 1)
    ref_ids, ref_sims, _ = knn_self_blockwise(x, 20)
    ids, sims, stats = mine(
        tmp_path, x, 20, device="cuda", precision=precision, resident=False, blocks=(4096, 9000)
    )
    assert (stats.bq, stats.bd, stats.resident) == (4096, 9000, False)
    assert precision == "fp32" or stats.group > 1
    assert_same_up_to_fp32_ties(ids, sims, ref_ids, ref_sims)
