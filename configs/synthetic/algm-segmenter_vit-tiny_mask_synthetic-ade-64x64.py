# The tiny synthetic Segmenter with ALGM: 2x2 windows of the 8x8 token grid
# whose mean pairwise cosine similarity is >= 0.88 merge after block 0's
# attention; block 1 (the authors' layer 5 of 12 at the same relative depth
# of 4 blocks: round(4 * 5 / 12) = layer 2) merges by bipartite matching
# with the adaptive count. Training-free: test the dense tiny checkpoint
# with this config.
_base_ = ['./segmenter_vit-tiny_mask_synthetic-ade-64x64.py']

model = dict(
    backbone=dict(
        type='PMVisionTransformer',
        compression=dict(method='algm', local_layer=0, global_layer=1,
                         threshold=0.88, window=(2, 2))))
