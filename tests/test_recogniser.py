"""Closed-set models outside transformers (core/models/closed_set.py, core/tasks/image_classification.py):
ModelScope's general recognition layout (``pytorch_model.pt`` + ``meta_info.txt``) with a tiny
random-weight ResNeSt saved as ModelScope saves it, loaded offline through the user's paths
(``--model DIR``, ``modelscope:ORG/NAME`` from both cache layouts); ``--labels`` subsets;
duplicate labels; head / labels mismatch; pickled whole models refused; seed-style ONNX and
TorchScript folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import classify
from wwts.core import models
from wwts.core.input import load_image
from wwts.core.models.resnest import ResNeSt

LABELS = ["猫", "狗", "咖啡", "火箭", "猫"]  # "猫" twice: reported once, probabilities summed


def tiny_resnest(classes: int = len(LABELS), seed: int = 0) -> ResNeSt:
    """ResNeSt with one block per stage and a stem of width 8 (ResNeSt-101: [3, 4, 23, 3], 64)."""
    torch.manual_seed(seed)
    model = ResNeSt([1, 1, 1, 1], classes, stem_width=8).eval()
    for m in model.modules():  # random BatchNorm statistics, so that scores are not uniform
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def modelscope_folder(folder: Path, *, labels=LABELS, prefix: str = "", model: ResNeSt | None = None) -> Path:
    """A folder as ModelScope's general recognition repository holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    model = model or tiny_resnest()
    torch.save({prefix + k: v for k, v in model.state_dict().items()}, folder / "pytorch_model.pt")
    (folder / "meta_info.txt").write_text("".join(f"{i}\t{n}\n" for i, n in enumerate(labels)), encoding="utf-8")
    (folder / "configuration.json").write_text(json.dumps({"framework": "pytorch", "task": "general-recognition"}),
                                               encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def resnest_folder(tmp_path_factory) -> Path:
    return modelscope_folder(tmp_path_factory.mktemp("ms") / "general")


def run(paths_or_folder, *args, out: Path, backend: str = "torch"):
    """``wwts classify`` on torch unless ``backend`` says otherwise; the records and run section."""
    result = classify(paths_or_folder, "--out", out, "--dtype", "float32", "--top-k", "5", "--backend", backend, *args)
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text(encoding="utf-8"))


def logits_by_hand(folder: Path, path: Path) -> torch.Tensor:
    """ModelScope's pipeline by hand: its transform on one decoded photo, the model, one image."""
    model = models.load_closed_set("by-hand", folder)
    with torch.inference_mode():
        return model.torch_module()(torch.from_numpy(model.transform(load_image(path).image)))[0]


def test_modelscope_folder_classifies_with_duplicates_summed(resnest_folder, sample_images, tmp_path):
    doc = run(sample_images / "coffee.jpg", "--model", resnest_folder, out=tmp_path / "r.json")
    assert doc["run"]["labels"] == ["猫", "狗", "咖啡", "火箭"] and doc["run"]["closed_set"] is True
    assert "1 names occur more than once" in doc["run"]["duplicate_labels"]
    (rec,) = doc["results"]
    probs = logits_by_hand(resnest_folder, sample_images / "coffee.jpg").softmax(-1)
    expected = {"猫": probs[0] + probs[4], "狗": probs[1], "咖啡": probs[2], "火箭": probs[3]}
    assert {t["label"] for t in rec["top_k"]} == set(expected)
    for t in rec["top_k"]:
        assert t["score"] == pytest.approx(float(expected[t["label"]]), abs=1e-5)


def test_labels_subset_is_a_softmax_over_those_logits(resnest_folder, sample_images, tmp_path):
    doc = run(sample_images / "rocket.jpg", "--model", resnest_folder, "--labels", "咖啡,狗", out=tmp_path / "r.json")
    assert doc["run"]["labels"] == ["咖啡", "狗"]
    logits = logits_by_hand(resnest_folder, sample_images / "rocket.jpg")
    by_hand = torch.stack([logits[2], logits[1]]).softmax(-1)
    scores = {t["label"]: t["score"] for t in doc["results"][0]["top_k"]}
    assert scores["咖啡"] == pytest.approx(float(by_hand[0]), abs=1e-5)
    assert scores["狗"] == pytest.approx(float(by_hand[1]), abs=1e-5)


def test_unknown_label_and_vocab_are_one_line_exit_2(resnest_folder, sample_images):
    result = classify(sample_images / "coffee.jpg", "--model", resnest_folder, "--labels", "猫咪,狗")
    assert result.exit_code == 2 and "'猫咪'" in result.output and "'猫'" in result.output
    assert "Traceback" not in result.output
    result = classify(sample_images / "coffee.jpg", "--model", resnest_folder, "--vocab", "common-zh")
    assert result.exit_code == 2 and "--vocab does not apply" in result.output


