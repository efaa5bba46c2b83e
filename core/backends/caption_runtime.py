"""BLIP captions on OpenVINO: the two towers of ``caption_towers.py`` converted with
``openvino.convert_model``, saved in the model's OpenVINO export (``export.py``: sub-folders
``caption-image-float`` and ``caption-step-float``, verified on every load, converted again when
corrupt or stale), compiled, and driven by a NumPy greedy loop whose batch shrinks as captions end.

Precision: float32 (``INFERENCE_PRECISION_HINT f32``) unless ``--dtype bfloat16`` / ``float16``
asks otherwise, so that the captions are torch float32's token for token (tests/test_caption_openvino.py;
``scripts/bench_caption.py`` on the bench photos). ``CaptionRuntime.generate`` returns what
``caption_generate.blip_greedy`` returns.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import export

log = logging.getLogger(__name__)

#: The two towers' names in the export.
TOWERS = ("caption-image", "caption-step")
#: The towers ``--quantize int8`` runs with int8 weights, and how (``nncf.compress_weights``:
#: per-output-channel asymmetric int8 weights, activations stay float; no calibration data). The
#: decoder step only: measured on full-size random-weight BLIP (exif-samples photos x 20 tokens,
#: 2-core AMD EPYC Zen 4, busy; ``agreement``), int8 step: 5/8 captions equal torch float32's, token
#: overlap 0.86, 36.3 s against OpenVINO f32's 50.3 s (4 photos: 2/4, 0.85, 12.9 s against 16.0 s);
#: both towers int8: 2/8, 0.60, 62.4 s (4 photos: 1/4, 0.54, 13.5 s); the vision tower only
#: (4 photos): 1/4, 0.55, 14.8 s.
INT8_TOWERS = ("caption-step",)
INT8_SCHEME = "nncf-weights-int8-asym"
#: Conversions made in this process (read by tests).
CONVERSIONS = {"caption": 0}


class CaptionRuntime:
    """BLIP's compiled towers and the greedy loop over them.

    Args:
        image: ``pixel_values (B, 3, S, S)`` → ``(keys, values)`` ``(L, B, H, P, d)``.
        step: ``BlipDecoderStep``'s inputs by name → ``(logits (B, V), keys, values)``.
        bos, eos, pad: BLIP's ``text_config`` ``bos_token_id``, ``sep_token_id``, ``pad_token_id``.
    """

    def __init__(self, image: Callable, step: Callable, *, bos: int, eos: int, pad: int) -> None:
        self.image, self.step = image, step
        self.bos, self.eos, self.pad = bos, eos, pad
        #: This run converted a tower (``build_caption_runtime``): its load seconds are a conversion's.
        self.converted = False

    def generate(self, pixel_values: np.ndarray, input_ids: np.ndarray | None = None, *,
                 max_new_tokens: int) -> np.ndarray:
        """``(B, L - 1 + N)`` token ids, as ``caption_generate.blip_greedy``: ``[bos] prefix`` (the
        prompt ``input_ids (B, L)`` without its ``[CLS]`` and ``[SEP]``, the same for every row),
        then the new tokens, rows padded after their end-of-sequence token."""
        keys, values = self.image(np.ascontiguousarray(pixel_values, dtype=np.float32))
        batch = keys.shape[1]
        prompt = np.full((batch, 1), self.bos, dtype=np.int64)
        if input_ids is not None:
            prompt = np.concatenate([prompt, np.asarray(input_ids, dtype=np.int64)[:, 1:-1]], axis=1)
        shape = list(keys.shape)
        shape[3] = 1  # one masked slot: the cache is never empty (caption_towers' docstring)
        past_k, past_v = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
        mask = np.zeros((batch, 1), np.int64)
        state = [keys, values, past_k, past_v, mask]
        for j in range(prompt.shape[1]):  # the prompt, one token a step
            logits, state = self._advance(prompt[:, j:j + 1], j, state)
        out = np.full((batch, max_new_tokens), self.pad, dtype=np.int64)
        alive, steps = np.arange(batch), 0
        for step in range(max_new_tokens):
            tokens = logits.argmax(axis=-1)
            out[alive, step] = tokens
            steps = step + 1
            ended = tokens == self.eos
            if ended.all() or step + 1 == max_new_tokens:
                break
            if ended.any():
                keep = np.flatnonzero(~ended)
                alive, tokens = alive[keep], tokens[keep]
                state = [s[:, keep] for s in state[:4]] + [state[4][keep]]
            logits, state = self._advance(tokens[:, None], prompt.shape[1] + step, state)
        return np.concatenate([prompt, out[:, :steps]], axis=1)

    def _advance(self, ids: np.ndarray, position: int, state: list) -> tuple[np.ndarray, list]:
        """One decoder step at ``position`` for the rows in ``state``."""
        keys, values, past_k, past_v, mask = state
        mask = np.concatenate([mask, np.ones((mask.shape[0], 1), np.int64)], axis=1)
        logits, past_k, past_v = self.step({
            "input_ids": np.ascontiguousarray(ids, dtype=np.int64),
            "position_ids": np.full(ids.shape, position, dtype=np.int64), "attention_mask": mask,
            "past_keys": past_k, "past_values": past_v, "cross_keys": keys, "cross_values": values})
        return logits, [keys, values, past_k, past_v, mask]


def agreement(reference: np.ndarray, other: np.ndarray, eos: int) -> tuple[float, float]:
    """``(exact-caption rate, token overlap)`` of ``other``'s captions against ``reference``'s (int8
    against torch float32): token ids ``(B, T)`` as ``CaptionRuntime.generate`` returns them, each row
    read up to its first ``eos``. The exact rate is the share of rows whose tokens are equal; the
    overlap, averaged over rows, the share of positions holding the same token, out of the longer
    row (1.0: equal; a caption that goes another way at its third token keeps two positions)."""
    def caption(row: np.ndarray) -> list[int]:
        ends = np.flatnonzero(row == eos)
        return [int(t) for t in row[:ends[0] + 1 if len(ends) else len(row)]]

    pairs = [(caption(a), caption(b)) for a, b in zip(np.asarray(reference), np.asarray(other))]
    exact = sum(a == b for a, b in pairs) / len(pairs)
    overlap = sum(sum(x == y for x, y in zip(a, b)) / max(len(a), len(b)) for a, b in pairs) / len(pairs)
    return float(exact), float(overlap)


def _compiled_call(compiled: Any) -> Callable:
    """A compiled model as ``inputs → tuple of output arrays`` (one reused infer request)."""
    request = compiled.create_infer_request()
    outputs = list(compiled.outputs)

    def call(inputs: Any) -> tuple:
        request.infer(inputs if isinstance(inputs, dict) else {0: inputs})
        return tuple(np.array(request.get_tensor(o).data) for o in outputs)
    return call


def saved(folder: str) -> bool:
    """Whether both towers of the weights in model ``folder`` are saved and verify (the size rule's
    question, asked before the model loads; a corrupt one is removed, as ``export.verified`` does)."""
    from .openvino import version

    try:
        where = export.export_dir(folder, "openvino", version())
    except OSError:
        return False
    return all(export.verified(where, f"{name}-float") is not None for name in TOWERS)


def saved_towers(model: Any, folder: str, input_size: int, int8: bool = False,
                 runtime: str = "openvino") -> dict[str, dict[str, Any]]:
    """The two towers' verified ``export.json`` entries (with ``dir``) in the model's ``runtime``
    export (``openvino``, or ``onnxruntime``: ``model.onnx`` from ``torch.onnx.export``), converting
    first those that are missing, stale or corrupt (announced in one line each); with ``int8``
    (OpenVINO), the ``INT8_TOWERS`` as their NNCF int8-weight copies (``caption-step-int8``: made
    from the float ones, saved in the same export).

    Raises:
        OSError: ``folder`` is not a model folder; whatever ``openvino.convert_model``,
            ``torch.onnx.export`` or ``nncf.compress_weights`` raise.
    """
    version = _version(runtime)
    where = export.export_dir(folder, runtime, version)
    entries = {}
    for name in TOWERS:
        fields = {"tower": name, "precision": "float", "input_size": input_size, "family": "blip"}
        entry = export.verified(where, f"{name}-float", fields)
        if entry is None:
            log.warning("converting BLIP's %s tower for %s (first run only; saved in %s)", name,
                        "OpenVINO" if runtime == "openvino" else "ONNX Runtime", export.cache_root())
            write = (_writer if runtime == "openvino" else _onnx_writer)(model, name, input_size)
            entry = export.build_tower(where, f"{name}-float", fields, write, weights_folder=folder, version=version)
        if int8 and name in INT8_TOWERS:
            fields = {**fields, "precision": "int8", "scheme": INT8_SCHEME}
            float_dir, entry = Path(entry["dir"]), export.verified(where, f"{name}-int8", fields)
            if entry is None:
                log.warning("compressing BLIP's %s tower's weights to int8 with NNCF (first run only)", name)
                entry = export.build_tower(where, f"{name}-int8", fields, _int8_writer(float_dir, name),
                                           weights_folder=folder, version=version)
        entries[name] = entry
    return entries


def _version(runtime: str) -> str:
    """The installed ``runtime``'s version (it keys the export)."""
    if runtime == "openvino":
        from .openvino import version
    else:
        from .onnxruntime import version
    return version()


