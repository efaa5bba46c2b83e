"""Labels (``core/labels``): vocabularies, prompt ensembles, label hygiene, labels longer than the text
tower, multi-label, abstain and closed-set classifiers, on tiny random models saved with
``save_pretrained`` and loaded through the CLI."""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
from pathlib import Path

import pytest

from tests.helpers import classify
from wwts.core import UsageError
from wwts.core import labels as lb
from wwts.core.config import RunConfig

TEMPLATE = "一张{}的照片。"
#: Hand-set cosines with the image direction (``handset_model``): 人 and 车 fit, 猫 does not; the
#: neutral prompt (某物) sits at 0.5, the logit scale is 10.
COSINES = {"人": 0.9, "车": 0.6, "猫": -0.5}
NEUTRAL_COS, SCALE = 0.5, 10.0


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# -- vocabularies --------------------------------------------------------------------------------

def test_everyday_vocab_is_clean():
    vocab = lb.load_vocab(None)
    assert vocab.name == "everyday" and vocab.builtin and not vocab.notes
    assert 300 <= len(vocab.labels) <= 500
    norms = [lb.normalize_label(x) for x in vocab.labels]
    assert len(set(norms)) == len(norms)
    assert lb.text_issues(vocab.labels) == []  # no duplicates, no label inside another


def test_imagenet_vocab_merges_its_repeats_and_says_so():
    vocab = lb.load_vocab("imagenet")
    assert len(vocab.labels) == len(set(vocab.labels)) == 997
    assert {"导弹", "有轨电车", "太阳镜"} <= set(vocab.labels)
    assert any("导弹" in note and "kept once" in note for note in vocab.notes)
    assert "豹纹壁虎" in vocab.labels and "豹紋壁虎" not in vocab.labels  # traditional → simplified, noted
    assert "MIT" in Path(lb.__file__).with_name("data").joinpath("LICENSE-imagenet-1k-zh.txt").read_text("utf-8")


def test_vocab_file_and_unknown_name(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("# mine\n人\n车\n", encoding="utf-8")
    assert lb.load_vocab(str(path)).labels == ("人", "车")
    with pytest.raises(UsageError, match="built-in"):
        lb.load_vocab("nosuchvocab")


def test_no_labels_uses_the_everyday_vocabulary(tiny_clip, sample_images, tmp_path):
    out = tmp_path / "r.json"
    result = classify(sample_images, "--model", tiny_clip, "--out", out, "--dtype", "float32", "--quiet")
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text(encoding="utf-8"))
    everyday = set(lb.load_vocab("everyday").labels)
    assert doc["run"]["labels"] == list(lb.load_vocab("everyday").labels)
    assert doc["run"]["prompt"] == list(lb.CHINESE_TEMPLATES)  # the default ensemble for Chinese-CLIP
    assert doc["results"] and all(r["label"] in everyday and r["labels"] is None for r in doc["results"])


def test_vocab_imagenet_run(tiny_clip, sample_images, tmp_path):
    out = tmp_path / "r.jsonl"
    result = classify(sample_images / "coffee.jpg", "--vocab", "imagenet", "--model", tiny_clip, "--out", out,
                      "--dtype", "float32")
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "r.jsonl.run.json").read_text(encoding="utf-8"))
    assert len(run["labels"]) == 997 and run["vocab"] == "imagenet" and run["vocab_notes"]
    rec = json.loads(out.read_text(encoding="utf-8"))
    assert rec["label"] in set(run["labels"])


@pytest.mark.parametrize("args, message", [
    (["--labels", "人,车", "--vocab", "imagenet"], "not both"),
    (["--prompt", TEMPLATE, "--prompts", "PROMPTS"], "not both"),
    (["--vocab", "nosuch"], "built-in vocabulary"),
])
def test_label_option_errors_exit_2(tiny_clip, sample_images, tmp_path, args, message):
    prompts = tmp_path / "p.txt"
    prompts.write_text(TEMPLATE + "\n", encoding="utf-8")
    args = [str(prompts) if a == "PROMPTS" else a for a in args]
    result = classify(sample_images, "--model", tiny_clip, *args)
    assert result.exit_code == 2 and message in result.output, result.output


# -- prompt ensembles ----------------------------------------------------------------------------

