"""bf16 inference and training defaults (core.models.precision, core.models.cpu_support): `auto` picks bf16 only on a
CPU with bf16 hardware (AMX or AVX512-BF16), an explicit bf16 request on a CPU without AVX-512 falls back to fp32 with
a logged sentence, and a bf16 Analyzer agrees with the fp32 one on real validation images within
bench.precision.TOLERANCE (probabilities, top class, referral, masks), CAM methods included.

Each test runs what this CPU supports (the report header names it: tests/conftest.py); `.ci/run` runs this file a
second time as an AVX2-only CPU (LESIONLENS_CPU_ISA=avx2 ONEDNN_MAX_CPU_ISA=AVX2)."""
import logging

import numpy as np
import pytest
import torch

from bench.precision import TOLERANCE, compare, validation_rows, violations
from core.models import cpu_support, precision
from core.analysis.inference import Analyzer
from train.stages import STAGES
from train.train import CONFIG, resolve_amp

FALLBACK_SENTENCE = "the networks compute in fp32 instead"


def test_auto_is_bf16_only_on_a_cpu_with_bf16_hardware(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(precision, "cpu_runs_bf16", lambda: True)
    assert precision.resolve("auto") == torch.bfloat16 and precision.resolve("auto", "cuda") == torch.float32
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert precision.resolve("auto") == torch.float32
    assert precision.resolve("bf16") == torch.bfloat16 and precision.resolve("fp32") == torch.float32
    with pytest.raises(ValueError, match="auto, fp32, bf16"):
        precision.resolve("fp16")


@pytest.mark.parametrize("flags, capability, onednn_bf16, expected", [
    ({"avx2", "fma"}, "AVX2", False, "avx2"),
    ({"avx2", "avx512f"}, "AVX512", True, "avx2"),  # AVX-512 without BW/VL/DQ: no oneDNN bf16
    ({"avx512f", "avx512bw", "avx512vl", "avx512dq"}, "AVX512", True, "avx512"),
    ({"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16"}, "AVX512", True, "avx512_bf16"),
    ({"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "amx_tile", "amx_bf16"}, "AVX512", True, "amx"),
    ({"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16"}, "AVX2", True, "avx2"),  # ATEN_CPU_CAPABILITY
    ({"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16"}, "AVX512", False, "avx2"),  # ONEDNN_MAX_CPU_ISA
    (set(), "AMX", True, "amx"),  # no /proc/cpuinfo: torch's capability string
])
def test_the_cpu_level_is_the_lowest_of_cpuinfo_torch_and_onednn(monkeypatch, flags, capability, onednn_bf16, expected):
    monkeypatch.setattr(cpu_support, "cpu_flags", lambda: flags)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn_bf16)
    assert cpu_support.detected_isa.__wrapped__() == expected


def test_lesionlens_cpu_isa_caps_what_the_cpu_reports(monkeypatch):
    detected = cpu_support.detected_isa()
    for cap in cpu_support.ISA_LEVELS:
        monkeypatch.setenv(cpu_support.CAP_ENV, cap)
        assert cpu_support.cpu_isa() == min(detected, cap, key=cpu_support.ISA_LEVELS.index)
    monkeypatch.setenv(cpu_support.CAP_ENV, "avx2")
    assert not cpu_support.cpu_has_bf16() and not cpu_support.cpu_runs_bf16()
    assert "CPU ISA avx2" in cpu_support.describe() and "LESIONLENS_CPU_ISA=avx2" in cpu_support.describe()
    monkeypatch.setenv(cpu_support.CAP_ENV, "sse2")
    with pytest.raises(ValueError, match="avx2, avx512, avx512_bf16, amx"):
        cpu_support.cpu_isa()


def test_bf16_on_a_cpu_without_avx512_falls_back_to_fp32_with_a_sentence(monkeypatch, caplog):
    monkeypatch.setenv(cpu_support.CAP_ENV, "avx2")
    with caplog.at_level(logging.WARNING, logger=precision.__name__):
        assert precision.resolve("auto") == torch.float32
        assert caplog.messages == []  # auto on such a CPU is fp32 by design: nothing to say
        assert precision.resolve("bf16") == torch.float32
        assert precision.resolve("bf16", "cuda") == torch.bfloat16  # the CPU's limits are not a GPU's
    assert len(caplog.messages) == 1 and FALLBACK_SENTENCE in caplog.messages[0] and "avx2" in caplog.messages[0]


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
    monkeypatch.undo()
    monkeypatch.setenv(cpu_support.CAP_ENV, "avx512")  # the real check, capped below bf16 hardware
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


class _Messages(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def loaded(repo_root):
    """Analyzers asked for fp32 and bf16, and what core.models.precision logged while they loaded."""
    handler, logger = _Messages(), logging.getLogger(precision.__name__)
    logger.addHandler(handler)
    try:
        analyzers = {p: Analyzer.load(repo_root / "weights", device="cpu", precision=p) for p in ("fp32", "bf16")}
    finally:
        logger.removeHandler(handler)
    return analyzers, handler.messages


@pytest.fixture(scope="module")
def analyzers(loaded):
    return loaded[0]


def test_bf16_agrees_with_fp32_on_validation_images(loaded, analyzers, data_dir):
    """Where oneDNN runs bf16: a bf16 Analyzer within TOLERANCE of the fp32 one. Elsewhere (an AVX2-only CPU): the
    bf16 request loads an fp32 Analyzer, says so in the log, and analyses exactly as the fp32 one."""
    messages = loaded[1]
    print(cpu_support.describe())
    assert analyzers["fp32"].precision == "fp32"
    if cpu_support.cpu_runs_bf16():
        assert analyzers["bf16"].precision == "bf16" and messages == []
        assert analyzers["bf16"].mask_cn.net.conv_stem.weight.dtype == torch.bfloat16
        assert analyzers["bf16"].coarse_sn.unet.encoder.model.conv_stem.weight.dtype == torch.bfloat16
        agreement = compare(analyzers, validation_rows(16))
        assert violations(agreement) == [], (violations(agreement), agreement, TOLERANCE)
        assert agreement["max_probability_difference"]["max"] > 0  # really two precisions
    else:
        assert analyzers["bf16"].precision == "fp32"
        assert len(messages) == 1 and FALLBACK_SENTENCE in messages[0], messages
        assert analyzers["bf16"].mask_cn.net.conv_stem.weight.dtype == torch.float32
        agreement = compare(analyzers, validation_rows(4))
        assert agreement["max_probability_difference"]["max"] < 1e-6
        assert agreement["mask_dice_between_precisions"]["min"] == 1.0


def test_every_cam_method_runs_on_a_bf16_analyzer(analyzers, data_dir):
    """Every CAM method on the Analyzer bf16 was asked for (bf16 where the CPU runs it, else its fp32 fallback)."""
    from core.analysis.cam import distinct_class_cams
    from core.io.intake import load_image_file

    expected = "bf16" if cpu_support.cpu_runs_bf16() else "fp32"
    print(cpu_support.describe(), "-> the bf16 request computes in", expected)
    assert analyzers["bf16"].precision == expected
    rgb = load_image_file(validation_rows(1)["image_path"].iloc[0])
    for method in distinct_class_cams(linear_head=True):
        if method == "Score-CAM":
            continue  # one forward per channel (1,280): minutes on 2 cores; same code path as Grad-CAM++ here
        maps = {p: a.cam_for(rgb, "mel", method) for p, a in analyzers.items()}
        for heat in maps.values():
            assert heat.shape == rgb.shape[:2] and heat.dtype == np.float32 and 0 <= heat.min() <= heat.max() <= 1
        assert np.corrcoef(maps["fp32"].ravel(), maps["bf16"].ravel())[0, 1] > 0.9, method
