"""Lung segmentation speed on CPU: covidcxr's U-Net against torchxrayvision's PSPNet.

Issue: "latency per image at batch 1 and throughput at batch 16 on 2 cores for the
shipped model, in the same run as torchxrayvision's PSPNet lung segmentation. Goal:
>= 10x faster per image."

What is timed (all in one process, ``torch.inference_mode``, images decoded beforehand):

- ``covidcxr segment``: ``LungSegmenter.segment(images)``, i.e. the work the CLI does on
  an in-memory image: resize + normalize, model, upsample to the image's own size,
  threshold, keep-two-lungs post-processing.
- ``covidcxr model``: the U-Net alone on an already preprocessed (N, 1, *input_size) batch.
- ``PSPNet forward``: torchxrayvision's ``PSPNet.forward`` unchanged (channel repeat,
  [-1024, 1024] -> ImageNet normalization, network) on (N, 1, 512, 512) inputs prepared
  the torchxrayvision way (``xrv.utils.normalize``, ``XRayCenterCrop``, resize to 512).
- ``PSPNet model``: the inner network alone on a normalized (N, 3, 512, 512) batch.
- ``read_image``: decoding the files, reported on its own and left out of every ratio.

The headline is PSPNet forward / covidcxr segment per image. It is conservative for
covidcxr: our number includes resizing from the original size, upsampling back and
post-processing, PSPNet's does not. The model-only ratio compares the networks alone.

The PSPNet is built with random weights (``PSPNet.__init__`` downloads its weights, which
cannot be done offline); speed does not depend on the weight values.

Cases run interleaved (A B C D A B C D ...) so background load hits every case alike.

Usage:
    python benchmarks/segment.py --json segment_bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # the checkout under test

from covidcxr.data.paths import resolve_data_root  # noqa: E402
from covidcxr.infer import LungSegmenter  # noqa: E402
from covidcxr.io import is_supported_file, read_image  # noqa: E402
from covidcxr.models import eval_mode  # noqa: E402

SOURCES = ("covid-chestxray", "nih-chestxray8", "kermany-pediatric")
PSPNET_SIZE = 512  # ChestX-Det PSPNet's native resolution (xrv.utils.fix_resolution(x, 512, ...))
GOAL = 10.0


@dataclass
class Case:
    """One thing to time: ``run(rep)`` does one call on ``batch`` images."""

    name: str
    run: Callable[[int], object]
    batch: int
    in_ratio: bool = True


def build_pspnet() -> torch.nn.Module:
    """torchxrayvision's ChestX-Det PSPNet wrapper with random weights, without downloading.

    Repeats ``PSPNet.__init__`` (torchxrayvision 1.5.x) minus the download and
    ``load_state_dict``: the same ImageNet ``Normalize`` transform and the same inner
    ``pspnet(n_classes=14)`` (ResNet-101-style dilated encoder, pyramid pooling, auxiliary
    head, which its forward also computes in eval mode). The wrapper's own ``forward`` is
    used unchanged.
    """
    import torchvision
    from torchxrayvision.baseline_models.chestx_det import PSPNet
    from torchxrayvision.baseline_models.chestx_det.ptsemseg.pspnet import pspnet

    wrapper = PSPNet.__new__(PSPNet)
    torch.nn.Module.__init__(wrapper)
    wrapper.transform = torchvision.transforms.Compose(
        [torchvision.transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
    )
    wrapper.model = pspnet(len(PSPNet.targets)).eval()
    return wrapper.eval()


def pspnet_input(image: np.ndarray) -> torch.Tensor:
    """An image in [0, 1] prepared as torchxrayvision users do: (1, 512, 512) in [-1024, 1024]."""
    import torchxrayvision as xrv

    x = xrv.datasets.XRayCenterCrop()(xrv.utils.normalize(image, 1.0)[None])
    x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    # The resize xrv.utils.fix_resolution would otherwise do inside forward.
    return F.interpolate(x[None], size=(PSPNET_SIZE, PSPNET_SIZE), mode="bilinear", antialias=True)[0]


def pick_images(data_root: Path, per_source: int) -> list[Path]:
    """``per_source`` files from each source, evenly spread over its sorted file list."""
    picked = []
    for source in SOURCES:
        files = sorted(f for f in (data_root / source / "images").iterdir() if is_supported_file(f))
        if not files:
            raise FileNotFoundError(f"{data_root / source / 'images'}: no images; check --data-root")
        picked += [files[i * len(files) // per_source] for i in range(per_source)]
    return picked


def time_interleaved(cases: list[Case], n: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of every case; each repetition runs every case once, in turn."""
    times: dict[str, list[float]] = {c.name: [] for c in cases}
    for rep in range(warmup + n):
        for case in cases:
            start = time.perf_counter()
            case.run(rep)
            elapsed = time.perf_counter() - start
            if rep >= warmup:
                times[case.name].append(elapsed)
    return times


