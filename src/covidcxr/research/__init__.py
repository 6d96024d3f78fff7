"""Designs a researcher may rerun but the product does not ship; no product module imports this package.

Run them with ``python -m covidcxr.research --help``:

- ``train-cnn``: the transfer-learned CNN diagnosis on lung views (ResNet, EfficientNet,
  DenseNet, MobileNetV2 by name; ``configs/diagnosis_cnn.yaml``), with cross-validation;
- ``loso-cnn``: that CNN fine-tuned within sources, one training per left-out source;
- ``study``: the backbone x input x enhancement comparison (``configs/study.yaml``);
- ``adversarial``: the lung U-Net with a PatchGAN judging (image, mask) pairs.

Each was measured and not shipped; docs/experiments/ says why and where its results are.
"""
