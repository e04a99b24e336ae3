"""Any input size with every method: mmseg's whole-image inference on an
image twice the training crop, and Prune and Merge's structures for
another grid made by the rule that made its own (seeded random
placement drawn again, scores resampled)."""
import pytest
import torch
from mmengine.structures import PixelData  # noqa: F401 (mmseg's data)
from mmseg.structures import SegDataSample

from mmseg_pm.apis import init_segmentor
from mmseg_pm.compression.search import derive_structure, place_centres
from mmseg_pm.compression.structure import build_structure
from tests.helpers import CONFIGS

SYNTHETIC = sorted((CONFIGS / 'synthetic').glob('*.py'))


@pytest.mark.parametrize('config', SYNTHETIC, ids=lambda p: p.stem)
def test_whole_inference_on_an_image_twice_the_crop(config):
    model = init_segmentor(str(config), cfg_options={
        'model.test_cfg': dict(mode='whole')})
    h, w = (2 * s for s in model.backbone.img_size)
    torch.manual_seed(0)
    inputs = torch.randn(1, 3, h, w)
    sample = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                         pad_shape=(h, w)))
    with torch.no_grad():
        result = model.predict(inputs, [sample])[0]
    assert result.pred_sem_seg.data.shape == (1, h, w)
    assert result.seg_logits.data.isfinite().all()
    reducer = getattr(model.backbone, 'reducer', None)  # mmseg's: none
    if reducer is not None and reducer.units:  # Prune and Merge
        grid = model.backbone.token_grid((h, w))
        assert set(reducer._derived) == {grid}


def test_a_random_placement_is_drawn_again_on_the_new_grid():
    scores = torch.rand(6 * 8, generator=torch.Generator().manual_seed(1))
    centre = place_centres(scores, 20, (6, 8), placement='random', seed=7)
    structure = build_structure((6, 8), centre, None, scores, 'nearest',
                                'random', 7)
    bigger = derive_structure(structure, (12, 16))
    assert bigger.grid == (12, 16) and bigger.num_groups == 80
    expected = place_centres(torch.ones(12 * 16), 80, (12, 16),
                             placement='random', seed=7)
    assert torch.equal(bigger.centre, expected.sort().values)
    assert bigger.recipe.rule == 'nearest' and bigger.recipe.seed == 7


def test_score_placed_centres_follow_the_resampled_scores():
    """The highest-scoring region keeps the centres on the larger grid, and
    the same fraction of tokens is pruned (the lowest scores)."""
    scores = torch.zeros(4, 4)
    scores[:2] = 1.0  # the upper half scores, the lower half does not
    scores = scores.flatten() + torch.arange(16) * 1e-3
    structure = build_structure((4, 4), torch.arange(4), [15], scores,
                                placement='score')
    bigger = derive_structure(structure, (8, 8))
    assert bigger.num_groups == 16 and bigger.num_pruned == 4
    assert bool((bigger.centre < 32).all())  # in the upper half
    assert bool((bigger.pruned.nonzero().flatten() >= 32).all())
