"""The severity head: linear maps from lung-only features to the severity scales.

The lesion model beside it is a plain ``unet_mobilenetv2`` with two output channels that reads
the lungs-only view (see :mod:`covidcxr.engine.severity.lesions`). The severity head is ridge
regression (fitted with scikit-learn) stored as linear layers with the feature standardisation
built in, so it ships and loads like every other weight file.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.severity import RANGES
from .registry import register_model


@register_model(name="severity_linear", task="severity")
class SeverityHead(nn.Module):
    """Two standardised linear maps: image features -> (geographic extent, opacity); zone features -> Brixia zone score.

    Args:
        image_groups, zone_groups: the feature groups read (see :func:`covidcxr.severity.columns`).
        image_brixia: the image map also reads the predicted Brixia global score (the zone
            scores clipped to 0-3 and summed), appended as its last input: the zone map is
            fitted on more images (171 against 93), and extent and opacity score the same lungs.

    Shape:
        image_features (N, image_in) -> (N, 2); zone_features (N, 6, zone_in) -> (N, 6).
        Outputs are raw regression values; the pipeline clips them to each scale's range.
    """

    def __init__(
        self,
        in_chans: int = 1,
        num_classes: int = 3,
        pretrained: str | None = None,
        image_groups: tuple[str, ...] = ("lesions",),
        zone_groups: tuple[str, ...] = ("lesions",),
        image_in: int = 8,
        zone_in: int = 4,
        image_brixia: bool = False,
    ) -> None:
        super().__init__()
        self.image_groups, self.zone_groups = tuple(image_groups), tuple(zone_groups)  # see covidcxr.severity.columns
        self.image_in, self.image_brixia = image_in, bool(image_brixia)
        for name, n in (("image", image_in + self.image_brixia), ("zone", zone_in)):
            self.register_buffer(f"{name}_mean", torch.zeros(n))
            self.register_buffer(f"{name}_scale", torch.ones(n))
        self.image = nn.Linear(image_in + self.image_brixia, 2)
        self.zone = nn.Linear(zone_in, 1)

    def forward(self, image_features: torch.Tensor, zone_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        zones = self.zone((zone_features - self.zone_mean) / self.zone_scale)[..., 0]
        if self.image_brixia:
            image_features = torch.cat([image_features, zones.clamp(*RANGES["zone"]).sum(dim=-1, keepdim=True)], dim=-1)
        scores = self.image((image_features - self.image_mean) / self.image_scale)
        return scores, zones
