"""Adding a method is one module and one registration: the test-only
method of toy_method.py gets its study variant and its benchmark row
without a line changed anywhere else, and loses them when unregistered."""
import pytest
import torch

from mmseg_pm.apis.knobs import METHODS, compression_for
from mmseg_pm.benchmark.variants import (DEFAULT_VARIANTS, PEER_VARIANTS,
                                         VARIANTS, ModelSpec,
                                         backbone_config)
from mmseg_pm.compression.config import parse_compression
from mmseg_pm.compression.registry import method_names, register, unregister
from tests.compression import toy_method
from tests.helpers import TINY, tiny_pm

NAME = toy_method.SPEC.name


@pytest.fixture
def seventh():
    register(toy_method.SPEC)
    try:
        yield toy_method.SPEC
    finally:
        unregister(NAME)


def test_its_study_and_benchmark_rows_appear_by_themselves(seventh):
    assert method_names()[-1] == NAME
    variant = METHODS[NAME]
    assert (variant.method, variant.label) == (NAME, seventh.label)
    compression = compression_for(NAME, 0, num_layers=4, num_tokens=15)
    assert type(parse_compression(compression, 4)) is seventh.config
    assert NAME in PEER_VARIANTS and NAME in VARIANTS
    assert NAME in DEFAULT_VARIANTS  # fixed shapes: a default row
    row = ModelSpec('c.py', NAME, keep_rate=0.7, compression=compression)
    assert backbone_config(row, dict(TINY))['compression'] == compression


def test_its_model_runs_through_the_backbone(seventh):
    model = tiny_pm(compression=dict(method=NAME))
    dense = tiny_pm()
    x = torch.randn(1, 3, 48, 80)
    with torch.no_grad():
        for ours, theirs in zip(model(x), dense(x)):
            assert torch.equal(ours, theirs)


def test_unregistered_it_is_gone_from_every_list(seventh):
    unregister(NAME)
    try:
        assert NAME not in method_names()
        assert NAME not in METHODS and NAME not in VARIANTS
        with pytest.raises(ValueError, match='must be one of'):
            parse_compression(dict(method=NAME), 4)
    finally:
        register(toy_method.SPEC)  # the fixture unregisters it
