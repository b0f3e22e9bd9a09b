"""Model construction, packaged ImageNet initialisation and the MB-DCNN hand-offs."""
import pytest
import torch

from core.models import create_model
from core.models.pretrained import PretrainedUnavailable, map_by_order, packaged_imagenet_tensors
from core.models.mbdcnn import localisation_map, mask_cn_input
from core.imaging.tensors import CLASSIFIER_SIZE, SEGMENTER_SIZE


@pytest.fixture(scope="module")
def imagenet():
    return packaged_imagenet_tensors("efficientnet_lite0")


def test_packaged_weights_map_onto_timm_lite0(imagenet):
    assert len(imagenet) == 296
    model = create_model("classifier")
    stem = model.net.conv_stem.weight
    assert torch.equal(stem, imagenet[0])
    # BN running statistics came along (not the 0/1 defaults of a fresh model)
    assert not torch.allclose(model.net.bn1.running_var, torch.ones_like(model.net.bn1.running_var))


def test_mask_cn_fourth_channel_starts_as_mean_of_rgb_filters(imagenet):
    model = create_model("mask_cn")
    stem = model.net.conv_stem.weight
    assert stem.shape[1] == 4
    assert torch.allclose(stem[:, :3], imagenet[0])
    assert torch.allclose(stem[:, 3], imagenet[0].mean(dim=1), atol=1e-6)


def test_segmentation_encoder_takes_the_first_288_tensors(imagenet):
    model = create_model("coarse_sn")
    encoder_state = model.unet.encoder.model.state_dict()
    assert len(encoder_state) == 288
    first_block = next(iter(encoder_state.values()))
    assert torch.equal(first_block, imagenet[0])


def test_shape_mismatch_is_refused(imagenet):
    target = {"w": torch.zeros(5, 5)}
    with pytest.raises(PretrainedUnavailable, match="shape mismatch"):
        map_by_order(target, imagenet)


def test_forward_shapes_and_cam_handoff():
    torch.manual_seed(0)
    coarse, mask_cn, enhanced = (create_model(a, pretrained=None).eval() for a in ("coarse_sn", "mask_cn", "enhanced_sn"))
    seg_x = torch.randn(2, 3, *SEGMENTER_SIZE)
    cls_x = torch.randn(2, 3, *CLASSIFIER_SIZE)
    with torch.no_grad():
        coarse_probs = torch.sigmoid(coarse(seg_x))
        assert coarse_probs.shape == (2, 1, *SEGMENTER_SIZE)
        x4 = mask_cn_input(cls_x, coarse_probs)
        assert x4.shape == (2, 4, *CLASSIFIER_SIZE)
        logits, features = mask_cn.forward_with_features(x4)
        assert logits.shape == (2, 7)
        cams = mask_cn.class_activation_maps(features)
        assert cams.shape[:2] == (2, 7)
        loc = localisation_map(cams, logits.argmax(1))
        assert loc.shape == (2, 1, *cams.shape[-2:]) and float(loc.min()) >= 0 and float(loc.max()) <= 1 + 1e-6
        assert enhanced(seg_x, loc).shape == (2, 1, *SEGMENTER_SIZE)


def test_cam_is_the_classifier_weighted_feature_sum():
    """CAM averaged over space equals the logit minus the bias (GAP + FC is linear)."""
    model = create_model("classifier", pretrained=None).eval()
    with torch.no_grad():
        logits, features = model.forward_with_features(torch.randn(1, 3, *CLASSIFIER_SIZE))
        cams = model.class_activation_maps(features)
        bias = model.net.get_classifier().bias
        assert torch.allclose(cams.mean(dim=(2, 3)) + bias, logits, atol=1e-4)


def test_enhanced_sn_warm_started_from_coarse_sn_starts_as_coarse_sn():
    """The E-layers' scales start at 0: before any training step the warm-started enhanced-SN computes exactly what
    coarse-SN computes, whatever the localisation map."""
    torch.manual_seed(0)
    coarse = create_model("coarse_sn", pretrained=None).eval()
    enhanced = create_model("enhanced_sn", pretrained=None).eval()
    missing, unexpected = enhanced.load_state_dict(coarse.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("e_layers") for k in missing)
    x = torch.randn(1, 3, *SEGMENTER_SIZE)
    with torch.no_grad():
        assert torch.equal(enhanced(x, torch.rand(1, 1, 4, 5)), coarse(x))


def test_enhanced_sn_localisation_changes_the_output():
    torch.manual_seed(0)
    model = create_model("enhanced_sn", pretrained=None).eval()
    for layer in model.e_layers:  # as after training: the fusion branch contributes
        torch.nn.init.ones_(layer.scale)
    x = torch.randn(1, 3, *SEGMENTER_SIZE)
    with torch.no_grad():
        a = model(x, torch.zeros(1, 1, 4, 5))
        b = model(x, torch.ones(1, 1, 4, 5))
    assert not torch.allclose(a, b)


def test_unknown_architecture():
    with pytest.raises(ValueError, match="unknown architecture"):
        create_model("vit_huge")
