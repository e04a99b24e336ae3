"""The method registry: one description per method, complete and
consistent with its config class and its reducer."""
import dataclasses

import pytest

from mmseg_pm.compression.config import parse_compression
from mmseg_pm.compression.registry import (DEFAULT_METHOD, MethodSpec,
                                           ModelShape, method_names,
                                           method_spec, method_specs,
                                           peer_specs, register)

SHAPE = ModelShape(num_tokens=64, num_layers=4, embed_dims=32)


def test_the_default_method_is_registered_and_every_name_once():
    names = method_names()
    assert DEFAULT_METHOD in names and len(set(names)) == len(names)
    assert [s.name for s in peer_specs()] == \
        [n for n in names if n != DEFAULT_METHOD]
    labels = [s.label for s in method_specs()]
    assert len(set(labels)) == len(labels)
    with pytest.raises(ValueError, match='must be one of'):
        method_spec('no-such-method')


@pytest.mark.parametrize('name', method_names())
def test_each_description_matches_its_config_class(name):
    spec = method_spec(name)
    assert spec.config.method == name
    lo, hi = spec.knob_range(SHAPE)
    assert lo <= hi
    for knob in (lo, (lo + hi) // 2, hi):
        compression = spec.knob_compression(knob, SHAPE)
        parsed = parse_compression(compression, SHAPE.num_layers)
        assert type(parsed) is spec.config
        assert isinstance(spec.knob_text(knob, SHAPE), str)
    assert spec.exports <= spec.fixed_shapes  # a graph has one shape
    assert spec.exports or spec.no_export
    assert spec.calibration


def test_a_method_is_registered_once_and_must_say_why_it_does_not_export():
    spec = method_spec(DEFAULT_METHOD)
    with pytest.raises(ValueError, match='registered twice'):
        register(dataclasses.replace(spec, config=type('Other', (), {})))
    with pytest.raises(ValueError, match='config class'):
        register(dataclasses.replace(spec, name='unconfigured', config=None))
    assert register(spec) is spec  # the same spec again is no second one
    with pytest.raises(ValueError, match='no_export'):
        dataclasses.replace(spec, exports=False, no_export='')
    with pytest.raises(ValueError, match='cannot export'):
        dataclasses.replace(spec, fixed_shapes=False)
    assert isinstance(spec, MethodSpec)