def test_ensemble_of_one_template_is_the_template_itself_and_means_are_renormalised():
    import numpy as np
    import torch

    feats = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    # torch tensors (the torch backend) and NumPy arrays (OpenVINO, ONNX Runtime) give the same
    for given in (feats, feats.numpy()):
        assert np.array_equal(lb.ensemble(given[:3], np.arange(3), 3), feats[:3].numpy())
        out = lb.ensemble(given, np.array([0, 0, 1, 1, 1, 2]), 3)
        expected = torch.nn.functional.normalize(feats[2:5].mean(0), dim=0).numpy()
        assert out.dtype == np.float32 and np.allclose(out[1], expected, atol=1e-6)
        assert np.allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-6)


def test_label_scores_softmax_and_multi_label_sigmoids():
    import numpy as np
    import torch

    logits = np.array([[30.0, 10.0, 20.0, 25.0], [1000.0, 990.0, 0.0, 995.0]], dtype=np.float32)
    single = lb.label_scores(logits, 3, multi_label=False)  # the neutral column is ignored
    assert np.allclose(single, torch.softmax(torch.from_numpy(logits[:, :3]), -1).numpy(), atol=1e-7)
    assert np.isfinite(single).all() and np.allclose(single.sum(-1), 1.0)  # large logits do not overflow
    clip = lb.label_scores(logits, 3, multi_label=True)  # CLIP-style: against the neutral prompt
    assert np.allclose(clip, torch.sigmoid(torch.from_numpy(logits[:, :3] - logits[:, 3:])).numpy(), atol=1e-7)
    siglip = lb.label_scores(logits[:, :3] / 100, 3, multi_label=True, logit_bias=-0.2)
    assert np.allclose(siglip, torch.sigmoid(torch.from_numpy(logits[:, :3] / 100 - 0.2)).numpy(), atol=1e-7)
    decisions = lb.decide(np.array([[0.2, 0.5, 0.5, 0.1]]), 2, threshold=0.15)
    assert decisions[0][0] == [(1, 0.5), (2, 0.5)]  # top_k: equal scores keep the labels' order
    assert [i for i, _ in decisions[0][1]] == [1, 2, 0]  # passed


def test_one_template_ensemble_scores_exactly_like_the_single_template(tiny_clip, sample_images, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# one template\n" + TEMPLATE + "\n", encoding="utf-8")
    scores = []
    for args in (["--prompt", TEMPLATE], ["--prompts", prompts]):
        out = tmp_path / f"r{len(scores)}.json"
        result = classify(sample_images, "--labels", "人,车,猫", "--model", tiny_clip, "--out", out,
                          "--dtype", "float32", *args)
        assert result.exit_code == 0, result.output
        scores.append([r["top_k"] for r in json.loads(out.read_text(encoding="utf-8"))["results"]])
    assert scores[0] == scores[1]


def test_prompt_ensemble_changes_scores_and_is_recorded(tiny_clip, sample_images, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{TEMPLATE}\n{{}}的照片。\n", encoding="utf-8")
    out = tmp_path / "r.json"
    result = classify(sample_images, "--labels", "人,车,猫", "--model", tiny_clip, "--out", out, "--prompts", prompts)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["run"]["prompt"] == [TEMPLATE, "{}的照片。"]
    assert all(abs(sum(t["score"] for t in r["top_k"]) - 1) < 1e-4 for r in doc["results"])


@pytest.mark.parametrize("text, message", [("没有占位符\n", "line 1"), ("{}\n{}\n", "twice"), ("# only\n", "no templates"),
                                           ("a {x} {}\n", "line 1")])
def test_bad_prompts_file(tmp_path, text, message):
    path = tmp_path / "p.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UsageError, match=message):
        lb.read_prompts_file(path)


# -- hygiene -------------------------------------------------------------------------------------

@pytest.mark.parametrize("labels, kind", [
    (["猫", "猫 "], None),  # stripped by the label parser: never a pair
    (["ｃａｔ", "cat"], "same"),  # full width
    (["貓咪", "猫咪"], "same"),  # traditional / simplified
    (["手机", "智能手机"], "contains"),
])
def test_text_issues(labels, kind):
    issues = lb.text_issues([x.strip() for x in labels])
    if kind is None:
        assert issues == [lb.LabelIssue("same", "猫", "猫")]
    else:
        assert [i.kind for i in issues] == [kind]
        assert labels[0] in issues[0].message() and labels[1] in issues[0].message()


def test_feature_issues_name_near_identical_pairs():
    import torch

    feats = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.999, 0.02], [0.0, 1.0]]), dim=-1)
    issues = lb.feature_issues(["甲", "乙", "丙"], feats)
    assert [(i.kind, i.first, i.second) for i in issues] == [("similar", "甲", "乙")]
    assert issues[0].cosine > lb.SIMILAR_COSINE and "cosine" in issues[0].message()


