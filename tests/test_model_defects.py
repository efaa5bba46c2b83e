"""Issue 10, models and tasks: wrong architectures, non-finite scores, prompt templates, long labels,
the --labels message, GBK label files, pickle weights, hub messages and --lang zh (offline, tiny models)."""

from __future__ import annotations

import logging
import math


from tests.helpers import classify
from wwts.core.config import RunConfig

LABELS = "人,车,动物"


# -- 3. labels longer than the text tower -----------------------------------------------------------


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