def _onnx_writer(model: Any, name: str, input_size: int) -> Callable[[Path], dict]:
    """Writes tower ``name`` as ``model.onnx`` with ``torch.onnx.export``'s TorchScript exporter
    (``dynamo=False``: it traces the decoder step's cache tensors as ``convert_model`` does), the
    batch and cache-length axes dynamic (``caption_towers.DYNAMIC_AXES``)."""
    def write(tmp: Path) -> dict:
        import torch

        from .caption_towers import DYNAMIC_AXES, OUTPUTS, BlipDecoderStep, BlipImageTower, examples

        t0 = time.perf_counter()
        image_example, step_example = examples(model, input_size)
        module = BlipImageTower(model) if name == "caption-image" else BlipDecoderStep(model)
        example = image_example if name == "caption-image" else step_example
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), tuple(example.values()), str(tmp / "model.onnx"),
                              input_names=list(example), output_names=list(OUTPUTS[name]),
                              dynamic_axes={k: v for k, v in DYNAMIC_AXES.items() if k in example or k in OUTPUTS[name]},
                              dynamo=False, opset_version=17)
        CONVERSIONS["caption"] += 1
        log.warning("%s tower ready for ONNX Runtime in %.1f s", name, time.perf_counter() - t0)
        return {}
    return write


