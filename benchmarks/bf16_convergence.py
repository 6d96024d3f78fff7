"""Does bf16 autocast (+ channels_last) train the lung U-Net as well as float32 on this CPU?

Trains the same configuration twice from the same seed on the same subset, once with
``amp=bf16`` and once with ``amp=none``, and reports validation Dice per epoch and wall
time per run (the speed ratio is measured in the same process, one run after the other).

Usage:
    python benchmarks/bf16_convergence.py --limit 240 --epochs 6 --json benchmarks/results/bf16_convergence.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # the checkout under test

from covidcxr.config import load_config  # noqa: E402
from covidcxr.engine.lungs.train import SegTrainConfig, main  # noqa: E402


def run(amp: str, args: argparse.Namespace, root: Path) -> dict:
    cfg = load_config(
        SegTrainConfig,
        Path(__file__).resolve().parents[1] / "src" / "covidcxr" / "configs" / "segmentation.yaml",
        [f"amp={amp}", f"limit={args.limit}", f"epochs={args.epochs}", f"out_dir={root / amp}"],
    )
    t0 = time.perf_counter()
    main(cfg)
    wall = time.perf_counter() - t0
    history = json.loads((root / amp / "metrics.json").read_text())["history"]
    return {
        "amp": amp,
        "wall_s": round(wall, 1),
        "val_dice": [round(h["val_dice"], 4) for h in history],
        "train_loss": [round(h["train_loss"], 4) for h in history],
    }


def cli() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=240, help="training samples (validation: a quarter)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [run(amp, args, Path(tmp)) for amp in ("bf16", "none")]
    bf16, fp32 = results
    summary = {
        "runs": results,
        "final_val_dice_diff_bf16_minus_fp32": round(bf16["val_dice"][-1] - fp32["val_dice"][-1], 4),
        "best_val_dice_diff_bf16_minus_fp32": round(max(bf16["val_dice"]) - max(fp32["val_dice"]), 4),
        "speedup_bf16": round(fp32["wall_s"] / bf16["wall_s"], 2),
    }
    for r in results:
        print(f"{r['amp']:>5}: wall {r['wall_s']:7.1f} s  val Dice per epoch {r['val_dice']}")
    print(
        f"bf16 - fp32 best val Dice: {summary['best_val_dice_diff_bf16_minus_fp32']:+.4f}; bf16 speed-up x{summary['speedup_bf16']}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
