"""ImageNet MobileNetV2 weights from a local file, into every MobileNetV2 the project trains.

The file is a state_dict in torchvision's ``mobilenet_v2`` layout (``features.N...`` and
``classifier.1.*``), float16 or float32, such as ``../shared/pretrained/mobilenet_v2_imagenet_tv.pt``
(TensorFlow-slim MobileNetV2 trained on ImageNet, Apache-2.0; batch norm folded, so every
BatchNorm2d is the identity with the folded bias). It loads into:

- segmentation_models.pytorch's ``mobilenet_v2`` encoder (the lung U-Net, the lesion
  decoder's encoder): key for key, whatever prefix the encoder sits under;
- timm's ``mobilenetv2_100`` classifier (``mobilenet_v2`` in the registry): by order, the
  312 feature tensors onto the body (``conv_stem`` ... ``bn2``), every shape checked.

One-channel models get the first convolution summed over RGB (as smp does for
``in_channels=1``); the ImageNet classifier layer is never loaded.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from ..specs import sha256_file

log = logging.getLogger(__name__)

PREFIX = "imagenet-file:"
#: The file in ../shared/pretrained (torchvision layout, float16).
IMAGENET_MOBILENET_V2_SHA256 = "f6a1e29da524eaa5ca153ce6777ec17f71ba573c694edf051a364b97f0ad067a"
_FIRST_CONV = "features.0.0.weight"


def imagenet_state(
    path: str | Path, sha256: str | None = IMAGENET_MOBILENET_V2_SHA256, in_chans: int = 1
) -> dict[str, torch.Tensor]:
    """The ``features.*`` tensors of a torchvision MobileNetV2 state_dict file, float32, for ``in_chans`` inputs.

    Args:
        path: the ``.pt`` file.
        sha256: the digest the file must have (``None``: not checked).
        in_chans: 1 sums the first kernel over RGB; 3 keeps it.

    Raises:
        FileNotFoundError, ValueError: missing file, wrong digest, or not a MobileNetV2 state_dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: ImageNet weights not found (see ../shared/pretrained/README.md, or drop init=)"
        )
    if sha256 is not None and (digest := sha256_file(path)) != sha256:
        raise ValueError(f"{path}: sha256 {digest} is not the {sha256} the config records; is it the file you meant?")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (any unpickling failure is the same user error)
        raise ValueError(f"{path}: not a PyTorch state_dict ({type(err).__name__})") from err
    features = {k: v.float() for k, v in state.items() if k.startswith("features.")}
    if _FIRST_CONV not in features or len(features) < 300:
        raise ValueError(
            f"{path}: not a torchvision mobilenet_v2 state_dict (no {_FIRST_CONV}; {len(features)} feature tensors)"
        )
    if in_chans == 1:
        features[_FIRST_CONV] = features[_FIRST_CONV].sum(dim=1, keepdim=True)
    elif in_chans != 3:
        raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
    return features


