import pytest
import torch

from trainables.heads import ClusterHead, MultiHead


@pytest.mark.parametrize("norm", ["l2", "none", "standardize"])
def test_batched_restart_heads_equal_separate_heads(norm):
    torch.manual_seed(0)
    x = torch.randn(7, 12)
    heads = [ClusterHead(12, 4, input_norm=norm) for _ in range(3)]
    for h in heads:
        h.fit_standardization(x)
    out = MultiHead(heads)(x)
    assert out.shape == (3, 7, 4)
    for r, h in enumerate(heads):
        torch.testing.assert_close(out[r], h(x))


def test_mlp_head_and_bad_kind():
    assert ClusterHead(8, 3, kind="mlp")(torch.randn(2, 8)).shape == (2, 3)
    with pytest.raises(ValueError, match="head kind"):
        ClusterHead(8, 3, kind="conv")
