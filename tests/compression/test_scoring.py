"""The arithmetic of token scores (docs/prune_and_merge.md section 1):
normalisation, depth weights, totals to scores."""
import pytest
import torch

from mmseg_pm.compression.scoring import (attention_scores,
                                          check_depth_lambda,
                                          normalise_scores,
                                          scores_from_totals)


def test_depth_weight_and_normalisation():
    raw = torch.tensor([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]])
    out = normalise_scores(raw, depth_lambda=0.1)
    expected = torch.tensor([[0.6, 0.8], [0.0, 0.9], [0.8, 0.0]])
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match='depth_lambda'):
        normalise_scores(raw, depth_lambda=0.6)


def test_check_depth_lambda_refuses_non_positive_depth_weights():
    check_depth_lambda(12, 0.0)
    check_depth_lambda(12, 0.09)  # 1 - 0.09 * 11 > 0
    for bad in (-0.1, 1 / 11, 0.5):
        with pytest.raises(ValueError, match='non-positive depth weight'):
            check_depth_lambda(12, bad)


def test_attention_scores_by_hand():
    # one image, one head, 3 tokens (a class token first): v_j is the
    # column sum of A * dL/dA over the queries, divided by B * heads * T
    probs = torch.tensor([[[[0.5, 0.25, 0.25],
                            [0.2, 0.3, 0.5],
                            [0.1, 0.6, 0.3]]]])
    grad = torch.tensor([[[[1.0, -2.0, 4.0],
                           [0.0, 1.0, -1.0],
                           [2.0, 1.0, 1.0]]]])
    columns = (probs * grad).sum(dim=2)[0, 0] / 3
    out = attention_scores(probs, grad, num_prefix=1)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, columns[1:].abs().double())
    assert attention_scores(probs, grad, num_prefix=0).shape == (3, )


def test_scores_from_totals_is_float32_normalised_totals():
    totals = torch.tensor([[3.0, 4.0], [0.0, 2.0]], dtype=torch.float64)
    out = scores_from_totals(totals, depth_lambda=0.5)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[0.6, 0.8], [0.0, 0.5]]))
