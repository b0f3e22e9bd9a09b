"""core.models.cpu_inference: BatchNorm folding and oneDNN-packed convolutions with fused activations give the same
outputs as the plain networks, and an Analyzer with packed networks gives the same analyses (probabilities, masks,
CAMs of every kind) as one without."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

from bench.precision import validation_rows
from core.analysis.inference import Analyzer
from core.io.intake import load_image_file
from core.models import cpu_support
from core.models.cpu_inference import PackedConv2d, can_pack, pack_convolutions


@pytest.fixture(scope="module")
def analyzers(repo_root):
    """The shipped weights in fp32, packed and plain."""
    return {pack: Analyzer.load(repo_root / "weights", device="cpu", precision="fp32", pack=pack)
            for pack in (True, False)}


def _channels_last(*shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(0)).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("network, inputs", [
    ("coarse_sn", lambda: (_channels_last(1, 3, 192, 256),)),
    ("enhanced_sn", lambda: (_channels_last(1, 3, 192, 256), torch.rand(1, 1, 5, 7))),
    ("mask_cn", lambda: (_channels_last(4, 4, 150, 200),)),
    ("imagenet", lambda: (_channels_last(1, 3, 150, 200),)),
])
def test_packed_networks_compute_what_the_plain_ones_do(analyzers, network, inputs):
    plain = getattr(analyzers[False], network)
    packed = pack_convolutions(copy.deepcopy(plain), *inputs())
    convs = [m for m in packed.modules() if isinstance(m, PackedConv2d)]
    assert convs and not any(type(m) is nn.Conv2d for m in packed.modules())  # every convolution packed
    assert any(m.post_op == "hardtanh" for m in convs)  # EfficientNet-Lite's ReLU6 fused ...
    assert not any(isinstance(m, nn.ReLU6) for m in packed.modules())  # ... and gone as a separate pass
    with torch.inference_mode():
        for x in (inputs(), tuple(t.flip(-1) for t in inputs())):  # the example shape, then other values
            expected, got = plain(*x), packed(*x)
            assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max())), network


def test_a_packed_network_takes_other_input_shapes(analyzers):
    """mask-CN is packed for the image's shape; the transposed test-time views have another one."""
    plain = analyzers[False].mask_cn
    packed = pack_convolutions(copy.deepcopy(plain), _channels_last(4, 4, 150, 200))
    x = _channels_last(4, 4, 200, 150)
    with torch.inference_mode():
        expected = plain(x)
        assert torch.allclose(packed(x), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


@pytest.mark.filterwarnings("error:.*autograd kernel was not registered")  # a backward through a packed convolution
def test_an_analyzer_with_packed_networks_gives_the_same_analyses(analyzers):
    packed, plain = analyzers[True], analyzers[False]
    assert isinstance(packed.coarse_sn.unet.encoder.model.conv_stem, PackedConv2d)
    assert type(plain.coarse_sn.unet.encoder.model.conv_stem) is nn.Conv2d
    assert type(packed.mask_cn.net.conv_stem) is nn.Conv2d  # the gradient CAMs' copy stays plain
    for path in validation_rows(6)["image_path"]:
        rgb = load_image_file(path)
        a, b = packed.analyze(rgb, cam=True), plain.analyze(rgb, cam=True)
        assert max(abs(a.probs[c] - b.probs[c]) for c in a.probs) < 1e-4
        assert (a.mask != b.mask).mean() < 1e-3 and (a.coarse_mask != b.coarse_mask).mean() < 1e-3
        assert a.ood_level == b.ood_level and abs(a.ood_score - b.ood_score) < 1e-3 * max(1.0, abs(b.ood_score))
        assert np.abs(a.cam - b.cam).max() < 1e-3
        for method in ("Grad-CAM++", "LayerCAM"):  # backward through mask-CN: on the plain copy
            assert np.abs(packed.cam_for(rgb, a.label, method) - plain.cam_for(rgb, a.label, method)).max() < 1e-3


def test_bf16_weights_are_packed_only_where_onednn_runs_bf16(monkeypatch):
    """oneDNN's bf16 weight reorder raises on a CPU without AVX-512; fp32 packing works everywhere. On this CPU (the
    report header names its level) a bf16 packed convolution computes what the eager bf16 one does, or is refused."""
    conv = nn.Conv2d(16, 32, 3, padding=1).to(torch.bfloat16)
    x = _channels_last(1, 16, 24, 32).to(torch.bfloat16)
    assert can_pack("cpu") and not can_pack("cuda")
    print(cpu_support.describe())
    if can_pack("cpu", torch.bfloat16):
        assert cpu_support.cpu_runs_bf16()
        with torch.inference_mode():
            expected = conv(x).float()
            got = PackedConv2d(conv, tuple(x.shape))(x).float()
        assert torch.allclose(got, expected, rtol=2e-2, atol=2e-2 * float(expected.abs().max()))
    else:
        assert not cpu_support.cpu_runs_bf16()
    monkeypatch.setenv(cpu_support.CAP_ENV, "avx2")
    assert can_pack("cpu") and not can_pack("cpu", torch.bfloat16)