def _int8_writer(float_dir: Path, name: str) -> Callable[[Path], dict]:
    """Writes the float tower in ``float_dir`` with its weights compressed by
    ``nncf.compress_weights`` (``INT8_SCHEME``)."""
    def write(tmp: Path) -> dict:
        import nncf
        import openvino as ov

        t0 = time.perf_counter()
        compressed = nncf.compress_weights(ov.Core().read_model(float_dir / "model.xml"),
                                           mode=nncf.CompressWeightsMode.INT8_ASYM)
        ov.save_model(compressed, tmp / "model.xml", compress_to_fp16=False)
        CONVERSIONS["caption"] += 1
        log.warning("%s tower's int8 weights ready in %.1f s", name, time.perf_counter() - t0)
        return {}
    return write


def _writer(model: Any, name: str, input_size: int) -> Callable[[Path], dict]:
    def write(tmp: Path) -> dict:
        import openvino as ov
        import torch

        from .caption_towers import BlipDecoderStep, BlipImageTower, examples

        t0 = time.perf_counter()
        image_example, step_example = examples(model, input_size)
        module = BlipImageTower(model) if name == "caption-image" else BlipDecoderStep(model)
        example = image_example if name == "caption-image" else step_example
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's warnings: shapes stay dynamic
            ov_model = ov.convert_model(module.eval(), example_input=example)
        ov.save_model(ov_model, tmp / "model.xml", compress_to_fp16=False)
        CONVERSIONS["caption"] += 1
        log.warning("%s tower ready for OpenVINO in %.1f s", name, time.perf_counter() - t0)
        return {}
    return write


def build_caption_runtime(model: Any, folder: str, input_size: int, *, device: str = "CPU", dtype: str = "auto",
          threads: int | None = None, int8: bool = False, runtime: str = "openvino",
          providers: tuple = ()) -> CaptionRuntime:
    """BLIP's ``CaptionRuntime`` on OpenVINO ``device`` (``int8``: with ``INT8_TOWERS``' weights in
    int8), or on ONNX Runtime's ``providers`` (``runtime="onnxruntime"``, float32): converted or
    loaded from the export, compiled.

    Raises:
        OSError: ``folder`` is not a model folder; whatever the exporter or the runtime raise.
    """
    before = CONVERSIONS["caption"]
    entries = saved_towers(model, folder, input_size, int8, runtime)
    if runtime == "onnxruntime":
        from .onnxruntime import check_dtype, session

        check_dtype(dtype)
        image_s, step_s = (session(Path(entries[n]["dir"]) / "model.onnx", providers, threads) for n in TOWERS)
        image: Callable = lambda pixels: tuple(image_s.run(None, {"pixel_values": pixels}))  # noqa: E731
        step: Callable = lambda feeds: tuple(step_s.run(None, feeds))  # noqa: E731
    else:
        from .openvino import PRECISION_HINTS, compile_model

        hint = PRECISION_HINTS.get(dtype, "f32")
        image, step = (_compiled_call(compile_model(Path(entries[n]["dir"]) / "model.xml", device, hint, threads))
                       for n in TOWERS)
    text = model.config.text_config
    built = CaptionRuntime(image, step, bos=text.bos_token_id, eos=text.sep_token_id, pad=text.pad_token_id)
    built.converted = CONVERSIONS["caption"] != before
    return built
