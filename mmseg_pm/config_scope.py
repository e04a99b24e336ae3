"""Make mmengine resolve ``mmseg::`` base configs under the OneDL fork.

mmengine maps the config scope ``mmseg`` to the pip distribution
``mmsegmentation`` (``MODULE2PACKAGE``) to find the configs shipped in the
package (``mmseg/.mim/configs``). The maintained fork installs the same
``mmseg`` module under the distribution ``onedl-mmsegmentation``, so the
lookup fails. Importing ``mmseg_pm.models`` points the scope at whichever
of the two distributions is installed; do it before ``Config.fromfile``
(our tools do; in your own scripts ``import mmseg_pm.models`` first).
"""
from importlib.metadata import PackageNotFoundError, distribution

DISTRIBUTIONS = ('mmsegmentation', 'onedl-mmsegmentation')


def register_mmseg_config_scope() -> str:
    """Map ``mmseg::`` to the installed mmseg distribution; return its name."""
    from mmengine.config import utils as config_utils

    for name in DISTRIBUTIONS:
        try:
            distribution(name)
        except PackageNotFoundError:
            continue
        config_utils.MODULE2PACKAGE['mmseg'] = name
        return name
    raise ImportError('neither mmsegmentation nor onedl-mmsegmentation is '
                      'installed; run: pip install -r requirements.txt')
