import pytest
import torch
import torch.nn.functional as F

from core.models.losses import class_weights, dice_loss, hybrid_loss, mixed_cross_entropy, rank_loss


def _target():
    t = torch.zeros(1, 1, 16, 16)
    t[..., 4:12, 4:12] = 1
    return t


def test_dice_loss_perfect_and_inverted():
    t = _target()
    assert dice_loss((t * 2 - 1) * 20, t) < 0.01
    assert dice_loss((1 - 2 * t) * 20, t) > 0.95


def test_rank_loss_zero_when_lesion_outranks_background_by_margin():
    t = _target()
    assert rank_loss((t * 2 - 1) * 20, t, k=5, margin=0.3) == 0


def test_rank_loss_penalises_one_hard_background_pixel_and_gradient_lowers_it():
    t = _target()
    logits = ((t * 2 - 1) * 3).clone()
    logits[0, 0, 0, 0] = 5.0  # a background pixel scored above the lesion
    logits.requires_grad_(True)
    loss = rank_loss(logits, t, k=5, margin=0.3)
    assert loss > 0
    loss.backward()
    assert logits.grad[0, 0, 0, 0] > 0  # descent pushes that pixel's logit down


def test_rank_loss_skips_images_without_background_or_lesion():
    assert rank_loss(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)) == 0


def test_hybrid_is_dice_plus_lambda_rank():
    t = _target()
    logits = torch.randn(1, 1, 16, 16)
    expected = dice_loss(logits, t) + 0.05 * rank_loss(logits, t)
    assert torch.allclose(hybrid_loss(logits, t, lam=0.05), expected)


def test_class_weights_favour_rare_classes():
    labels = torch.tensor([0] * 60 + [1] * 1)
    w = class_weights(labels, 2, power=1.0)
    assert w[1] > 10 * w[0]
    assert torch.isclose(w.mean(), torch.tensor(1.0))


def test_the_segmenters_training_loss_contains_the_rank_term():
    """The loss a segmentation stage trains with (train.stages, default config) changes when only the hardest
    background pixels change, by more than Dice alone accounts for: lambda x the rank term's change."""
    from train.stages import CoarseSNStage
    from train.train import parse_args

    stage = CoarseSNStage(parse_args(["--stage", "coarse_sn"]))
    t = torch.zeros(1, 1, 64, 64)
    t[..., 16:48, 16:48] = 1
    base = (t * 2 - 1) * 3
    hard = base.clone()
    hard[0, 0, 0, :30] = 2.0  # 30 background pixels now score close to the lesion's hardest pixels
    beyond_dice = float(stage.loss(hard, t) - stage.loss(base, t)) - float(dice_loss(hard, t) - dice_loss(base, t))
    assert beyond_dice == pytest.approx(0.05 * float(rank_loss(hard, t) - rank_loss(base, t)), rel=1e-4)
    assert beyond_dice > 0.005


def test_mixed_cross_entropy_is_the_weighted_cross_entropy_without_a_box_and_follows_the_kept_share():
    """CutMix's loss: with every image keeping all its pixels it is exactly the class-weighted, label-smoothed
    cross-entropy of training; an image that keeps a share k of its pixels counts k x its own label."""
    torch.manual_seed(0)
    logits, labels, partner = torch.randn(8, 7), torch.randint(0, 7, (8,)), torch.randint(0, 7, (8,))
    weight = torch.rand(7) + 0.5
    plain = F.cross_entropy(logits, labels, weight=weight, label_smoothing=0.05)
    assert torch.allclose(mixed_cross_entropy(logits, labels, partner, torch.ones(8), weight, 0.05), plain)
    assert torch.allclose(mixed_cross_entropy(logits, labels, partner, torch.zeros(8), weight, 0.05),
                          F.cross_entropy(logits, partner, weight=weight, label_smoothing=0.05))
    one = torch.zeros(1, 7)
    one[0, 2] = 5.0  # confident in class 2: the loss falls as the share labelled 2 grows
    losses = [float(mixed_cross_entropy(one, torch.tensor([2]), torch.tensor([4]), torch.tensor([k]), weight))
              for k in (0.2, 0.5, 0.8)]
    assert losses[0] > losses[1] > losses[2]
