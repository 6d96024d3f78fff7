"""Stage 2, source-blind: linear heads on lung-pooled image features and finding facts.

The image part is an ImageNet MobileNetV2 (timm ``mobilenetv2_100``, one input channel),
frozen: it never saw a diagnosis label, so it has learned no source-to-class shortcut of
ours. Its last feature map is averaged inside the lungs with weights the caller computes
(the lung mask resized to the map's grid), so only positions over the lungs count. The
heads (fitted with scikit-learn, see :mod:`covidcxr.engine.diagnosis.heads`) are stored as linear
layers with the standardisation and the Platt scaling folded in.

``factorised`` heads give P(abnormal) and P(COVID-19 | abnormal); the logits returned are
the log-probabilities of (COVID-19, Other pneumonia, No finding), so a softmax gives them
back. ``factorised_prior`` learns P(abnormal) alone and takes P(COVID-19 | abnormal) from the
radiological pattern of the finding facts, not learned: q = (peripheral + lower zone +
min(1, 10 x bilateral)) / 3 (``prior_columns`` name the three facts). ``multinomial`` is one
linear layer to the three logits.

The class-activation map is exact for this model: a position's share of the pooled feature
is its lung weight over the total, so each class logit is the sum over positions of
``weight * (W_c . A)`` plus the finding facts' and the bias's part. The map returned is that
per-position sum, ReLU'd, for each class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model

IMAGE_DIM = 1280
HEADS = ("factorised", "factorised_prior", "multinomial")


@register_model(name="source_blind_heads", task="diagnosis_heads")
class SourceBlindHeads(nn.Module):
    """Frozen MobileNetV2 features pooled inside the lungs + finding facts -> three class logits.

    Args:
        in_chans: input channels of the lung view (1).
        num_classes: 3 (COVID-19, Other pneumonia, No finding).
        n_facts: length of the finding-facts vector (0: none).
        image: read the lung view through the backbone (False: facts only).
        head: ``factorised``, ``factorised_prior`` or ``multinomial``.
        prior_columns: with ``factorised_prior``, the indices of the peripheral, lower-zone and
            bilateral facts in ``facts``.

    Shape:
        x: (N, 1, S, S) normalised masked lung view; weights: (N, 1, h, w) lung weights on the
        backbone's last grid (h = S/32); facts: (N, n_facts) -> logits (N, 3), cam (N, 3, h, w).
    """

    def __init__(
        self,
        in_chans: int = 1,
        num_classes: int = 3,
        pretrained: str | None = None,
        n_facts: int = 16,
        image: bool = True,
        head: str = "factorised",
        prior_columns: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if num_classes != 3:
            raise ValueError(f"the source-blind heads give the three classes; got num_classes={num_classes}")
        if head == "factorised_prior" and len(prior_columns) != 3:
            raise ValueError("factorised_prior needs prior_columns: the peripheral, lower-zone and bilateral facts")
        self.head_kind, self.n_facts, self.prior_columns = head, n_facts, tuple(int(c) for c in prior_columns)
        self.backbone = None  # findings only: no image model, and no timm import (a faster start)
        if image:
            import timm

            self.backbone = timm.create_model(
                "mobilenetv2_100", pretrained=pretrained == "imagenet", in_chans=in_chans, num_classes=0
            )
        dim = (IMAGE_DIM if image else 0) + n_facts
        self.linear = nn.Linear(dim, {"factorised": 2, "factorised_prior": 1, "multinomial": 3}[head])

    @property
    def image_dim(self) -> int:
        return IMAGE_DIM if self.backbone is not None else 0

    def pooled(self, x: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(lung-pooled features (N, 1280), the weighted feature map or None without a backbone)."""
        if self.backbone is None:
            return x.new_zeros((len(x), 0)), None
        fmap = self.backbone.forward_features(x).float()
        w = weights.float()
        total = w.sum(dim=(2, 3))
        share = torch.where(
            total[..., None, None] > 1e-3,
            w / total.clamp_min(1e-3)[..., None, None],
            torch.full_like(w, 1.0 / (w.shape[-2] * w.shape[-1])),
        )
        return (fmap * share).sum(dim=(2, 3)), fmap * share

    def _pattern_logit(self, facts: torch.Tensor) -> torch.Tensor:
        """logit of the pattern prior q (clipped to [1e-6, 1 - 1e-6]: no lesion gives P(COVID-19) ~ 0)."""
        f = facts.float()
        peripheral, lower, bilateral = (f[:, c] for c in self.prior_columns)
        q = ((peripheral + lower + torch.clamp(10 * bilateral, max=1.0)) / 3).clamp(1e-6, 1 - 1e-6)
        return torch.log(q) - torch.log1p(-q)

    def _logits(self, z: torch.Tensor, facts: torch.Tensor) -> torch.Tensor:
        if self.head_kind == "multinomial":
            return z
        abnormal = z[:, 0]
        covid = self._pattern_logit(facts) if self.head_kind == "factorised_prior" else z[:, 1]
        log_abn, log_normal = F.logsigmoid(abnormal), F.logsigmoid(-abnormal)
        return torch.stack([log_abn + F.logsigmoid(covid), log_abn + F.logsigmoid(-covid), log_normal], dim=1)

    def from_features(self, pooled: torch.Tensor, facts: torch.Tensor) -> torch.Tensor:
        """Logits (N, 3) from lung-pooled features and facts already computed (audits, checks)."""
        return self._logits(self.linear(torch.cat([pooled.float()[:, : self.image_dim], facts.float()], dim=1)), facts)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, facts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.backbone is None:  # facts only; shapes from tensors, so an ONNX graph keeps a dynamic batch
            logits = self._logits(self.linear(facts.float()), facts)
            return logits, torch.zeros_like(x[:, :1, :1, :1]).repeat(1, 3, 1, 1)
        pooled, shared = self.pooled(x, weights)
        logits = self._logits(self.linear(torch.cat([pooled, facts.float()], dim=1)), facts)
        w_img = self.linear.weight[:, : self.image_dim]  # (1, 2 or 3, 1280)
        per_pos = torch.einsum("kc,nchw->nkhw", w_img, shared)  # each head's image evidence per position
        if self.head_kind != "multinomial":
            a = per_pos[:, 0]
            c = per_pos[:, 1] if self.head_kind == "factorised" else torch.zeros_like(a)  # the prior reads no pixel
            per_pos = torch.stack([a + c, a - c, -a], dim=1)
        return logits, torch.relu(per_pos)


def fold_head(
    coef: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor, a: float = 1.0, b: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``a * (coef . (x - mean) / scale) + b`` as one linear layer on raw x."""
    w = a * coef / scale
    return w, torch.as_tensor(b - float((w * mean).sum()), dtype=w.dtype)
