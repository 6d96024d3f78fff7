"""PatchGAN discriminator for adversarial (pix2pix-style) lung segmentation.

Isola et al., "Image-to-Image Translation with Conditional Adversarial Networks", CVPR 2017
(pix2pix): a fully convolutional network of 4x4 convolutions, stride 2 except the last two,
LeakyReLU 0.2 and a norm after every convolution but the first, ending in one logit per
patch. With ``n_layers=3`` it is pix2pix's C64-C128-C256-C512 "70x70 PatchGAN": each output
logit sees a 70x70 window of its input. It is conditioned on the X-ray: its input is the
image and a lung-mask probability map stacked as channels, so it judges whether a mask
fits *this* image, not whether it looks like a lung mask in general.

InstanceNorm (not pix2pix's BatchNorm) normalises each sample on its own: the training step
scores real and fake pairs in one batch, and batch statistics would let the discriminator
tell them apart by the batch rather than by the pair. It also behaves the same in train and
eval mode and at any batch size (including 1 per process under torchrun).
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.registry import register_model


class PatchDiscriminator(nn.Module):
    """Conditional PatchGAN: (image, mask probability) -> a grid of real/fake logits.

    Args:
        in_chans: input channels (image channels + mask channels; 2 for a 1-channel X-ray
            and one lung-probability map).
        base_channels: width of the first convolution (pix2pix: 64); doubled per layer up
            to 8x.
        n_layers: stride-2 convolutions (3: the 70x70 receptive field of pix2pix).
        norm: ``"instance"`` or ``"batch"``.

    Shape:
        input (N, in_chans, H, W) -> logits (N, 1, h, w), about (H / 2**n_layers - 2) per
        side; H and W of at least ``2**(n_layers + 2)``.
    """

    def __init__(self, in_chans: int = 2, base_channels: int = 32, n_layers: int = 3, norm: str = "instance") -> None:
        super().__init__()
        if norm not in ("instance", "batch"):
            raise ValueError(f"norm must be 'instance' or 'batch', got {norm!r}")
        if n_layers < 1 or base_channels < 1:
            raise ValueError(f"need n_layers >= 1 and base_channels >= 1, got {n_layers} and {base_channels}")
        self.n_layers = n_layers

        def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
            # No conv bias before a norm: the norm's own shift replaces it (a bias would be subtracted away).
            norm_layer = nn.InstanceNorm2d(cout, affine=True) if norm == "instance" else nn.BatchNorm2d(cout)
            return [
                nn.Conv2d(cin, cout, 4, stride=stride, padding=1, bias=False),
                norm_layer,
                nn.LeakyReLU(0.2, inplace=True),
            ]

        layers: list[nn.Module] = [
            nn.Conv2d(in_chans, base_channels, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        width = base_channels
        for i in range(1, n_layers):
            out = base_channels * min(2**i, 8)
            layers += block(width, out, stride=2)
            width = out
        out = base_channels * min(2**n_layers, 8)
        layers += block(width, out, stride=1)
        layers.append(nn.Conv2d(out, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def receptive_field(self) -> int:
        """Side in pixels of the input window each output logit sees (70 for ``n_layers=3``)."""
        rf = 1
        for m in reversed([m for m in self.net if isinstance(m, nn.Conv2d)]):
            rf = (rf - 1) * m.stride[0] + m.kernel_size[0]
        return rf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        min_side = 2 ** (self.n_layers + 2)
        if min(x.shape[-2:]) < min_side:
            raise ValueError(
                f"PatchGAN with n_layers={self.n_layers} needs inputs of at least {min_side}x{min_side} px, got {tuple(x.shape[-2:])}; use fewer layers"
            )
        return self.net(x)


@register_model(name="patchgan", task="discriminator")
def patchgan(
    in_chans: int = 1,
    num_classes: int = 1,
    pretrained: str | None = None,
    base_channels: int = 32,
    n_layers: int = 3,
    norm: str = "instance",
) -> nn.Module:
    """Conditional PatchGAN for a segmentation model of ``in_chans`` inputs and ``num_classes`` outputs.

    ``in_chans`` and ``num_classes`` are those of the segmentation model it judges, so
    ``create_model("patchgan", in_chans=1, num_classes=1)`` reads 2-channel (image, mask)
    pairs. Default width 32 (pix2pix: 64) keeps a step cheap on a 2-core CPU.

    Raises:
        ValueError: ``pretrained`` is set (there are no pretrained discriminators).
    """
    if pretrained is not None:
        raise ValueError(f"patchgan has no pretrained weights ({pretrained!r}); leave pretrained unset")
    return PatchDiscriminator(in_chans + num_classes, base_channels=base_channels, n_layers=n_layers, norm=norm)