@pytest.mark.parametrize("labels, needle", [("手机,智能手机", "contains"), ("ｃａｔ,cat", "same after normalisation"),
                                            ("貓,猫", "same after normalisation")])
def test_hygiene_warns_per_pair_and_strict_exits_2(tiny_clip, sample_images, tmp_path, labels, needle):
    image = sample_images / "coffee.jpg"
    result = classify(image, "--labels", labels, "--model", tiny_clip, "--out", tmp_path / "r.csv")
    assert result.exit_code == 0, result.output
    assert sum(needle in line for line in result.output.splitlines()) == 1, result.output
    strict = classify(image, "--labels", labels, "--model", tiny_clip, "--strict-labels", "--out", tmp_path / "s.csv")
    assert strict.exit_code == 2 and needle in strict.output and not (tmp_path / "s.csv").exists()


def test_similar_features_warn(tiny_clip, sample_images, tmp_path):
    # 机 and 视 are in the tiny vocabulary; 鑫 and 淼 are not: both read as [UNK], so their
    # features are identical (cosine 1) while their text differs
    result = classify(sample_images / "coffee.jpg", "--labels", "鑫,淼,猫", "--model", tiny_clip)
    assert result.exit_code == 0, result.output
    assert "nearly identical text features" in result.output and "'鑫'" in result.output
    strict = classify(sample_images / "coffee.jpg", "--labels", "鑫,淼,猫", "--model", tiny_clip, "--strict-labels")
    assert strict.exit_code == 2


# -- multi-label and abstain on hand-set features ------------------------------------------------

def handset_model(src: Path, dst: Path, images: list[Path]) -> Path:
    """A copy of the tiny Chinese-CLIP whose projections are solved so that every image's feature
    is the unit vector e0 and each prompt's text feature has the cosine of ``COSINES`` with it
    (the neutral prompt ``NEUTRAL_COS``); logit scale ``SCALE``."""
    import torch
    from transformers import AutoModel, AutoProcessor

    from tests.tiny_models import IMAGE_SIZE
    from wwts.core.input.decode import load_image

    shutil.copytree(src, dst)
    model, processor = AutoModel.from_pretrained(dst).eval(), AutoProcessor.from_pretrained(dst)
    texts, _ = lb.expand([*COSINES, lb.neutral_label([TEMPLATE])], [TEMPLATE])
    seen = {}
    model.text_projection.register_forward_hook(lambda m, args, out: seen.__setitem__("text", args[0]))
    model.visual_projection.register_forward_hook(lambda m, args, out: seen.__setitem__("image", args[0]))
    with torch.no_grad():
        model.get_text_features(**processor(text=texts, padding=True, return_tensors="pt"))
        pixels = [load_image(p, draft_size=IMAGE_SIZE).image for p in images]
        model.get_image_features(**processor(images=pixels, return_tensors="pt"))
    dim = model.text_projection.weight.shape[0]
    targets = torch.zeros(len(texts), dim)
    for row, cos in enumerate([*COSINES.values(), NEUTRAL_COS]):
        targets[row, 0], targets[row, row + 1] = cos, math.sqrt(1 - cos * cos)
    h_text, h_image = seen["text"].double(), seen["image"].double()
    weight_t = (torch.linalg.pinv(h_text) @ targets.double()).T  # W h_i = t_i for every prompt
    a = torch.linalg.pinv(h_image) @ torch.ones(len(images), 1, dtype=torch.float64)  # a . h_j = 1
    weight_v = torch.zeros(dim, 1, dtype=torch.float64)
    weight_v[0] = 1.0
    with torch.no_grad():
        model.text_projection.weight.copy_(weight_t.float())
        model.visual_projection.weight.copy_((weight_v @ a.T).float())
        model.logit_scale.fill_(math.log(SCALE))
    model.save_pretrained(dst)
    return dst


@pytest.fixture(scope="module")
def handset(tmp_path_factory, sample_images):
    from tests.tiny_models import build_tiny_chinese_clip

    base = tmp_path_factory.mktemp("handset")
    images = [sample_images / "coffee.jpg", sample_images / "chelsea.png"]
    return handset_model(build_tiny_chinese_clip(base / "tiny"), base / "model", images), images


