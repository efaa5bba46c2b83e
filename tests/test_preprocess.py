"""``wwts.core.input.ImagePreprocessor`` against transformers' own image processors.

Every comparison asserts EXACT equality (``np.array_equal``, same dtype float32 and shape) with
``processor(images=[im], return_tensors="np")["pixel_values"]`` of the processor that
``AutoProcessor.from_pretrained`` loads in this venv (the Pillow backend: no torchvision). The
brief's tolerance was a max abs difference <= 1e-5; exact equality holds, so that is what is
asserted. Images: real camera JPEGs from ../shared/data/exif-samples decoded with ``load_image``
(portrait, landscape, tiny, very wide/tall) and seeded noise images of odd sizes (aspect <= 200:1).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import EXIF_SAMPLES, ROOT
from wwts.core.errors import NotReproducible
from wwts.core.input import ImagePreprocessor, load_image

REAL_CHECKPOINT = ROOT / "models" / "chinese-clip-vit-base-patch16"

#: (width, height) of the real photos after EXIF orientation varies: small, portrait, landscape, wide, tall.
PHOTOS = [
    "Canon_40D.jpg", "Fujifilm_FinePix_E500.jpg", "Konica_Minolta_DiMAGE_Z3.jpg", "PaintTool_sample.jpg",
    "invalid/image01551.jpg", "invalid/image02206.jpg", "invalid/image01713.jpg", "invalid/image01980.jpg",
    "invalid/image00971.jpg", "invalid/image01088.jpg", "xmp/no_exif.jpg", "xmp/BlueSquare.jpg",
    "orientation/portrait_6.jpg", "orientation/landscape_3.jpg", "exif-org/nikon-e950.jpg",
    "tests/11-tests.jpg", "tests/87_OSError.jpg", "tests/28-hex_value.jpg", "mobile/HMD_Nokia_8.3_5G.jpg",
    "Reconyx_HC500_Hyperfire.jpg",
]
#: (width, height) of synthetic noise images: odd sizes, 1-pixel sides, aspect ratios up to 200:1.
SYNTHETIC = [(225, 333), (333, 225), (1, 300), (300, 1), (1, 1), (2, 3), (31, 29), (29, 30), (224, 224),
             (223, 225), (200, 1), (3, 600), (299, 7), (30, 30), (31, 31)]

# openai/clip-vit-base-patch32 preprocessor_config.json (hub, legacy feature-extractor keys).
CLIP_B32 = {"crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
            "feature_extractor_type": "CLIPFeatureExtractor",
            "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
            "resample": 3, "size": 224}
# google/siglip-base-patch16-224 preprocessor_config.json.
SIGLIP_224 = {"do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
              "image_processor_type": "SiglipImageProcessor", "image_std": [0.5, 0.5, 0.5],
              "processor_class": "SiglipProcessor", "resample": 3, "rescale_factor": 0.00392156862745098,
              "size": {"height": 224, "width": 224}}
# The real checkpoint's settings (models/chinese-clip-vit-base-patch16/processor_config.json, the
# OFA-Sys/chinese-clip-vit-base-patch16 values); checked against that file when it is present.
CHINESE_CLIP_224 = dict(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, resample=3,
                        image_mean=[0.48145466, 0.4578275, 0.40821073],
                        image_std=[0.26862954, 0.26130258, 0.27577711])


def _noise(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    bands = len(Image.new(mode, (1, 1)).getbands())
    data = np.random.default_rng(seed + width * 7919 + height).integers(0, 256, (height, width, bands), np.uint8)
    return Image.fromarray(data[..., 0] if bands == 1 else data, mode)


@pytest.fixture(scope="module")
def images() -> list[tuple[str, Image.Image]]:
    """The real photos (``load_image(...).image``, RGB) and the synthetic ones, labelled."""
    if not EXIF_SAMPLES.is_dir():
        pytest.skip("../shared/data/exif-samples is not present")
    photos = [(name, load_image(EXIF_SAMPLES / "jpg" / name).image) for name in PHOTOS]
    assert all(im.mode == "RGB" for _, im in photos)
    sizes = {im.size for _, im in photos}
    assert any(w < h for w, h in sizes) and any(w > h for w, h in sizes) and min(map(min, sizes)) < 64
    return photos + [(f"noise {w}x{h}", _noise(w, h)) for w, h in SYNTHETIC]


def _image_processor(kind: str, **settings):
    import transformers

    cls = getattr(transformers, f"{kind}ImageProcessorPil")
    return cls(**settings)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_clip) -> dict[str, Path]:
    """Saved processors: the bench-style tiny Chinese-CLIP (processor_config.json layout), the
    real checkpoint's settings, CLIP ViT-B/32 and SigLIP 224 (hub preprocessor_config.json layout)."""
    root = tmp_path_factory.mktemp("processors")
    out = {"tiny-chinese-clip": tiny_clip}
    out["chinese-clip-224"] = root / "chinese-clip-224"
    _image_processor("ChineseCLIP", **CHINESE_CLIP_224).save_pretrained(out["chinese-clip-224"])
    # (without "processor_class", which would make AutoProcessor look for a SigLIP tokenizer)
    siglip = {k: v for k, v in SIGLIP_224.items() if k != "processor_class"}
    for name, config in (("clip-b32", CLIP_B32), ("siglip-224", siglip)):
        out[name] = root / name
        out[name].mkdir()
        (out[name] / "preprocessor_config.json").write_text(json.dumps(config), encoding="utf-8")
    return out