def summarize(seconds: list[float], batch: int) -> dict:
    """Per-call and per-image statistics of one case."""
    s = np.asarray(seconds)
    median = float(np.median(s))
    return {
        "batch": batch,
        "n": len(s),
        "times_s": [round(float(t), 6) for t in s],
        "median_s": median,
        "p90_s": float(np.percentile(s, 90)),
        "min_s": float(s.min()),
        "mean_s": float(s.mean()),
        "ms_per_image": 1000 * median / batch,
        "images_per_s": batch / median,
    }


def make_cases(
    segmenter: LungSegmenter, pspnet: torch.nn.Module, paths: list[Path], images: list[np.ndarray], batch: int
) -> list[Case]:
    """The cases for one batch size; call ``rep`` uses images ``rep*batch ...`` cycled.

    Model inputs for every distinct batch are prepared here, outside the timing.
    """
    k = len(images)
    starts = sorted({(rep * batch) % k for rep in range(k)})
    index = {s: [(s + j) % k for j in range(batch)] for s in starts}
    ours_in = {s: torch.from_numpy(segmenter.preprocess([images[i] for i in index[s]])) for s in starts}
    psp_in = {s: torch.stack([pspnet_input(images[i]) for i in index[s]]) for s in starts}
    with torch.inference_mode():
        psp3_in = {s: pspnet.transform((x.repeat(1, 3, 1, 1) + 1024) / 2048) for s, x in psp_in.items()}

    def pick(rep: int) -> int:
        return (rep * batch) % k

    cases = [
        Case(
            "covidcxr segment (end to end)", lambda rep: segmenter.segment([images[i] for i in index[pick(rep)]]), batch
        ),
        Case("covidcxr model only", lambda rep: segmenter.model(ours_in[pick(rep)]), batch),
        Case("PSPNet forward (xrv)", lambda rep: pspnet(psp_in[pick(rep)]), batch),
        Case("PSPNet model only", lambda rep: pspnet.model(psp3_in[pick(rep)]), batch),
    ]
    if batch == 1:
        cases.append(Case("read_image (file decode)", lambda rep: read_image(paths[pick(rep)]), 1, in_ratio=False))
    return cases


def machine_info(threads: int) -> dict:
    """What the numbers were measured on."""
    import segmentation_models_pytorch as smp
    import torchxrayvision as xrv

    cpu_model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads_requested": threads,
        "torch_num_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch": torch.__version__,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "segmentation_models_pytorch": smp.__version__,
        "torchxrayvision": xrv.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_start": list(os.getloadavg()),
    }


def ratios(results: dict[str, dict]) -> dict[str, float]:
    """PSPNet / covidcxr time per image, end to end and model only."""

    def per_image(name: str) -> float:
        return results[name]["ms_per_image"]

    return {
        "end_to_end": per_image("PSPNet forward (xrv)") / per_image("covidcxr segment (end to end)"),
        "model_only": per_image("PSPNet model only") / per_image("covidcxr model only"),
    }


