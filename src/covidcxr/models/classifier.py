"""Diagnosis backbones (stage 2), built with timm, one input channel, by name.

The names are the references the project was conceived with; each maps to timm's
architecture. ``pretrained="imagenet"`` loads timm's ImageNet weights (downloaded once,
needs internet; the first convolution is summed over RGB for one channel).
"""

from __future__ import annotations

from torch import nn

from .registry import register_model

BACKBONES = {
    "resnet18": "resnet18",
    "resnet50": "resnet50",
    "densenet121": "densenet121",
    "efficientnet_b0": "efficientnet_b0",
    "mobilenet_v2": "mobilenetv2_100",
}

#: The last feature map of each backbone (module name): Grad-CAM's layer.
CAM_LAYERS = {
    "resnet18": "layer4",
    "resnet50": "layer4",
    "densenet121": "features",
    "efficientnet_b0": "bn2",
    "mobilenet_v2": "bn2",
}


def _factory(name: str, timm_name: str):
    def build(
        in_chans: int = 1, num_classes: int = 3, pretrained: str | None = None, drop_rate: float = 0.2
    ) -> nn.Module:
        import timm

        if pretrained not in (None, "imagenet"):
            raise ValueError(
                f"{name}: pretrained must be None or 'imagenet' (or load a state_dict yourself); got {pretrained!r}"
            )
        return timm.create_model(
            timm_name,
            pretrained=pretrained == "imagenet",
            in_chans=in_chans,
            num_classes=num_classes,
            drop_rate=drop_rate,
        )

    build.__name__ = name
    build.__doc__ = f"timm ``{timm_name}`` classifier, logits (N, num_classes)."
    return build


for _name, _timm_name in BACKBONES.items():
    register_model(_factory(_name, _timm_name), name=_name, task="classification")
