"""Experiment: cheaper ways to run the same three networks for one image (no code in core/ is changed).

Variants of the no-CAM network path (coarse-SN -> mask-CN -> enhanced-SN, batch 1, inference_mode), timed
interleaved (every iteration runs each variant once, order rotated) so machine-load drift hits all alike:

- shipped:        the Analyzer's modules as loaded (channels_last)
- nchw:           the same modules in the default contiguous memory format (depthwise convs often prefer it on CPU)
- folded:         Conv+BatchNorm folded into the conv weights (timm BatchNormAct2d -> its activation only,
                  smp Conv2dReLU / E-layer Sequential BN -> identity), channels_last
- folded_nchw:    both
- threads1:       shipped, torch.set_num_threads(1) for the call
- bf16:           shipped under torch.autocast("cpu", bfloat16)
- jit_frozen:     torch.jit.trace + torch.jit.optimize_for_inference (oneDNN fusion), if it traces
- compiled:       torch.compile (inductor), only with --compile (slow to compile on 2 cores)
- onnxruntime:    each network exported with torch.onnx.export and run by ONNX Runtime (CPU provider, all graph
                  optimisations, 2 intra-op threads), only with --onnx and where `onnxruntime` is importable (it is
                  not a project dependency: e.g. `pip install --target /tmp/ortlib onnxruntime onnx onnxscript` and
                  PYTHONPATH=/tmp/ortlib); the glue between the networks stays in torch

Reports p50 per variant, the ratio to shipped, and the largest output deviation from shipped (logits and
mask probabilities), so a variant that changes results is visible.

    nice -n 19 .venv/bin/python -m bench.experiments.inference_variants [--iters 20] [--compile]
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.common import REPO, data_dir, fullres_images, load_analyzer
from core.intake import load_image
from core.pipeline import localisation_map, mask_cn_input
from core.tensors import CLASSIFIER_SIZE, SEGMENTER_SIZE, image_to_batch


# ---------------------------------------------------------------- BN folding
def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    conv.weight.data = conv.weight.data * scale.view(-1, 1, 1, 1)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias.detach())


def _bn_replacement(bn: nn.Module) -> nn.Module:
    act = getattr(bn, "act", None)
    drop = getattr(bn, "drop", None)
    parts = [m for m in (drop, act) if m is not None and not isinstance(m, nn.Identity)]
    return nn.Sequential(*parts) if parts else nn.Identity()


PAIRS = (("conv_stem", "bn1"), ("conv_head", "bn2"), ("conv_dw", "bn1"), ("conv_pw", "bn2"), ("conv_pwl", "bn3"),
         ("conv", "bn"))


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every eval-mode BN that directly follows a conv (timm EfficientNet blocks, smp Sequentials)."""
    folded = 0
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (_, a), (name_b, b) in zip(children, children[1:]):
                if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                    _fold(a, b)
                    setattr(module, name_b, _bn_replacement(b))
                    folded += 1
            continue
        names = dict(module.named_children())
        # InvertedResidual: conv_pw/bn1, conv_dw/bn2, conv_pwl/bn3 ; DepthwiseSeparable: conv_dw/bn1, conv_pw/bn2
        if "conv_pwl" in names:
            pairs = (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3"))
        elif "conv_dw" in names and "conv_pw" in names:
            pairs = (("conv_dw", "bn1"), ("conv_pw", "bn2"))
        else:
            pairs = (("conv_stem", "bn1"), ("conv_head", "bn2"), ("conv", "bn"))
        for conv_name, bn_name in pairs:
            conv, bn = names.get(conv_name), names.get(bn_name)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                _fold(conv, bn)
                setattr(module, bn_name, _bn_replacement(bn))
                folded += 1
    return folded


# ---------------------------------------------------------------- ONNX Runtime
def onnx_variant(nets, sample):
    import tempfile

    import onnxruntime as ort

    coarse_sn, mask_cn, enhanced_sn = nets
    seg_x, cls_x = sample[0].contiguous(), sample[1].contiguous()

    class MaskCN(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m.forward_with_features(x)

    with torch.no_grad():
        coarse = torch.sigmoid(coarse_sn(seg_x))
        x4 = mask_cn_input(cls_x, coarse).contiguous()
        logits, features = mask_cn.forward_with_features(x4)
        loc = localisation_map(mask_cn.class_activation_maps(features), logits.argmax(1)).contiguous()
    folder = Path(tempfile.mkdtemp(prefix="onnx-"))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    sessions = {}
    for name, module, args in (("coarse", coarse_sn, (seg_x,)), ("mask_cn", MaskCN(mask_cn), (x4,)),
                               ("enhanced", enhanced_sn, (seg_x, loc))):
        path = folder / f"{name}.onnx"
        with torch.no_grad():
            try:
                torch.onnx.export(module.eval(), args, str(path), dynamo=False, opset_version=17)
            except Exception:  # noqa: BLE001 - the TorchScript exporter may be gone: use the dynamo one
                torch.onnx.export(module.eval(), args, str(path), dynamo=True)
        sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def feed(session, *arrays):
        return dict(zip([i.name for i in session.get_inputs()], (a.contiguous().numpy() for a in arrays)))

    weight = mask_cn.net.get_classifier().weight

    def run(seg_x, cls_x):
        seg_x = seg_x.contiguous()
        coarse = torch.sigmoid(torch.from_numpy(sessions["coarse"].run(None, feed(sessions["coarse"], seg_x))[0]))
        x4 = mask_cn_input(cls_x, coarse)
        logits, features = (torch.from_numpy(a) for a in sessions["mask_cn"].run(None, feed(sessions["mask_cn"], x4)))
        loc = localisation_map(torch.einsum("ck,bkhw->bchw", weight, features), logits.argmax(1))
        out = sessions["enhanced"].run(None, feed(sessions["enhanced"], seg_x, loc))[0]
        return logits, torch.sigmoid(torch.from_numpy(out))

    return run


# ---------------------------------------------------------------- the network path
def networks_path(coarse_sn, mask_cn, enhanced_sn, seg_x, cls_x):
    coarse = torch.sigmoid(coarse_sn(seg_x))
    x4 = mask_cn_input(cls_x, coarse)
    logits, features = mask_cn.forward_with_features(x4)
    loc = localisation_map(mask_cn.class_activation_maps(features), logits.argmax(1))
    return logits, torch.sigmoid(enhanced_sn(seg_x, loc))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--onnx", action="store_true")
    parser.add_argument("--only", default="", help="comma-separated variant names to time (shipped always)")
    args = parser.parse_args(argv)
    analyzer, note = load_analyzer(REPO / "weights")
    nets = (analyzer.coarse_sn, analyzer.mask_cn, analyzer.enhanced_sn)
    rgbs = [load_image(d, n) for n, d in fullres_images(data_dir(), 5)]
    inputs = [(image_to_batch(r, SEGMENTER_SIZE), image_to_batch(r, CLASSIFIER_SIZE)) for r in rgbs]

    def variant(nets_, fmt=torch.channels_last):
        def run(seg_x, cls_x):
            return networks_path(*nets_, seg_x.contiguous(memory_format=fmt), cls_x.contiguous(memory_format=fmt))
        return run

    nchw = tuple(copy.deepcopy(n).to(memory_format=torch.contiguous_format) for n in nets)
    folded = tuple(copy.deepcopy(n) for n in nets)
    n_folded = sum(fold_batchnorm(n) for n in folded)
    folded = tuple(n.to(memory_format=torch.channels_last) for n in folded)
    folded_nchw = tuple(copy.deepcopy(n).to(memory_format=torch.contiguous_format) for n in folded)

    def threads1(seg_x, cls_x):
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return networks_path(*nets, seg_x, cls_x)
        finally:
            torch.set_num_threads(before)

    def bf16(seg_x, cls_x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, mask = networks_path(*nets, seg_x, cls_x)
        return logits.float(), mask.float()

    variants = {"shipped": variant(nets), "nchw": variant(nchw, torch.contiguous_format), "folded": variant(folded),
                "folded_nchw": variant(folded_nchw, torch.contiguous_format), "threads1": threads1, "bf16": bf16}
    notes = {"folded_bn_count": n_folded}
    try:
        class Path3(nn.Module):
            def __init__(self, a, b, c):
                super().__init__()
                self.a, self.b, self.c = a, b, c

            def forward(self, seg_x, cls_x):
                return networks_path(self.a, self.b, self.c, seg_x, cls_x)

        with torch.no_grad():
            traced = torch.jit.trace(Path3(*nchw).eval(), (inputs[0][0].contiguous(), inputs[0][1].contiguous()),
                                     check_trace=False)
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
        variants["jit_frozen"] = lambda s, c: frozen(s.contiguous(), c.contiguous())
    except Exception as exc:  # noqa: BLE001 - an experiment: report why it did not run
        notes["jit_frozen"] = f"{type(exc).__name__}: {exc}"[:300]
    if args.compile:
        try:
            compiled = tuple(torch.compile(n) for n in nets)
            start = time.perf_counter()
            with torch.inference_mode():
                variant(compiled)(*inputs[0])
            notes["compile_s"] = time.perf_counter() - start
            variants["compiled"] = variant(compiled)
        except Exception as exc:  # noqa: BLE001
            notes["compiled"] = f"{type(exc).__name__}: {exc}"[:300]

    if args.onnx:
        try:
            start = time.perf_counter()
            variants["onnxruntime"] = onnx_variant(nchw, inputs[0])
            notes["onnx_export_and_session_s"] = time.perf_counter() - start
        except Exception as exc:  # noqa: BLE001
            notes["onnxruntime"] = f"{type(exc).__name__}: {exc}"[:500]
    if args.only:
        keep = {"shipped", *args.only.split(",")}
        variants = {k: v for k, v in variants.items() if k in keep}
    names = list(variants)
    with torch.inference_mode():
        reference = [variants["shipped"](*x) for x in inputs]
        deviation = {}
        for name in names:
            outs = [variants[name](*x) for x in inputs]  # also the warm-up
            deviation[name] = {
                "logits_max_abs": max(float((o[0] - r[0]).abs().max()) for o, r in zip(outs, reference)),
                "mask_prob_max_abs": max(float((o[1] - r[1]).abs().max()) for o, r in zip(outs, reference)),
                "same_top_class": all(int(o[0].argmax()) == int(r[0].argmax()) for o, r in zip(outs, reference))}
        times = {n: [] for n in names}
        for i in range(args.iters):
            x = inputs[i % len(inputs)]
            shift = i % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                variants[name](*x)
                times[name].append(time.perf_counter() - start)
    base = float(np.median(times["shipped"]))
    out = {"weights": note, "iters": args.iters, "threads": torch.get_num_threads(), "notes": notes,
           "variants": {n: {"p50_ms": 1000 * float(np.median(t)), "ratio_to_shipped": float(np.median(t)) / base,
                            "paired_ratio_median": float(np.median(np.asarray(t) / np.asarray(times["shipped"]))),
                            **deviation[n]} for n, t in times.items()}}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
