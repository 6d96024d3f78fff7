"""The ImageNet MobileNetV2 loader: every encoder tensor loaded, digests and bad files refused."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from covidcxr.models import create_model
from covidcxr.models.pretrained import IMAGENET_MOBILENET_V2_SHA256, imagenet_state, load_imagenet, parse_init


@pytest.fixture(scope="module")
def imagenet_file(data_root) -> Path:
    path = data_root.parent / "pretrained" / "mobilenet_v2_imagenet_tv.pt"
    assert path.is_file(), f"{path} missing: the shared folder holds it"
    return path


@pytest.mark.parametrize(("name", "classes"), [("mobilenet_v2", 3), ("unet_mobilenetv2", 1)])
def test_every_encoder_tensor_is_loaded(imagenet_file, name, classes):
    torch.manual_seed(0)
    model = create_model(name, in_chans=1, num_classes=classes)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_imagenet(model, imagenet_file)
    src = imagenet_state(imagenet_file)
    assert len(report["loaded"]) == len(src) == 312
    after = model.state_dict()
    for key, value in zip(report["loaded"], src.values()):
        assert torch.equal(after[key], value), key
    # Every convolution kernel and every folded bias differs from its random initialisation.
    kernels = [k for k in report["loaded"] if after[k].ndim == 4 or k.endswith(".bias")]
    assert len(kernels) == 104 and all(not torch.equal(before[k], after[k]) for k in kernels)
    assert after[report["loaded"][0]].shape[1] == 1  # first kernel summed over RGB


def test_wrong_digest_missing_and_bad_files_are_refused(imagenet_file, tmp_path):
    model = create_model("mobilenet_v2", in_chans=1, num_classes=3)
    with pytest.raises(ValueError, match="sha256"):
        load_imagenet(model, imagenet_file, sha256="0" * 64)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_imagenet(model, tmp_path / "none.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a state dict")
    with pytest.raises(ValueError, match="not a PyTorch state_dict"):
        load_imagenet(model, bad, sha256=None)
    resnet = create_model("resnet18", in_chans=1, num_classes=3)
    with pytest.raises(ValueError, match="no MobileNetV2"):
        load_imagenet(resnet, imagenet_file)


def test_parse_init():
    assert parse_init("lungs") is None
    assert parse_init("imagenet-file:/x/w.pt") == ("/x/w.pt", IMAGENET_MOBILENET_V2_SHA256)
    assert parse_init("imagenet-file:/x/w.pt@abc") == ("/x/w.pt", "abc")


def test_batchnorm_reestimation_keeps_the_imagenet_function(imagenet_file):
    """Train-mode batch norm on X-ray statistics computes what the folded network computes."""
    from covidcxr.models.pretrained import loaded_part, reestimate_batchnorm

    torch.manual_seed(0)
    model = create_model("unet_mobilenetv2", in_chans=1, num_classes=1)
    report = load_imagenet(model, imagenet_file)
    encoder = loaded_part(model, report["loaded"])
    assert all(k.startswith(next(n for n, m in model.named_modules() if m is encoder)) for k in report["loaded"])
    decoder_norm = next(m for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d) and "decoder" in n)
    decoder_before = decoder_norm.weight.clone()
    x = torch.randn(4, 1, 128, 128)
    encoder.eval()
    with torch.no_grad():
        folded = encoder(x)
        as_is = copy.deepcopy(encoder).train()
        unit_variance = as_is(x)  # train mode, folded identities: every layer rescaled
    assert not torch.allclose(unit_variance, folded, atol=1e-2)
    assert reestimate_batchnorm(model, [x], within=encoder) == sum(
        isinstance(m, torch.nn.BatchNorm2d) for m in encoder.modules()
    )
    for mode in ("eval", "train"):  # eval first: a train-mode pass moves the running statistics
        encoder.train(mode == "train")
        with torch.no_grad():
            assert (encoder(x) - folded).abs().max().item() < 1e-3, mode
    assert torch.equal(decoder_norm.weight, decoder_before)  # outside the loaded encoder: untouched
