"""bf16 inference and training defaults (core.models.precision): `auto` picks bf16 only on a CPU with bf16 hardware (AMX or AVX512-BF16), and a bf16 Analyzer
agrees with the fp32 one on real validation images within bench.precision.TOLERANCE (probabilities, top class,
referral, masks), CAM methods included."""
import numpy as np
import pytest
import torch

from bench.precision import TOLERANCE, compare, validation_rows, violations
from core.models import precision
from core.analysis.inference import Analyzer
from train.stages import STAGES
from train.train import CONFIG, resolve_amp


def test_auto_is_bf16_only_on_a_cpu_with_bf16_hardware(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert precision.resolve("auto") == torch.bfloat16 and precision.resolve("auto", "cuda") == torch.float32
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert precision.resolve("auto") == torch.float32
    assert precision.resolve("bf16") == torch.bfloat16 and precision.resolve("fp32") == torch.float32
    with pytest.raises(ValueError, match="auto, fp32, bf16"):
        precision.resolve("fp16")


@pytest.mark.parametrize("flags, expected", [({"avx2", "avx512f"}, False), ({"avx512f", "avx512_bf16"}, True),
                                             ({"amx_tile", "amx_bf16"}, True)])
def test_bf16_hardware_is_read_from_the_cpu_flags(monkeypatch, flags, expected):
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert precision.cpu_has_bf16.__wrapped__() is expected


def test_training_autocast_default_is_bf16_for_the_segmenters_on_bf16_hardware(monkeypatch):
    import train.train as train_module

    cpu = torch.device("cpu")
    cfg = dict(CONFIG)
    monkeypatch.setattr(train_module, "cpu_has_bf16", lambda: True)
    assert {name: resolve_amp(cfg, cpu, cls) for name, cls in STAGES.items()} == {
        "coarse_sn": "bf16", "enhanced_sn": "bf16", "mask_cn": "none", "classifier": "none"}
    assert resolve_amp(dict(cfg, amp="none"), cpu, STAGES["coarse_sn"]) == "none"
    assert resolve_amp(cfg, torch.device("cuda"), STAGES["mask_cn"]) == "bf16"
    monkeypatch.setattr(train_module, "cpu_has_bf16", lambda: False)
    assert resolve_amp(cfg, cpu, STAGES["coarse_sn"]) == "none"


def test_bf16_training_keeps_the_depthwise_convolutions_in_fp32(monkeypatch, data_dir):
    """Under the default CPU bf16 autocast the depthwise convolutions compute in float32 (faster there:
    train.autocast_policy), every other convolution in bf16; the parameters and state_dict keys do not change."""
    import train.train as train_module
    from train.autocast_policy import is_depthwise
    from train.train import autocast_for, build_model

    monkeypatch.setattr(train_module, "cpu_has_bf16", lambda: True)
    cfg = dict(CONFIG, stage="coarse_sn", data_dir=str(data_dir), pretrained=None)
    stage = STAGES["coarse_sn"](cfg)
    model = build_model(cfg, stage)
    keys = list(model.state_dict())
    autocast, _ = autocast_for(cfg, torch.device("cpu"), stage, model)
    out_dtypes = {}

    def record(conv, args, out) -> None:
        out_dtypes[conv] = out.dtype

    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(record)
    with autocast:
        model(torch.randn(2, 3, 64, 96).contiguous(memory_format=torch.channels_last))
    depthwise = {m: d for m, d in out_dtypes.items() if m.groups > 1 and m.groups == m.in_channels}
    others = {m: d for m, d in out_dtypes.items() if m not in depthwise}
    assert len(depthwise) >= 10 and set(depthwise.values()) == {torch.float32}
    assert others and set(others.values()) == {torch.bfloat16}
    assert not any(is_depthwise(m) for m in model.modules())  # all converted, and only those
    assert list(model.state_dict()) == keys
    # a CPU run without autocast leaves the model as it is
    plain = build_model(cfg, stage)
    autocast_for(dict(cfg, amp="none"), torch.device("cpu"), stage, plain)
    assert sum(is_depthwise(m) for m in plain.modules()) == len(depthwise)


@pytest.fixture(scope="module")
def analyzers(repo_root):
    return {p: Analyzer.load(repo_root / "weights", device="cpu", precision=p) for p in ("fp32", "bf16")}


def test_bf16_agrees_with_fp32_on_validation_images(analyzers, data_dir):
    assert analyzers["bf16"].precision == "bf16" and analyzers["fp32"].precision == "fp32"
    assert analyzers["bf16"].mask_cn.net.conv_stem.weight.dtype == torch.bfloat16
    assert analyzers["bf16"].coarse_sn.unet.encoder.model.conv_stem.weight.dtype == torch.bfloat16
    agreement = compare(analyzers, validation_rows(16))
    assert violations(agreement) == [], (violations(agreement), agreement, TOLERANCE)
    assert agreement["max_probability_difference"]["max"] > 0  # really two precisions


def test_every_cam_method_runs_on_a_bf16_analyzer(analyzers, data_dir):
    from core.analysis.cam import distinct_class_cams
    from core.io.intake import load_image_file

    rgb = load_image_file(validation_rows(1)["image_path"].iloc[0])
    for method in distinct_class_cams(linear_head=True):
        if method == "Score-CAM":
            continue  # one forward per channel (1,280): minutes on 2 cores; same code path as Grad-CAM++ here
        maps = {p: a.cam_for(rgb, "mel", method) for p, a in analyzers.items()}
        for heat in maps.values():
            assert heat.shape == rgb.shape[:2] and heat.dtype == np.float32 and 0 <= heat.min() <= heat.max() <= 1
        assert np.corrcoef(maps["fp32"].ravel(), maps["bf16"].ravel())[0, 1] > 0.9, method
