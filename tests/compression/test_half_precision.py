"""Half precision: ToMe's and MSTM's matching (the similarities and the
class-token importance that decide which tokens merge) is computed in
float32 under autocast and in bfloat16 models, and merged sums accumulate
in float32. Rounding the similarities to bfloat16 makes near-equal edges
tie and flips merges (issue: ToMe under autocast 3.3 max abs difference).
"""
import pytest
import torch

from mmseg_pm.compression.mstm import class_attention, crucial_token_matching
from mmseg_pm.compression.ops import cosine_similarity, merge_tokens
from mmseg_pm.compression.tome import bipartite_soft_matching


def keys(seed=0, b=4, t=65, d=64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, d, generator=g).bfloat16()


def test_similarity_is_float32_under_autocast():
    a, b = keys(0), keys(1)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        sims = cosine_similarity(a, b)
    assert sims.dtype == torch.float32
    reference = torch.nn.functional.cosine_similarity(
        a.float()[:, :, None], b.float()[:, None], dim=-1)
    assert (sims - reference).abs().max() < 1e-5


@pytest.mark.parametrize('seed', range(4))
def test_tome_matching_under_autocast_is_the_float32_matching(seed):
    metric = keys(seed)
    expected, slots = bipartite_soft_matching(metric.float(), 24)
    for context in (torch.autocast('cpu', dtype=torch.bfloat16),
                    torch.autocast('cpu', enabled=False)):
        with context:  # bf16 keys: in a bf16 model or under autocast
            assign, num = bipartite_soft_matching(metric, 24)
        assert num == slots and torch.equal(assign, expected)


@pytest.mark.parametrize('seed', range(4))
def test_mstm_ranking_and_matching_under_autocast_are_float32(seed):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(2, 2, 65, 32, generator=g).bfloat16()
            for _ in range(2))
    metric = k.mean(1)[:, 1:]
    expected = class_attention(q.float(), k.float())
    with torch.autocast('cpu', dtype=torch.bfloat16):
        importance = class_attention(q, k)
        assign = crucial_token_matching(metric, importance, 20)
    assert importance.dtype == torch.float32
    assert (importance - expected).abs().max() < 1e-6
    assert torch.equal(assign, crucial_token_matching(metric.float(),
                                                      expected, 20))


def test_merged_sums_accumulate_in_float32():
    """A slot of 200 bf16 tokens of value 1 + 2^-7 (exact in bf16): their
    bf16 running sum stalls; the float32 sum gives the mean back."""
    x = torch.full((1, 200, 4), 1 + 2 ** -7, dtype=torch.bfloat16)
    merged, size = merge_tokens(x, torch.zeros(1, 200, dtype=torch.long),
                                torch.ones(1, 200), 1)
    assert merged.dtype == torch.bfloat16
    assert merged.float().sub(1 + 2 ** -7).abs().max() == 0
    assert size.item() == 200
