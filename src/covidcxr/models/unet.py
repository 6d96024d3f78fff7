"""U-Net with a MobileNetV2 encoder for lung segmentation (stage 1).

Built with segmentation-models-pytorch; wrapped so that any input size works: the input is
padded to the encoder stride and the logits are cropped back to the input's size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model


class PadToStride(nn.Module):
    """Run ``net`` on an input padded (bottom/right, zeros) to a multiple of ``stride``.

    Shape:
        input (N, C, H, W) of any H, W -> output (N, K, H, W).
    """

    def __init__(self, net: nn.Module, stride: int = 32) -> None:
        super().__init__()
        self.net = net
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.stride, (-w) % self.stride
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        return self.net(x)[..., :h, :w]


@register_model
def unet_mobilenetv2(
    in_chans: int = 1,
    num_classes: int = 1,
    pretrained: str | None = None,
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16, 16),
) -> nn.Module:
    """U-Net, MobileNetV2 encoder (depth 5), slim decoder so the weights stay small.

    Args:
        pretrained: encoder weights for smp (``"imagenet"`` needs internet once), or None.
    """
    import segmentation_models_pytorch as smp

    net = smp.Unet(
        encoder_name="mobilenet_v2",
        encoder_weights=pretrained,
        in_channels=in_chans,
        classes=num_classes,
        decoder_channels=tuple(decoder_channels),
    )
    return PadToStride(net, stride=32)
