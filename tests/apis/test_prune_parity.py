"""One answer per question: tools/prune.py and the Python API
(``mmseg_pm.apis.prune``, ``mmseg_pm.compression.search_structures`` with
its defaults) give the same structures for the same inputs."""
import torch

import mmseg_pm.models  # noqa: F401
from mmseg_pm.apis import build_segmentor, prune_config, prune_segmentor
from mmseg_pm.apis.config import load_config
from mmseg_pm.compression import search_structures
from mmseg_pm.utils.checkpoint import (load_checkpoint_file,
                                       save_checkpoint_atomic)
from tests.helpers import DENSE_TINY, PM_TINY, cli_module, data_options


def test_command_line_and_python_api_search_the_same_structures(
        tmp_path, synthetic_ade):
    torch.manual_seed(0)
    dense = build_segmentor(load_config(str(DENSE_TINY), {}))
    checkpoint = tmp_path / 'dense.pth'
    save_checkpoint_atomic(dict(state_dict=dense.state_dict()),
                           str(checkpoint))
    options = data_options(synthetic_ade)
    out = tmp_path / 'pruned.pth'
    cli_module('prune').main([
        str(PM_TINY), str(checkpoint), '--out', str(out), '--iters', '1',
        '--keep-rate', '0.4', '--device', 'cpu', '--cfg-options', *options])
    saved = load_checkpoint_file(str(out))
    meta = saved['meta']['prune_and_merge']

    data = {f'{s}_dataloader.dataset.data_root': str(synthetic_ade)
            for s in ('train', 'val', 'test')}
    cfg = prune_config(str(PM_TINY), dict(data,
                                          **{'train_dataloader.batch_size':
                                             2}), keep_rate=0.4)
    model, summary, _ = prune_segmentor(cfg, str(checkpoint), iters=1,
                                        device='cpu')
    backbone = model.backbone
    assert summary['placement'] == meta['placement']
    assert torch.equal(torch.as_tensor(summary['scores']),
                       torch.as_tensor(meta['scores']))
    # the compression API's own defaults give the same structures too
    searched = search_structures(torch.as_tensor(meta['scores']),
                                 backbone.compression, backbone.grid_size,
                                 seed=meta['seed'])
    state = saved['state_dict']
    for unit, structure, mine in zip(backbone.compression.units, searched,
                                     backbone.structures()):
        prefix = f'backbone.token_compressors.{unit[0]}.'
        assert torch.equal(state[prefix + 'group'], mine.group)
        assert torch.equal(structure.group, mine.group)
        assert torch.equal(structure.centre, mine.centre)