def test_module_prefixed_keys_load(resnest_folder, sample_images, tmp_path):
    prefixed = modelscope_folder(tmp_path / "dp", prefix="module.")
    assert next(iter(torch.load(prefixed / "pytorch_model.pt", weights_only=True))).startswith("module.")
    photo = sample_images / "coffee.jpg"
    assert torch.equal(logits_by_hand(prefixed, photo), logits_by_hand(resnest_folder, photo))


def test_head_and_labels_mismatch_is_exit_2(sample_images, tmp_path):
    folder = modelscope_folder(tmp_path / "bad", labels=LABELS[:3])
    result = classify(sample_images / "coffee.jpg", "--model", folder, "--backend", "torch")
    assert result.exit_code == 2
    assert "head has 5 classes but meta_info.txt lists 3" in " ".join(result.output.split())


def test_pickled_whole_model_is_refused(sample_images, tmp_path):
    folder = modelscope_folder(tmp_path / "pickled")
    torch.save(tiny_resnest(), folder / "pytorch_model.pt")  # the whole module, pickled
    result = classify(sample_images / "coffee.jpg", "--model", folder, "--backend", "torch")
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "pickled whole model" in text and "arbitrary code" in text
    assert "state_dict" in text


@pytest.mark.parametrize("layout", ["models/damo--cv_resnest101_general_recognition/snapshots/master",
                                    "models/damo/cv_resnest101_general_recognition"])
def test_modelscope_ids_and_short_name_read_both_cache_layouts(layout, resnest_folder, sample_images, tmp_path,
                                                               monkeypatch):
    pytest.importorskip("modelscope", reason="the modelscope extra is not installed")
    cache = tmp_path / "ms-cache"
    monkeypatch.setenv("MODELSCOPE_CACHE", str(cache))
    import shutil

    shutil.copytree(resnest_folder, cache / layout)
    for model in ("modelscope:damo/cv_resnest101_general_recognition", "general-recognition"):
        doc = run(sample_images / "coffee.jpg", "--model", model, out=tmp_path / f"{model[:5]}.json")
        assert doc["results"][0]["label"] in LABELS
    result = classify(sample_images / "coffee.jpg", "--model", "modelscope:iic/cv_resnest101_general_recognition")
    assert result.exit_code == 2 and "offline" in result.output  # not cached under iic/: one line


def seed_folder(folder: Path, kind: str, model: ResNeSt) -> Path:
    """A seed-style folder: ``model.onnx`` or TorchScript ``model.pt``, labels, preprocessor_config.json."""
    folder.mkdir(parents=True)
    example = torch.zeros(1, 3, 224, 224)
    if kind == "onnx":
        program = torch.onnx.export(model, (example,), input_names=["pixel_values"], output_names=["logits"],
                                    dynamic_shapes=({0: torch.export.Dim.AUTO},), dynamo=True,
                                    external_data=False, verbose=False, optimize=False)  # 2-3x faster here
        program.save(str(folder / "model.onnx"))
        (folder / "labels.txt").write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    else:
        torch.jit.save(torch.jit.trace(model, example), str(folder / "model.pt"))
        (folder / "label_map.json").write_text(json.dumps(dict(enumerate(LABELS)), ensure_ascii=False), encoding="utf-8")
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"shortest_edge": 256},
        "do_center_crop": True, "crop_size": {"height": 224, "width": 224}, "resample": 2,
        "image_mean": list(models.IMAGENET_MEAN), "image_std": list(models.IMAGENET_STD)}), encoding="utf-8")
    return folder


@pytest.mark.parametrize("kind", ["onnx", "torchscript"])
def test_seed_style_folders_agree_with_the_state_dict(kind, resnest_folder, sample_images, tmp_path):
    pytest.importorskip("onnxruntime") if kind == "onnx" else None
    folder = seed_folder(tmp_path / kind, kind, models.load_closed_set("x", resnest_folder).torch_module())
    assert models.folder_kind(folder) == kind
    images = [sample_images / n for n in ("coffee.jpg", "rocket.jpg", "chelsea.png")]
    seed = run(*images, "--model", folder, out=tmp_path / "seed.json")
    ours = run(*images, "--model", resnest_folder, out=tmp_path / "ms.json")
    for a, b in zip(seed["results"], ours["results"]):
        assert a["label"] == b["label"]
        assert np.allclose([t["score"] for t in a["top_k"]], [t["score"] for t in b["top_k"]], atol=1e-4)


