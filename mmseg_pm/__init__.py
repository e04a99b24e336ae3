"""mmseg_pm: Prune-and-Merge token compression for plain-ViT segmenters.

``import mmseg_pm`` is light: it imports neither mmseg nor mmengine, so the
pure ``mmseg_pm.compression`` package can be used on its own.
``import mmseg_pm.models`` registers the project's modules in mmseg's
registries and makes ``mmseg::`` config inheritance work with the OneDL
mmseg fork; do it before ``Config.fromfile`` (configs name it in
``custom_imports``).
"""
__version__ = '0.1.0'