def read_records(out: Path) -> list[dict]:
    if out.suffix == ".json":
        return json.loads(out.read_text(encoding="utf-8"))["results"]
    if out.suffix == ".jsonl":
        return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    rows = list(csv.DictReader(out.read_bytes().decode("utf-8-sig").splitlines()))
    for row in rows:
        for key in ("top_k", "labels"):
            row[key] = [{"label": x.rsplit(":", 1)[0], "score": float(x.rsplit(":", 1)[1])}
                        for x in row[key].split(";") if x]
        row["score"] = float(row["score"])
    return rows


@pytest.mark.parametrize("ext", ["csv", "json", "jsonl"])
def test_multi_label_lists_every_label_over_the_threshold(handset, tmp_path, ext):
    model, images = handset
    out = tmp_path / f"r.{ext}"
    result = classify(*images, "--labels", ",".join(COSINES), "--prompt", TEMPLATE, "--model", model,
                      "--multi-label", "--threshold", "0.5", "--out", out, "--dtype", "float32")
    assert result.exit_code == 0, result.output
    expected = {k: sigmoid(SCALE * (c - NEUTRAL_COS)) for k, c in COSINES.items()}
    records = read_records(out)
    assert len(records) == 2
    for rec in records:
        assert [x["label"] for x in rec["labels"]] == ["人", "车"]  # 猫 scores 0.00005: left out
        for item in rec["labels"] + rec["top_k"]:
            assert abs(item["score"] - expected[item["label"]]) < 2e-3
        assert rec["label"] == "人" and [x["label"] for x in rec["top_k"]] == ["人", "车", "猫"]


@pytest.mark.parametrize("ext", ["csv", "json", "jsonl"])
def test_abstain_gives_the_other_label_and_keeps_top_k(handset, tmp_path, ext):
    model, images = handset
    out = tmp_path / f"r.{ext}"
    # single-label softmax: 人 gets e^9 / (e^9 + e^6 + e^-5) = 0.953
    result = classify(*images, "--labels", ",".join(COSINES), "--prompt", TEMPLATE, "--model", model,
                      "--min-score", "0.97", "--other-label", "未知", "--out", out, "--dtype", "float32")
    assert result.exit_code == 0, result.output
    for rec in read_records(out):
        assert rec["label"] == "未知" and abs(rec["score"] - 0.9526) < 2e-3
        assert [x["label"] for x in rec["top_k"]] == ["人", "车", "猫"] and not rec["labels"]
    kept = tmp_path / f"k.{ext}"
    result = classify(*images, "--labels", ",".join(COSINES), "--prompt", TEMPLATE, "--model", model,
                      "--min-score", "0.9", "--out", kept, "--dtype", "float32")
    assert result.exit_code == 0 and all(r["label"] == "人" for r in read_records(kept))


def test_multi_label_with_min_score_abstains_on_the_per_label_score(handset, tmp_path):
    model, images = handset
    out = tmp_path / "r.jsonl"
    result = classify(*images, "--labels", ",".join(COSINES), "--prompt", TEMPLATE, "--model", model, "--multi-label",
                      "--threshold", "0.99", "--min-score", "0.99", "--out", out, "--dtype", "float32")
    assert result.exit_code == 0, result.output
    for rec in read_records(out):  # 人 scores sigmoid(4) = 0.982 < 0.99
        assert rec["label"] == "其他" and rec["labels"] == [] and rec["top_k"][0]["label"] == "人"


def test_siglip_multi_label_is_the_sigmoid_of_its_logits(sample_images, tmp_path):
    import torch
    from transformers import AutoModel, AutoProcessor

    from tests.tiny_models import IMAGE_SIZE, build_tiny_siglip
    from wwts.core.input.decode import load_image

    folder = build_tiny_siglip(tmp_path / "siglip")
    labels, template = ["cat", "dog", "car"], "a photo of a {}."
    image, out = sample_images / "chelsea.png", tmp_path / "r.jsonl"
    # torch float32 pinned: the reference below is torch's forward in float32
    result = classify(image, "--labels", ",".join(labels), "--prompt", template, "--model", folder, "--out", out,
                      "--dtype", "float32", "--multi-label", "--threshold", "0", "--backend", "torch")
    assert result.exit_code == 0, result.output
    rec = json.loads(out.read_text(encoding="utf-8"))
    ours = {t["label"]: t["score"] for t in rec["labels"]}
    model, processor = AutoModel.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)
    inputs = processor(text=[template.format(x) for x in labels], images=load_image(image, draft_size=IMAGE_SIZE).image,
                       padding="max_length", return_tensors="pt")
    with torch.no_grad():
        probs = model(**inputs).logits_per_image.sigmoid()[0]
    assert len(ours) == 3
    for label, p in zip(labels, probs.tolist()):
        assert abs(ours[label] - p) < 1e-5, (label, ours, probs)


