"""The paired comparison of two lung models (covidcxr evaluate segmentation --compare)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from covidcxr.cli import main as cli_main
from covidcxr.engine.lungs.evaluate import compare_segmentation
from covidcxr.models import load_weights, save_weights, shipped_spec_path

# ---------------------------------------------------------------------------
# The discriminator (the shared model tester's checks, for (image, mask) pairs)


# ---------------------------------------------------------------------------
# Paired comparison


def _perturbed_copy(directory):
    """The shipped lung model with its last layer's bias raised: more lung pixels, a different Dice."""
    model, spec = load_weights(shipped_spec_path("lungs"))
    head = model.net.segmentation_head[0]
    with torch.no_grad():
        head.bias += 2.0
    spec.name, spec.file, spec.metrics = "perturbed", "perturbed.pt", {}
    return save_weights(model, spec, directory)


@pytest.mark.integration
def test_comparison_with_itself_is_exactly_zero_and_with_a_perturbed_copy_is_not(tmp_path, data_root, capsys):
    shipped = shipped_spec_path("lungs")
    out = tmp_path / "same"
    assert (
        cli_main(
            [
                "evaluate",
                "segmentation",
                "--compare",
                str(shipped),
                str(shipped),
                "--split",
                "val",
                "--limit",
                "1",
                "--data-root",
                str(data_root),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "Dice B − A" in capsys.readouterr().out
    same = json.loads((out / "comparison.json").read_text())
    assert (out / "comparison.md").is_file() and (out / "comparison.png").is_file()
    assert {"v7labs", "kermany-v7labs", "all_manual"} <= set(same["per_source"])
    assert "lungvae" not in same["per_source"]  # model-generated masks are no ground truth
    for res in same["per_source"].values():
        for m in ("dice_diff", "hd95_diff"):
            assert (res[m]["value"], res[m]["ci_low"], res[m]["ci_high"]) == (0.0, 0.0, 0.0)
        assert res["dice_a"] == res["dice_b"] and res["n"] > 0

    perturbed = _perturbed_copy(tmp_path / "w")
    res = compare_segmentation(shipped, perturbed, data_root=data_root, split="val", out_dir=tmp_path / "diff", limit=1)
    pooled = res["per_source"]["all_manual"]
    rows = json.loads((tmp_path / "diff" / "comparison.json").read_text())["per_image"]
    assert pooled["n"] == len(rows) == same["per_source"]["all_manual"]["n"]
    assert pooled["dice_diff"]["value"] != 0
    assert pooled["dice_diff"]["value"] == pytest.approx(np.mean([r["dice_b"] - r["dice_a"] for r in rows]))
    assert pooled["dice_diff"]["value"] == pytest.approx(pooled["dice_b"]["value"] - pooled["dice_a"]["value"])
    assert pooled["dice_diff"]["ci_low"] <= pooled["dice_diff"]["value"] <= pooled["dice_diff"]["ci_high"]
    assert (
        pooled["dice_a"]["value"] == same["per_source"]["all_manual"]["dice_a"]["value"]
    )  # the same images, the same A


def test_comparison_refuses_a_spec_that_is_not_a_lung_model(tmp_path):
    with pytest.raises(ValueError, match="lung-segmentation"):
        compare_segmentation(shipped_spec_path("lesions"), shipped_spec_path("lungs"), out_dir=tmp_path)
    assert (
        cli_main(
            [
                "evaluate",
                "segmentation",
                "--compare",
                str(shipped_spec_path("lungs")),
                str(shipped_spec_path("diagnosis")),
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
