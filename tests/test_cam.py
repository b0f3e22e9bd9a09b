"""core.analysis.cam and core.analysis.gradient_cam: every CAM method localises hand-built class evidence; overlays."""
from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from torch import nn

from core.analysis.cam import overlay_heatmap, overlay_mask
from core.analysis.gradient_cam import CAM_METHODS, compute_cam

SIZE = 64
SQUARE = 14


class EvidenceNet(nn.Module):
    """Tiny fixed-weight CNN.

    Layer 1 (1x1 conv on the RGB mean): c0 = relu(x - 0.7) "bright", c1 = relu(x - 0.3) "not dark".
    Layer 2 (3x3, target layer after ReLU): d0 = bright detector, d1 = mid-grey detector (c1 - 3 c0).
    Class 1 ("bright square") = 200 * mean(d0), class 0 ("grey blob") = 200 * mean(d1).
    The 4th input channel (the lesion mask of mask-CN) is accepted and ignored by construction.
    """

    def __init__(self, in_channels: int = 3):
        super().__init__()
        conv1 = nn.Conv2d(in_channels, 2, kernel_size=1)
        conv2 = nn.Conv2d(2, 2, kernel_size=3, padding=1)
        with torch.no_grad():
            conv1.weight.zero_()
            conv1.weight[:, :3] = 1.0 / 3.0
            conv1.bias.copy_(torch.tensor([-0.7, -0.3]))
            conv2.weight.zero_()
            conv2.bias.zero_()
            conv2.weight[0, 0, 1, 1] = 1.0
            conv2.weight[1, 1, 1, 1] = 1.0
            conv2.weight[1, 0, 1, 1] = -3.0
        self.features = nn.Sequential(conv1, nn.ReLU(), nn.MaxPool2d(2), conv2, nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(2, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[0.0, 200.0], [200.0, 0.0]]))
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(self.pool(self.features(x)).flatten(1))