def _expected(processor, image: Image.Image) -> np.ndarray:
    return processor(images=[image], return_tensors="np")["pixel_values"]


def _assert_same(ours: ImagePreprocessor, processor, image: Image.Image, label: str) -> None:
    got, want = ours(image), _expected(processor, image)
    assert got.dtype == np.float32 and got.flags.c_contiguous, label
    assert got.shape == want.shape == (1, 3, ours.input_size, ours.input_size), label
    # Tolerance: exact. (The brief allowed max |diff| <= 1e-5; the recipe reproduces it bit for bit.)
    assert np.array_equal(got, want), f"{label}: max |diff| {np.abs(got - want).max()}"


@pytest.mark.parametrize("name", ["tiny-chinese-clip", "chinese-clip-224", "clip-b32", "siglip-224"])
def test_equals_transformers_processor(name, folders, images):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(folders[name])
    image_processor = getattr(processor, "image_processor", processor)
    assert type(image_processor).__name__.endswith("Pil")  # what this venv loads without torchvision
    ours = ImagePreprocessor.from_folder(folders[name])
    assert ImagePreprocessor.from_config(image_processor.to_dict()).settings == ours.settings
    assert ours.input_size == {"tiny-chinese-clip": 30}.get(name, 224)
    for label, image in images:
        _assert_same(ours, processor, image, f"{name} / {label}")


FLAG_CASES = {
    "nearest": ("CLIP", dict(resample=0, size={"shortest_edge": 40}, crop_size=40)),
    "lanczos": ("CLIP", dict(resample=1, size={"shortest_edge": 40}, crop_size=40)),
    "bilinear": ("CLIP", dict(resample=2, size={"shortest_edge": 40}, crop_size=40)),
    "box": ("CLIP", dict(resample=4, size={"shortest_edge": 40}, crop_size=40)),
    "hamming": ("CLIP", dict(resample=5, size={"shortest_edge": 40}, crop_size=40)),
    "odd crop": ("ChineseCLIP", dict(size={"shortest_edge": 40}, crop_size={"height": 33, "width": 33})),
    "crop > resize (padding)": ("CLIP", dict(size={"shortest_edge": 24}, crop_size=37)),
    "no resize, crop": ("CLIP", dict(do_resize=False, crop_size=45)),
    "square resize, no crop": ("CLIP", dict(size={"height": 41, "width": 41}, do_center_crop=False)),
    "no rescale": ("CLIP", dict(size={"shortest_edge": 32}, crop_size=32, do_rescale=False)),
    "no normalize": ("ChineseCLIP", dict(size={"shortest_edge": 32}, crop_size=32, do_normalize=False)),
    "neither": ("CLIP", dict(size={"shortest_edge": 32}, crop_size=32, do_rescale=False, do_normalize=False)),
    "rescale factor": ("Siglip", dict(size={"height": 35, "width": 35}, rescale_factor=1 / 127.5)),
    "scalar mean/std": ("Siglip", dict(size={"height": 35, "width": 35}, image_mean=0.4, image_std=0.3)),
    "int size, square": ("CLIP", dict(size=36, default_to_square=True, do_center_crop=False)),
    "siglip crop": ("Siglip", dict(size={"height": 40, "width": 44}, do_center_crop=True, crop_size=38)),
}


@pytest.mark.parametrize("case", sorted(FLAG_CASES))
def test_each_setting_matches(case, images):
    """Resample filters, do_* flags, odd crops and zero padding: each matches the processor."""
    kind, settings = FLAG_CASES[case]
    processor = _image_processor(kind, **settings)
    ours = ImagePreprocessor.from_config(processor.to_dict())
    for label, image in images[:12] + images[-len(SYNTHETIC):]:  # the small photos and every synthetic one
        _assert_same(ours, processor, image, f"{case} / {label}")


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "1", "CMYK", "P", "P+transparency", "I;16"])
def test_other_modes_convert_like_transformers(mode):
    """Transparency is composited onto white, other modes converted, as ``do_convert_rgb`` does."""
    image = _noise(47, 61, mode if mode in ("RGBA", "LA", "L", "CMYK") else "RGBA", seed=3)
    if mode in ("1", "I;16"):
        image = image.convert(mode)
    elif mode.startswith("P"):
        image = image.convert("RGB").quantize(64)
        if mode == "P+transparency":
            image.info["transparency"] = 5
    processor = _image_processor("CLIP", size={"shortest_edge": 32}, crop_size=32)
    _assert_same(ImagePreprocessor.from_config(processor.to_dict()), processor, image, mode)