# -- closed-set classifiers ----------------------------------------------------------------------

def tiny_vit_classifier(folder: Path, problem_type: str | None = None) -> Path:
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    id2label = {0: "tabby, tabby cat", 1: "sports car", 2: "espresso"}
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=37, num_labels=3, id2label=id2label,
                       label2id={v: k for k, v in id2label.items()}, problem_type=problem_type)
    torch.manual_seed(0)
    ViTForImageClassification(config).eval().save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_closed_set_classifier_uses_its_id2label_and_the_label_map(sample_images, tmp_path):
    folder = tiny_vit_classifier(tmp_path / "vit")
    label_map = tmp_path / "map.json"
    label_map.write_text(json.dumps({"tabby, tabby cat": "虎斑猫", "1": "跑车"}, ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "r.json"
    result = classify(sample_images, "--model", folder, "--label-map", label_map, "--out", out, "--top-k", "5")
    assert result.exit_code == 0, result.output
    assert "no entry for 1 of the 3 labels" in result.output
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["run"]["labels"] == ["虎斑猫", "跑车", "espresso"] and doc["run"]["closed_set"] is True
    for rec in doc["results"]:
        assert len(rec["top_k"]) == 3 and rec["label"] in doc["run"]["labels"]
        assert abs(sum(t["score"] for t in rec["top_k"]) - 1) < 1e-4


def test_closed_set_multi_label_checkpoint_scores_with_a_sigmoid(sample_images, tmp_path):
    folder = tiny_vit_classifier(tmp_path / "vit", "multi_label_classification")
    out = tmp_path / "r.csv"
    result = classify(sample_images, "--model", folder, "--multi-label", "--threshold", "0", "--out", out)
    assert result.exit_code == 0, result.output
    for rec in read_records(out):
        assert len(rec["labels"]) == 3 and all(0 < x["score"] < 1 for x in rec["labels"])
        assert [x["score"] for x in rec["labels"]] == sorted((x["score"] for x in rec["labels"]), reverse=True)


def test_closed_set_refuses_labels(sample_images, tmp_path):
    folder = tiny_vit_classifier(tmp_path / "vit")
    result = classify(sample_images, "--model", folder, "--labels", "人,车")
    assert result.exit_code == 2 and "closed-set" in result.output


def test_bad_label_map_exits_2(sample_images, tmp_path):
    bad = tmp_path / "map.json"
    bad.write_text("[1, 2]", encoding="utf-8")
    result = classify(sample_images, "--label-map", bad)
    assert result.exit_code == 2 and "JSON object" in result.output


def test_resume_checks_the_vocabulary_and_multi_label_settings(tiny_clip, sample_images, tmp_path):
    out = tmp_path / "r.jsonl"
    first = classify(sample_images, "--model", tiny_clip, "--out", out, "--quiet")
    assert first.exit_code == 0, first.output
    again = classify(sample_images, "--model", tiny_clip, "--out", out, "--resume")
    assert again.exit_code == 0 and "nothing to do" in again.output
    other = classify(sample_images, "--model", tiny_clip, "--out", out, "--resume", "--multi-label")
    assert other.exit_code == 2 and "multi_label" in other.output


# -- labels longer than the text tower -----------------------------------------------------------


def test_label_longer_than_the_text_tower_is_truncated_with_one_warning(tiny_clip, sample_images, caplog):
    from wwts.core import engine

    long_label = "猫" * 600  # 600 tokens; the tiny text tower has 64 positions
    with caplog.at_level(logging.WARNING, logger="wwts"):
        run = engine.start(RunConfig(task="classify", inputs=(sample_images / "astronaut.jpg",),
                                     labels=(long_label, "车"), model=str(tiny_clip), device="cpu", dtype="float32"))
        records = list(run)
    warnings = [r.getMessage() for r in caplog.records if "longer than" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert "猫猫猫" in warnings[0] and long_label not in warnings[0] and "64" in warnings[0]
    assert records[0].error is None
    assert math.isclose(sum(t.score for t in records[0].top_k), 1.0, abs_tol=1e-4)


def test_long_label_through_the_cli_exits_0(tiny_clip, sample_images):
    result = classify(sample_images / "astronaut.jpg", "--labels", "猫" * 600 + ",车", "-m", tiny_clip)
    assert result.exit_code == 0, result.output
    assert "longer than" in result.stderr