def make_input(corner: str, channels: int = 3, blob: bool = False, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    img = rng.uniform(0.0, 0.2, size=(channels, SIZE, SIZE)).astype(np.float32)
    ys = slice(0, SQUARE) if corner[0] == "t" else slice(SIZE - SQUARE, SIZE)
    xs = slice(0, SQUARE) if corner[1] == "l" else slice(SIZE - SQUARE, SIZE)
    img[:3, ys, xs] = 1.0
    if blob:  # mid-grey evidence for the other class, in the opposite corner region
        oy = slice(SIZE - 24, SIZE - 4) if corner[0] == "t" else slice(4, 24)
        ox = slice(SIZE - 24, SIZE - 4) if corner[1] == "l" else slice(4, 24)
        img[:3, oy, ox] = 0.5
    if channels == 4:
        img[3] = 1.0  # a full "lesion mask" channel
    return torch.from_numpy(img)[None]


def peak_yx(cam: np.ndarray) -> tuple[int, int]:
    return tuple(int(v) for v in np.unravel_index(np.argmax(cam), cam.shape))


def in_corner(yx: tuple[int, int], corner: str, size: tuple[int, int], margin: float = 1.6) -> bool:
    h, w = size
    y, x = yx
    lim_y, lim_x = SQUARE * margin * h / SIZE, SQUARE * margin * w / SIZE
    ok_y = y < lim_y if corner[0] == "t" else y >= h - lim_y
    ok_x = x < lim_x if corner[1] == "l" else x >= w - lim_x
    return ok_y and ok_x


REQUIRED = {"Grad-CAM", "Grad-CAM++", "Score-CAM", "EigenCAM", "LayerCAM", "HiResCAM"}


def test_required_methods_present():
    assert REQUIRED <= set(CAM_METHODS)
    import pytorch_grad_cam.base_cam as base

    for cls in CAM_METHODS.values():
        assert issubclass(cls, base.BaseCAM)


@pytest.mark.parametrize("method", list(CAM_METHODS))
@pytest.mark.parametrize("corner", ["tl", "br"])
def test_peak_in_evidence_corner(method, corner):
    model = EvidenceNet()
    x = make_input(corner)
    assert model(x).argmax(1).item() == 1
    cam = compute_cam(model, x, [model.features[-1]], class_index=1, method=method)
    assert cam.shape == (SIZE, SIZE) and cam.dtype == np.float32
    assert cam.min() >= 0.0 and cam.max() <= 1.0 and cam.max() == pytest.approx(1.0)
    assert in_corner(peak_yx(cam), corner, cam.shape), (method, peak_yx(cam))
    # most of the heat is on the evidence, not spread over the image
    h = SQUARE + 4
    region = cam[:h, :h] if corner == "tl" else cam[-h:, -h:]
    assert region.sum() > 0.5 * cam.sum(), method


@pytest.mark.parametrize("method", [m for m in CAM_METHODS if m != "EigenCAM"])
def test_class_specific_methods_follow_the_requested_class(method):
    model = EvidenceNet()
    x = make_input("tl", blob=True)
    cam_square = compute_cam(model, x, [model.features[-1]], class_index=1, method=method)
    cam_blob = compute_cam(model, x, [model.features[-1]], class_index=0, method=method)
    assert in_corner(peak_yx(cam_square), "tl", cam_square.shape), method
    y, x_ = peak_yx(cam_blob)
    assert y >= SIZE - 28 and x_ >= SIZE - 28, (method, (y, x_))


@pytest.mark.parametrize("method", ["Grad-CAM", "Score-CAM", "EigenCAM"])
def test_four_channel_input_and_output_size(method):
    model = EvidenceNet(in_channels=4)
    x = make_input("br", channels=4)
    cam = compute_cam(model, x, [model.features[-1]], class_index=1, method=method, output_size=(150, 200))
    assert cam.shape == (150, 200) and cam.dtype == np.float32
    assert 0.0 <= cam.min() and cam.max() <= 1.0
    assert in_corner(peak_yx(cam), "br", cam.shape), peak_yx(cam)


def test_hooks_removed_and_grad_state_untouched():
    model = EvidenceNet()
    for p in model.parameters():
        p.requires_grad_(False)  # a frozen inference model still gets gradient CAMs
    layer = model.features[-1]
    x = make_input("tl")
    with torch.inference_mode():  # callers may be inside inference mode, with an inference-mode input
        x_inf = x * 1.0
        cam = compute_cam(model, x, [layer], class_index=1, method="Grad-CAM")
        cam_inf = compute_cam(model, x_inf, [layer], class_index=1, method="Grad-CAM++")
    assert x_inf.is_inference()
    assert in_corner(peak_yx(cam), "tl", cam.shape) and in_corner(peak_yx(cam_inf), "tl", cam_inf.shape)
    assert len(layer._forward_hooks) == 0 and len(layer._backward_hooks) == 0
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())
    assert not x.requires_grad


def test_unknown_method_and_bad_input():
    model = EvidenceNet()
    with pytest.raises(ValueError, match="Grad-CAM") as err:
        compute_cam(model, make_input("tl"), [model.features[-1]], 1, method="Magic-CAM")
    assert "Score-CAM" in str(err.value)
    with pytest.raises(ValueError):
        compute_cam(model, make_input("tl")[0], [model.features[-1]], 1)
    with pytest.raises(ValueError):
        compute_cam(model, make_input("tl"), [], 1)
    with pytest.raises(ValueError, match="class index 5"):  # the model has 2 outputs
        compute_cam(model, make_input("tl"), [model.features[-1]], 5)
    assert len(model.features[-1]._forward_hooks) == 0