def test_without_convert_rgb_needs_rgb():
    ours = ImagePreprocessor.from_config({**SIGLIP_224, "do_convert_rgb": False})
    assert ours(_noise(10, 10)).shape == (1, 3, 224, 224)
    with pytest.raises(ValueError, match="mode L"):
        ours(_noise(10, 10, "L"))


def test_from_folder_layouts(folders, tmp_path):
    """Hub layout (only preprocessor_config.json) and transformers 5 ``save_pretrained`` layout
    (only processor_config.json); with both, processor_config.json wins, as in transformers."""
    from transformers import AutoProcessor

    hub, saved = folders["chinese-clip-224"], folders["tiny-chinese-clip"]
    assert (hub / "preprocessor_config.json").is_file() and not (hub / "processor_config.json").exists()
    assert (saved / "processor_config.json").is_file() and not (saved / "preprocessor_config.json").exists()
    assert ImagePreprocessor.from_folder(hub).input_size == 224
    assert ImagePreprocessor.from_folder(str(saved)).input_size == 30

    both = tmp_path / "both"
    both.mkdir()
    (both / "preprocessor_config.json").write_text(json.dumps(CLIP_B32), encoding="utf-8")
    nested = {**CLIP_B32, "size": 50, "crop_size": 50}
    (both / "processor_config.json").write_text(json.dumps({"image_processor": nested}), encoding="utf-8")
    loaded = AutoProcessor.from_pretrained(both)
    assert ImagePreprocessor.from_folder(both).input_size == loaded.crop_size["height"] == 50

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NotReproducible, match="no image processor config"):
        ImagePreprocessor.from_folder(empty)
    (empty / "processor_config.json").write_text(json.dumps({"processor_class": "X"}), encoding="utf-8")
    with pytest.raises(NotReproducible, match="no image processor config"):
        ImagePreprocessor.from_folder(empty)
    (empty / "preprocessor_config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(NotReproducible, match="not readable JSON"):
        ImagePreprocessor.from_folder(empty)


@pytest.mark.skipif(not REAL_CHECKPOINT.is_dir(), reason="models/chinese-clip-vit-base-patch16 is not present")
def test_real_checkpoint(images):
    from transformers import AutoProcessor

    config = json.loads((REAL_CHECKPOINT / "processor_config.json").read_text(encoding="utf-8"))["image_processor"]
    assert {k: config[k] for k in CHINESE_CLIP_224} == {**CHINESE_CLIP_224, "crop_size": {"height": 224, "width": 224}}
    processor = AutoProcessor.from_pretrained(REAL_CHECKPOINT)
    ours = ImagePreprocessor.from_folder(REAL_CHECKPOINT)
    for label, image in images[::4]:
        _assert_same(ours, processor, image, f"real checkpoint / {label}")


UNSUPPORTED = {
    "image_processor_type": {"image_processor_type": "ViTImageProcessor"},
    "feature_extractor_type": {"feature_extractor_type": "DeiTFeatureExtractor"},
    "do_pad": {**SIGLIP_224, "do_pad": True},
    "crop_pct": {**CLIP_B32, "crop_pct": 0.875},
    "use_square_size": {**CLIP_B32, "use_square_size": True},
    "resample": {**CLIP_B32, "resample": 7},
    "resample=": {**CLIP_B32, "resample": "bicubic"},
    "longest_edge": {**CLIP_B32, "size": {"shortest_edge": 224, "longest_edge": 448}},
    "max_height": {**SIGLIP_224, "size": {"max_height": 224, "max_width": 224}},
    "output size depends on the image": {**SIGLIP_224, "size": 224},
    "non-square": {**CLIP_B32, "crop_size": {"height": 224, "width": 200}},
    "image_mean": {**CLIP_B32, "image_mean": [0.5, 0.5]},
    "data_format": {**CLIP_B32, "data_format": "channels_last"},
    "rescale_factor": {**CLIP_B32, "rescale_factor": "1/255"},
}


@pytest.mark.parametrize("setting", sorted(UNSUPPORTED))
def test_unsupported_configs_name_the_setting(setting):
    with pytest.raises(NotReproducible, match=setting):
        ImagePreprocessor.from_config(UNSUPPORTED[setting])
    assert issubclass(NotReproducible, ValueError)


def test_no_torch_or_transformers_import():
    """A classify run on OpenVINO / ONNX Runtime preprocesses without loading torch or transformers."""
    code = (
        "import sys, json\n"
        "from PIL import Image\n"
        "from wwts.core.input import ImagePreprocessor\n"
        f"p = ImagePreprocessor.from_config(json.loads({json.dumps(json.dumps(CLIP_B32))}))\n"
        "assert p(Image.new('RGB', (300, 200))).shape == (1, 3, 224, 224)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'torchvision') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