def test_pickled_whole_model_pt_in_a_seed_folder_is_refused(sample_images, tmp_path):
    folder = tmp_path / "seed"
    folder.mkdir()
    torch.save(tiny_resnest(), folder / "model.pt")
    (folder / "labels.txt").write_text("\n".join(LABELS), encoding="utf-8")
    (folder / "preprocessor_config.json").write_text('{"size": 224, "default_to_square": true}', encoding="utf-8")
    result = classify(sample_images / "coffee.jpg", "--model", folder, "--backend", "torch")
    assert result.exit_code == 2 and "arbitrary code" in " ".join(result.output.split())


def torchvision_recipe(image) -> torch.Tensor:
    """ModelScope's ``Resize(256)``, ``CenterCrop(224)``, ``ToTensor()``, ``Normalize(ImageNet)``,
    written out from torchvision's functional code (torchvision is not installed): Pillow bilinear
    resize of the short side to 256 (long side truncated), crop offsets ``int(round(...))``,
    ``uint8 / 255`` in float32, ``(x - mean) / std`` in float32."""
    w, h = image.size
    short, long = min(w, h), max(w, h)
    size = (256, int(256 * long / short)) if w <= h else (int(256 * long / short), 256)
    image = image.resize(size, resample=2)
    top, left = int(round((image.height - 224) / 2.0)), int(round((image.width - 224) / 2.0))
    image = image.crop((left, top, left + 224, top + 224))
    x = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).to(torch.float32).div(255)
    mean = torch.tensor(models.IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(models.IMAGENET_STD, dtype=torch.float32)[:, None, None]
    return x.sub(mean).div(std)[None]


def test_preprocessing_equals_the_pipeline_recipe_on_real_photos(sample_images, exif_samples):
    from PIL import Image, ImageOps

    from wwts.core.models.closed_set import MODELSCOPE_TRANSFORM

    rotated = sorted((exif_samples / "jpg" / "orientation").glob("*.jpg"))  # EXIF orientations 1-8
    photos = sorted(sample_images.glob("*.*g")) + rotated + sorted((exif_samples / "jpg").glob("*.jpg"))[:8]
    assert len(rotated) >= 8
    for path in photos:
        with Image.open(path) as im:  # the pipeline's LoadImage: EXIF orientation first, then RGB
            reference = torchvision_recipe(ImageOps.exif_transpose(im).convert("RGB"))
        ours = MODELSCOPE_TRANSFORM(load_image(path).image)
        assert ours.shape == (1, 3, 224, 224)
        assert np.array_equal(ours, reference.numpy()), path.name


@pytest.mark.own_conversions
def test_backends_agree_with_torch_and_convert_once(resnest_folder, sample_images, tmp_path):
    from wwts.core import backends

    images = [sample_images / n for n in ("coffee.jpg", "rocket.jpg", "chelsea.png")]
    reference = run(*images, "--model", resnest_folder, out=tmp_path / "torch.json")
    for backend in ("openvino", "onnxruntime"):
        pytest.importorskip(backend)
        for attempt in range(2):  # the second run reads the cached conversion
            doc = run(*images, "--model", resnest_folder, out=tmp_path / f"{backend}{attempt}.json", backend=backend)
            assert doc["run"]["closed_set"] and doc["run"]["computed_by"] == f"{backend} float32"
            for a, b in zip(doc["results"], reference["results"]):
                assert a["label"] == b["label"]
                assert np.allclose([t["score"] for t in a["top_k"]], [t["score"] for t in b["top_k"]], atol=1e-4)
    converted = sorted(p.name.split("-")[1] for p in (backends.cache_root() / "closed-set").iterdir())
    assert converted == ["onnxruntime", "openvino"]
    doc = run(*images, "--model", resnest_folder, "--quantize", "int8", out=tmp_path / "int8.json",
              backend="onnxruntime")
    assert doc["run"]["computed_by"] == "onnxruntime int8"
    for rec in doc["results"]:
        assert abs(sum(t["score"] for t in rec["top_k"]) - 1) < 1e-3
    pytest.importorskip("nncf")
    for attempt in range(2):  # NNCF static int8 on the run's photos, then from the cache
        doc = run(*images, "--model", resnest_folder, "--quantize", "int8", out=tmp_path / f"ov-int8{attempt}.json",
                  backend="openvino")
        assert doc["run"]["computed_by"] == "openvino int8"
        assert all(abs(sum(t["score"] for t in rec["top_k"]) - 1) < 1e-3 for rec in doc["results"])
    assert any(p.name.startswith("model-int8-nncf") for p in (backends.cache_root() / "closed-set").rglob("*.xml"))