def test_concurrent_calls_give_the_same_maps():
    model = EvidenceNet()
    layer = model.features[-1]
    inputs = {c: make_input(c, seed=i) for i, c in enumerate(["tl", "tr", "bl", "br"])}
    expected = {c: compute_cam(model, x, [layer], 1, "Grad-CAM") for c, x in inputs.items()}
    results: dict[str, list[np.ndarray]] = {c: [] for c in inputs}
    errors: list[BaseException] = []

    def work(corner):
        try:
            for _ in range(5):
                results[corner].append(compute_cam(model, inputs[corner], [layer], 1, "Grad-CAM"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(c,)) for c in inputs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for c, cams in results.items():
        assert len(cams) == 5
        for cam in cams:
            np.testing.assert_allclose(cam, expected[c], atol=1e-6)


def test_overlay_heatmap():
    rgb = np.full((40, 60, 3), 128, np.uint8)
    cam = np.zeros((20, 30), np.float32)
    cam[:5, :5] = 1.0  # resized to the image
    out = overlay_heatmap(rgb, cam, alpha=0.5)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    hot, cold = out[2, 2].astype(int), out[-2, -2].astype(int)
    assert hot[0] > hot[2]  # JET: hot = red
    assert cold[2] > cold[0]  # cold = blue
    assert np.array_equal(overlay_heatmap(rgb, cam, alpha=0.0), rgb)


def test_overlay_mask():
    rgb = np.zeros((50, 50, 3), np.uint8)
    mask = np.zeros((50, 50), np.uint8)
    mask[10:40, 10:40] = 255
    out = overlay_mask(rgb, mask, color=(0, 255, 255), alpha=0.3, contour=True)
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    assert tuple(out[25, 25]) == (0, 76, 76)  # translucent fill: 0.3 * 255
    assert tuple(out[10, 25]) == (0, 255, 255)  # contour line on the border ...
    assert tuple(out[11, 25]) == (0, 255, 255)  # ... 2 px wide
    assert tuple(out[2, 2]) == (0, 0, 0)  # outside untouched
    no_line = overlay_mask(rgb, mask > 0, contour=False)
    assert tuple(no_line[10, 25]) == (0, 76, 76)
    assert np.array_equal(rgb, np.zeros_like(rgb))  # input not modified


@pytest.mark.parametrize("method", ["Grad-CAM", "HiResCAM", "XGrad-CAM"])
def test_class_map_shortcut_equals_pytorch_grad_cam(method):
    """mask-CN's GAP + linear head makes these methods equal its class activation maps: the Analyzer's shortcut
    (no second forward, no backward) must give pytorch-grad-cam's map."""
    from core.analysis.cam import LINEAR_HEAD_CAMS, cam_from_class_maps
    from core.models import create_model

    assert method in LINEAR_HEAD_CAMS
    torch.manual_seed(0)
    model = create_model("mask_cn", pretrained=None).eval()
    x = torch.randn(1, 4, 150, 200)
    with torch.no_grad():
        _, features = model.forward_with_features(x)
        class_maps = model.class_activation_maps(features)
    for class_index in (0, 4):
        expected = compute_cam(model, x, [model.target_layer], class_index, method, output_size=(300, 400))
        shortcut = cam_from_class_maps(class_maps, class_index, (150, 200), (300, 400))
        assert shortcut.shape == expected.shape
        assert float(np.abs(shortcut - expected).max()) < 1e-4



def test_an_analysis_with_grad_cam_does_not_import_pytorch_grad_cam(repo_root):
    """pytorch-grad-cam (with SciPy, scikit-learn, torchvision transforms: 1.8 s) is imported only for a method that
    needs it: the Analyzer, a Grad-CAM from mask-CN's class maps and the page's overlays do without, so a cold start
    does not wait for it."""
    code = ("import sys\n"
            "import core.analysis.inference, core.analysis.cam, ui.images\n"
            "assert 'pytorch_grad_cam' not in sys.modules, 'pytorch_grad_cam imported'\n"
            "import core.analysis.gradient_cam\n"
            "assert 'pytorch_grad_cam' in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