def print_report(report: dict) -> None:
    """The readable table."""
    m, cfg = report["machine"], report["config"]
    print(f"\nLung segmentation on CPU: covidcxr vs torchxrayvision PSPNet ({m['cpu_model']})")
    print(
        f"torch {m['torch']}, torch.get_num_threads()={m['torch_num_threads']}, cpu_count={m['cpu_count']}, "
        f"load average {m['loadavg_start'][0]:.2f} at start, {m['loadavg_end'][0]:.2f} at end"
    )
    print(f"covidcxr: {cfg['weights']} ({cfg['ours_params_m']:.2f} M params, input {cfg['ours_input_size']})")
    print(
        f"PSPNet:   ChestX-Det, random weights ({cfg['pspnet_params_m']:.2f} M params, input {PSPNET_SIZE}x{PSPNET_SIZE}x3)"
    )
    print(f"images:   {len(cfg['images'])} real images cycled, sizes {', '.join(cfg['image_sizes'])}")
    for res in report["results"].values():
        batch = next(iter(res.values()))["batch"]
        print(f"\n  {'batch ' + str(batch):30} {'ms/image':>12} {'p90':>8} {'images/s':>10} {'n':>4}")
        for name, r in res.items():
            p90 = 1000 * r["p90_s"] / batch
            print(f"  {name:30} {r['ms_per_image']:12.1f} {p90:8.1f} {r['images_per_s']:10.2f} {r['n']:4d}")
    print("\nPSPNet / covidcxr, time per image (median)")
    for key, rat in report["ratios"].items():
        print(
            f"  {key.replace('_', ' '):10} end to end {rat['end_to_end']:7.1f}x    model only {rat['model_only']:7.1f}x"
        )
    goal = report["goal"]
    verdict = "MET" if goal["met"] else "NOT MET"
    print(
        f"\ngoal >= {GOAL:g}x faster per image (end to end, every batch size): {verdict} "
        f"(worst {goal['worst_end_to_end']:.1f}x)"
    )
    if m["loadavg_start"][0] > 0.5 * (m["cpus_usable"] or 1):
        print("note: the machine was busy at the start; absolute times are inflated, ratios less so")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", help="weights spec JSON (default: the shipped lung model)")
    p.add_argument("--data-root", help="folder holding covid-chestxray/, nih-chestxray8/, kermany-pediatric/")
    p.add_argument("--n", type=int, default=20, help="timed repetitions at batch 1 (default 20)")
    p.add_argument(
        "--n-batch",
        type=int,
        default=3,
        help="timed repetitions at --batch-size (default 3; PSPNet takes about a minute per batch of 16 on 2 cores)",
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed repetitions before each block (default 1)")
    p.add_argument("--batch-size", type=int, default=16, help="batch size for the throughput block (default 16)")
    p.add_argument("--per-source", type=int, default=2, help="real images from each of the three sources (default 2)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--json", help="also write every number and the machine info to this JSON file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    # ptsemseg calls the deprecated F.upsample on every forward; one warning per call would flood the table.
    warnings.filterwarnings("ignore", message=r".*nn\.functional\.upsample is deprecated.*")

    machine = machine_info(args.threads)
    segmenter = LungSegmenter.from_spec(args.weights)
    pspnet = build_pspnet()
    paths = pick_images(resolve_data_root(args.data_root), args.per_source)
    images = [read_image(p) for p in paths]

    results = {}
    with torch.inference_mode(), eval_mode(segmenter.model, pspnet):
        for batch, n in ((1, args.n), (args.batch_size, args.n_batch)):
            print(f"timing batch {batch}: {args.warmup} warm-up + {n} repetitions ...", file=sys.stderr, flush=True)
            cases = make_cases(segmenter, pspnet, paths, images, batch)
            times = time_interleaved(cases, n, args.warmup)
            results[f"batch_{batch}"] = {c.name: summarize(times[c.name], c.batch) for c in cases}
    machine["loadavg_end"] = list(os.getloadavg())

    all_ratios = {key: ratios(res) for key, res in results.items()}
    worst = min(r["end_to_end"] for r in all_ratios.values())
    report = {
        "machine": machine,
        "config": {
            **{k: v for k, v in vars(args).items() if k != "json"},
            "weights": args.weights or "shipped (src/covidcxr/weights)",
            "ours_name": segmenter.spec.name,
            "ours_sha256": segmenter.spec.sha256,
            "ours_input_size": "x".join(map(str, segmenter.spec.input_size)),
            "ours_params_m": sum(p.numel() for p in segmenter.model.parameters()) / 1e6,
            "pspnet_params_m": sum(p.numel() for p in pspnet.model.parameters()) / 1e6,
            "images": [str(p) for p in paths],
            "image_sizes": [f"{im.shape[1]}x{im.shape[0]}" for im in images],
        },
        "results": results,
        "ratios": all_ratios,
        "goal": {"target": GOAL, "worst_end_to_end": worst, "met": worst >= GOAL},
    }
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0 if report["goal"]["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
