"""Import shims for peers whose package imports optional heavy deps at import time."""
from __future__ import annotations

import sys
import types


def stub_torchvision() -> bool:
    """mosaicml-streaming imports torchvision for its *vision* datasets only (unused here).

    The PyPI torchvision wheel does not load against the CPU torch build installed here, so when
    torchvision is not importable we register a minimal stub module. Returns True when stubbed.
    """
    try:
        import torchvision  # noqa: F401
        return False
    except Exception:
        pass
    tv = types.ModuleType("torchvision")
    dsets = types.ModuleType("torchvision.datasets")
    tr = types.ModuleType("torchvision.transforms")
    fn = types.ModuleType("torchvision.transforms.functional")

    class VisionDataset:  # pragma: no cover - never instantiated in the bench
        def __init__(self, *a, **k):
            raise RuntimeError("torchvision is stubbed in the mixsql bench")

    dsets.VisionDataset = VisionDataset
    dsets.CIFAR10 = VisionDataset
    dsets.ImageFolder = VisionDataset
    fn.to_tensor = lambda *a, **k: None
    tv.datasets, tv.transforms, tr.functional = dsets, tr, fn
    import importlib.machinery
    for m in (tv, dsets, tr, fn):
        m.__spec__ = importlib.machinery.ModuleSpec(m.__name__, None)
        m.__version__ = "0.0+stub"
    sys.modules.update({"torchvision": tv, "torchvision.datasets": dsets, "torchvision.transforms": tr,
                        "torchvision.transforms.functional": fn})
    return True
