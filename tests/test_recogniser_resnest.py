"""The ResNeSt port (core/models/resnest.py) against the installed ``modelscope`` package's own
classes (modelscope/models/cv/animal_recognition/resnet.py and splat.py), loaded from their files
without importing the modelscope framework: the same state-dict keys and shapes at full size
(ResNeSt-101, 54,092 classes), the same logits on a batch."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

from wwts.core.models.resnest import FEATURE_DIM, ResNeSt, resnest101


@pytest.fixture(scope="module")
def reference():
    """The ``modelscope.models.cv.animal_recognition`` package's ``resnet`` module, loaded from its
    files under a private package name (its ``__init__`` would import the framework)."""
    spec = importlib.util.find_spec("modelscope")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the modelscope package is not installed")
    folder = Path(list(spec.submodule_search_locations)[0]) / "models" / "cv" / "animal_recognition"
    package = types.ModuleType("wwts_ref_resnest")
    package.__path__ = [str(folder)]
    sys.modules[package.__name__] = package
    modules = {}
    for name in ("splat", "resnet"):
        mspec = importlib.util.spec_from_file_location(f"{package.__name__}.{name}", folder / f"{name}.py")
        module = importlib.util.module_from_spec(mspec)
        sys.modules[mspec.name] = module
        mspec.loader.exec_module(module)
        modules[name] = module
    yield modules["resnet"]
    for name in list(sys.modules):
        if name.startswith(package.__name__):
            del sys.modules[name]


def reference_model(resnet, layers, num_classes):
    """The model as ``GeneralRecognitionPipeline.resnest101`` builds it (with other ``layers``)."""
    return resnet.ResNet(resnet.Bottleneck, layers, radix=2, groups=1, bottleneck_width=64, deep_stem=True,
                         stem_width=64, avg_down=True, avd=True, avd_first=False, num_classes=num_classes)


def test_full_size_keys_and_shapes_equal_the_reference(reference):
    ours = {k: tuple(v.shape) for k, v in resnest101().state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in reference_model(reference, [3, 4, 23, 3], 54092).state_dict().items()}
    assert ours == theirs
    assert ours["fc.weight"] == (54092, FEATURE_DIM)


def test_logits_equal_the_reference_on_a_batch(reference):
    """ResNeSt-101's own layer counts, 10 classes instead of 54,092 (the head is one Linear layer:
    the size of its output adds nothing to the check but 440 MB), BatchNorm statistics randomised
    so that every layer matters."""
    torch.manual_seed(0)
    theirs = reference_model(reference, [3, 4, 23, 3], 10).eval()
    for m in theirs.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    ours = ResNeSt([3, 4, 23, 3], 10).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    batch = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        expected, got = theirs(batch), ours(batch)
        features = ours.features(batch)
        head = ours.fc(features)
    assert features.shape == (2, FEATURE_DIM)
    assert torch.allclose(got, expected, atol=1e-4, rtol=0)
    assert torch.allclose(head, got, atol=1e-5, rtol=0)
