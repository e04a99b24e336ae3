"""Fixtures shared by every test package; plain helpers live in
tests/helpers.py. ``pytest -m "not slow"`` skips the end-to-end runs
(marked ``slow``) for a fast loop; plain ``pytest`` runs everything."""
import pytest

from mmseg_pm.datasets import make_synthetic_ade


@pytest.fixture(scope='session')
def synthetic_ade(tmp_path_factory):
    """A generated ADE20K-format data set (4 training, 3 validation images
    of 64 x 96), shared read-only by the tests that train and evaluate on
    it; returns its root."""
    root = tmp_path_factory.mktemp('synthetic_ade') / 'data'
    return make_synthetic_ade(root, num_train=4, num_val=3, size=(64, 96),
                              seed=3, progress=False)['root']