def _by_suffix(own: dict[str, torch.Tensor], src: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """smp encoders keep torchvision's names under a prefix (``net.encoder.features.0.0.weight``)."""
    prefixes = {k[: -len(_FIRST_CONV)] for k in own if k.endswith(_FIRST_CONV)}
    if len(prefixes) != 1:
        return {}
    prefix = prefixes.pop()
    return {prefix + k: v for k, v in src.items() if prefix + k in own and own[prefix + k].shape == v.shape}


def _by_order(own: dict[str, torch.Tensor], src: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm names the same layers differently: the first len(src) tensors of the model, in order."""
    keys = list(own)[: len(src)]
    if len(keys) < len(src) or any(own[k].shape != v.shape for k, v in zip(keys, src.values())):
        return {}
    return dict(zip(keys, src.values()))


def load_imagenet(
    model: nn.Module, path: str | Path, sha256: str | None = IMAGENET_MOBILENET_V2_SHA256
) -> dict[str, list[str]]:
    """Load ImageNet MobileNetV2 weights into ``model``'s MobileNetV2 part.

    Returns:
        ``{"loaded": [model keys], "skipped": [model keys left as they were]}``.

    Raises:
        ValueError: the model holds no MobileNetV2 that every feature tensor fits.
    """
    own = model.state_dict()
    in_chans = 1
    first = [k for k in own if k.endswith(_FIRST_CONV) or k.endswith("conv_stem.weight")]
    if first:
        in_chans = own[first[0]].shape[1]
    src = imagenet_state(path, sha256, in_chans=in_chans)
    mapped = _by_suffix(own, src) or _by_order(own, src)
    if len(mapped) != len(src):
        raise ValueError(
            f"{path}: {len(mapped)} of {len(src)} ImageNet tensors fit {type(model).__name__}; it holds no MobileNetV2 encoder"
        )
    model.load_state_dict(mapped, strict=False)
    skipped = [k for k in own if k not in mapped]
    log.info(
        "ImageNet weights %s: %d tensors loaded, %d left as initialised (%s)",
        Path(path).name,
        len(mapped),
        len(skipped),
        ", ".join(skipped[:4]),
    )
    return {"loaded": list(mapped), "skipped": skipped}


def loaded_part(model: nn.Module, loaded: list[str]) -> nn.Module:
    """The smallest submodule of ``model`` that holds every loaded key (the MobileNetV2 encoder)."""
    common = os.path.commonprefix([k.split(".")[:-1] for k in loaded])  # element-wise on lists
    return model.get_submodule(".".join(common)) if common else model


def parse_init(init: str) -> tuple[str, str | None] | None:
    """``imagenet-file:PATH[@SHA256]`` -> (PATH, sha256 or the shipped file's); other values -> None."""
    if not init.startswith(PREFIX):
        return None
    rest = init[len(PREFIX) :]
    path, _, digest = rest.partition("@")
    return path, (digest or IMAGENET_MOBILENET_V2_SHA256)


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, batches, within: nn.Module | None = None, forward=None) -> int:
    """Give every BatchNorm2d X-ray statistics while keeping the function it computes.

    After the fold each BatchNorm2d is the identity plus the folded bias. In training mode it
    normalises by batch statistics instead, which rescales every layer to unit variance and so
    is no longer the ImageNet network. Here, layer by layer on ``batches`` (a few training
    X-rays), each BatchNorm2d gets the mean ``m`` and variance ``v`` of its input as running
    statistics, weight ``sqrt(v + eps)`` and bias ``bias + m``: in training mode on such a batch
    it then returns what the folded identity returned, and in eval mode exactly that.

    Args:
        model: any module; only its BatchNorm2d layers change.
        batches: iterable of input tensors (or of whatever ``forward`` takes).
        within: only the BatchNorm2d layers inside this part of ``model`` (the loaded encoder);
            default all of them.
        forward: ``forward(model, batch)``; default ``model(batch)``.

    Returns:
        The number of BatchNorm2d layers re-estimated.
    """
    norms = [m for m in (within or model).modules() if isinstance(m, nn.BatchNorm2d)]
    sums = {id(m): [0.0, 0.0, 0] for m in norms}

    def record(module, inputs, _output):
        x = inputs[0].detach().float()
        acc = sums[id(module)]
        acc[0] = acc[0] + x.sum(dim=(0, 2, 3))
        acc[1] = acc[1] + (x * x).sum(dim=(0, 2, 3))
        acc[2] += x.numel() // x.shape[1]

    was_training = model.training
    model.eval()  # the folded identity: every layer sees what the ImageNet network computes
    hooks = [m.register_forward_hook(record) for m in norms]
    try:
        for batch in batches:
            model(batch) if forward is None else forward(model, batch)
    finally:
        for hook in hooks:
            hook.remove()
    done = 0
    for m in norms:
        total, squares, n = sums[id(m)]
        if not n:
            continue
        mean = total / n
        var = (squares / n - mean * mean).clamp_min(0.0)
        eval_out_bias = m.bias - m.running_mean * m.weight / torch.sqrt(m.running_var + m.eps)
        eval_scale = m.weight / torch.sqrt(m.running_var + m.eps)
        # New BN in eval/train mode on these statistics: (x - mean) / sqrt(var + eps) * w + b
        # must equal eval_scale * x + eval_out_bias.
        std = torch.sqrt(var + m.eps)
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)
        m.weight.copy_(eval_scale * std)
        m.bias.copy_(eval_out_bias + eval_scale * mean)
        done += 1
    model.train(was_training)
    log.info("batch norm re-estimated on X-rays: %d layers", done)
    return done
