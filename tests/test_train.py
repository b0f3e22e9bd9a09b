"""The training engine on real data, tiny: a few steps, small subsets (heavy training stays out of the tests)."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from core.models.losses import hybrid_loss
from core.models.mbdcnn import coarse_probabilities
from core.models import create_model
from core.imaging.preprocess import Preprocessing
from core.imaging.tensors import normalize_batch
from core.io.weights_io import weights_metadata
from train import train as train_stage
from train.cache import load_arrays
from train.checkpoint import save_state
from train.stages import CoarseSNStage, MaskCNStage, Stage, load_upstream, upstream_images

from conftest import TINY


def test_coarse_sn_overfits_a_batch_of_real_lesions(ham_manifest):
    """The segmentation loss on 8 real images falls when we train on them (the model can learn at all)."""
    torch.manual_seed(0)
    rows = ham_manifest.head(8)
    images, masks = load_arrays(rows, (128, 160), Preprocessing(), with_masks=True, use_cache=False)
    x = normalize_batch(torch.from_numpy(images))
    y = torch.from_numpy(masks).unsqueeze(1).float()
    model = create_model("coarse_sn")
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    losses = []
    for _ in range(12):
        loss = hybrid_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_each_stage_writes_checkpoint_history_and_metadata(tiny_runs):
    runs, results = tiny_runs
    sizes = {"coarse_sn": "96x128", "mask_cn": "75x100", "enhanced_sn": "96x128"}
    for stage, result in results.items():
        history = json.loads((runs / stage / "history.json").read_text())["history"]
        assert len(history) == 1 and history[0]["steps"] == 2
        # both validation sources are scored, and the score is their mean
        metric = "dice" if stage != "mask_cn" else "balanced_accuracy"
        assert f"ham10000_{metric}" in history[0] and "isic2017_macro_auc" in history[0] or stage != "mask_cn"
        assert 0.0 <= history[0]["score"] <= 1.0
        meta = weights_metadata(runs / stage / "best.safetensors")
        assert meta["arch"] == stage and meta["input_size"] == sizes[stage]
        # the JPEG step is the classifiers' only (core.imaging.preprocess.Preprocessing.jpeg_quality)
        assert json.loads(meta["preprocessing"]) == {"colour_constancy": True, "crop_field_of_view": True,
                                                     "jpeg_quality": 75 if stage == "mask_cn" else 0}
    seg = json.loads((runs / "coarse_sn" / "history.json").read_text())["history"][0]
    assert seg["score"] == pytest.approx((seg["ham10000_dice"] + seg["isic2017_dice"]) / 2, abs=1e-5)


def test_enhanced_sn_starts_from_coarse_sn(tiny_runs):
    """enhanced-SN is warm-started: its frozen encoder stem is coarse-SN's, and it has E-layers."""
    runs, _ = tiny_runs
    coarse = load_file(str(runs / "coarse_sn" / "best.safetensors"))
    enhanced = load_file(str(runs / "enhanced_sn" / "best.safetensors"))
    key = "unet.encoder.model.conv_stem.weight"
    assert torch.equal(coarse[key], enhanced[key])
    assert any(k.startswith("e_layers") for k in enhanced)


@pytest.mark.parametrize("resume", [False, True])
def test_enhanced_sn_is_built_from_coarse_sn_also_under_resume(tiny_runs, data_dir, resume):
    """train_all runs every stage with --resume true: a fresh enhanced-SN must still start from coarse-SN's weights
    (every U-Net tensor equal; only the E-layers are new)."""
    from train.stages import STAGES as STAGE_CLASSES
    from train.train import CONFIG, build_model

    runs, _ = tiny_runs
    coarse_path = runs / "coarse_sn" / "best.safetensors"
    cfg = dict(CONFIG, stage="enhanced_sn", data_dir=str(data_dir), coarse_sn=str(coarse_path), pretrained="none",
               image_size="96x128", resume=resume)
    model = build_model(cfg, STAGE_CLASSES["enhanced_sn"](cfg))
    coarse = load_file(str(coarse_path))
    state = model.state_dict()
    assert all(torch.equal(state[k], v.float()) for k, v in coarse.items())


def test_mask_cn_validates_on_coarse_sn_output_and_trains_on_perturbed_truth(tiny_runs, data_dir):
    """mask-CN's fourth channel: at validation coarse-SN's probabilities (what inference feeds), in training the
    ground-truth mask perturbed like a segmenter's errors (it overlaps the truth, but is not the truth)."""
    runs, _ = tiny_runs
    cfg = train_stage.parse_args(["--stage", "mask_cn", "--data-dir", str(data_dir), "--image-size", "75x100",
                                  "--coarse-sn", str(runs / "coarse_sn" / "best.safetensors"), *TINY])
    stage = MaskCNStage(cfg)
    _, val_tables = train_stage.split_tables(cfg)
    table = val_tables["ham10000"].head(6)
    val = stage.load(table, training=False)
    coarse_sn, meta = load_upstream("coarse_sn", cfg["coarse_sn"])
    expected = coarse_probabilities(coarse_sn, normalize_batch(torch.from_numpy(upstream_images(table, meta, False))))
    assert torch.allclose(val.aux.float(), expected, atol=1e-3)
    (x4,), _ = stage.batch(val, np.arange(6), None)
    assert torch.allclose(x4[:, 3], ((torch.nn.functional.interpolate(
        val.aux.float(), size=(75, 100), mode="bilinear", align_corners=False) - 0.5) / 0.25)[:, 0], atol=1e-4)

    train = stage.load(table, training=True)
    stage.augment = stage.augment.__class__(crop_scale=(1.0, 1.0), rotate_degrees=0, transpose_p=0, brightness=0,
                                            contrast=0, saturation=0, hue=0, lowres_p=0)  # flips only
    generator = torch.Generator().manual_seed(3)
    (x4,), _ = stage.batch(train, np.arange(6), generator)
    channel = (x4[:, 3] * 0.25 + 0.5).numpy() > 0.5
    truth = train.masks[np.arange(6)].astype(bool)
    for got, want in zip(channel, truth):
        if not got.any():
            continue  # dropped: "the segmenter found nothing"
        ious = [(got & t).sum() / (got | t).sum() for t in (want, want[::-1], want[:, ::-1], want[::-1, ::-1])]
        assert 0.4 < max(ious), ious
    assert any(not np.array_equal(got, want) for got, want in zip(channel, truth))


def test_mask_cn_trains_images_without_a_drawn_mask_on_coarse_sn_s_mask(tiny_runs, data_dir):
    """The acral images have no reference mask: in training their "truth" is coarse-SN's thresholded output (as
    validation feeds it), while images with a drawn mask keep theirs; each source appears as often as asked."""
    from train.stages import source_repeats

    runs, _ = tiny_runs
    cfg = train_stage.parse_args(["--stage", "mask_cn", "--data-dir", str(data_dir), "--image-size", "75x100",
                                  "--sources", "ham10000,acral", "--source-repeats", "acral=3",
                                  "--coarse-sn", str(runs / "coarse_sn" / "best.safetensors"), *TINY])
    stage = MaskCNStage(cfg)
    train_table, val_tables = train_stage.split_tables(cfg)
    assert set(val_tables) == {"ham10000", "acral"} and set(train_table["source"]) == {"ham10000", "acral"}
    table = pd.concat([train_table[train_table["source"] == s].head(3) for s in ("ham10000", "acral")],
                      ignore_index=True)
    train = stage.load(table, training=True)
    assert train.repeats.tolist() == [1, 1, 1, 3, 3, 3]
    coarse = stage.coarse_output(table.iloc[3:]).float()
    expected = torch.nn.functional.interpolate(coarse, size=(75, 100), mode="bilinear", align_corners=False)[:, 0] > 0.5
    assert np.array_equal(train.masks[3:].astype(bool), expected.numpy())
    reference = stage.load(table.iloc[:3], training=True).masks
    assert np.array_equal(train.masks[:3], reference)
    assert source_repeats(np.array(["isic2017", "acral", "x"]), "isic2017=2, acral=4") .tolist() == [2, 4, 1]


def test_a_clinic_inside_ham10000_can_be_repeated_on_its_own(data_dir):
    """source_repeats names HAM10000's acquisition sources too: Queensland's images thrice, the rest of HAM10000
    once, whatever their dataset says."""
    from core.data.acquisition import acquisition_sources
    from core.data.datasets import load_manifest
    from train.stages import acquisitions_if_named, source_repeats

    table = load_manifest(data_dir, sources=("ham10000", "isic2017"))
    spec = "isic2017=2,rosendahl=3"
    repeats = source_repeats(table["source"].to_numpy(), spec, acquisitions_if_named(table, spec, str(data_dir)))
    clinic = acquisition_sources(table, data_dir).to_numpy()
    assert set(repeats[clinic == "rosendahl"]) == {3} and set(repeats[clinic == "isic2017"]) == {2}
    assert set(repeats[(clinic != "rosendahl") & (clinic != "isic2017")]) == {1}
    assert acquisitions_if_named(table, "isic2017=2", str(data_dir)) is None  # datasets only: nothing to look up


def test_a_preset_sets_the_defaults_and_the_command_line_wins(tmp_path, repo_root):
    preset = repo_root / "train" / "presets" / "mask_cn_acral_finetune.toml"
    cfg = train_stage.parse_args(["--config", str(preset), "--epochs", "3"])
    assert cfg["sources"] == "ham10000,isic2017,acral" and cfg["lr"] == 1e-4 and cfg["epochs"] == 3
    assert "config" not in cfg  # the run's history.json records the settings, not where they came from
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlearning_rate = 0.1\n")
    with pytest.raises(SystemExit):
        train_stage.parse_args(["--config", str(bad)])


def test_a_left_out_acral_contributor_is_in_neither_training_nor_validation(data_dir):
    """--leave-out acral_imperial: that clinic's images are gone from training and validation, every other image
    keeps the split it has in the full data (the split is drawn before leaving out), and a name that is no
    acquisition source is refused."""
    from core.data.acquisition import acquisition_sources

    args = ["--stage", "mask_cn", "--data-dir", str(data_dir), "--sources", "ham10000,isic2017,acral"]
    full_train, full_val = train_stage.split_tables(train_stage.parse_args(args))
    train, val = train_stage.split_tables(train_stage.parse_args([*args, "--leave-out", "acral_imperial"]))
    contributor = acquisition_sources(full_train, data_dir, acral_contributors=True)
    imperial = set(full_train.loc[contributor == "acral_imperial", "image_id"])
    assert len(imperial) > 300 and not imperial & set(train["image_id"])
    assert set(train["image_id"]) == set(full_train["image_id"]) - imperial
    kept_val = acquisition_sources(val["acral"], data_dir, acral_contributors=True)
    full_val_acral = acquisition_sources(full_val["acral"], data_dir, acral_contributors=True)
    assert "acral_imperial" not in set(kept_val) and "acral_imperial" in set(full_val_acral)
    assert set(val["acral"]["image_id"]) == set(full_val["acral"].loc[full_val_acral != "acral_imperial", "image_id"])
    assert val["ham10000"]["image_id"].tolist() == full_val["ham10000"]["image_id"].tolist()
    with pytest.raises(SystemExit, match="no such acquisition source"):
        train_stage.split_tables(train_stage.parse_args([*args, "--leave-out", "acral_nowhere"]))


def test_mask_cn_cutmix_moves_the_mask_channel_with_the_image_and_mixes_the_labels(tiny_runs, data_dir):
    """--cutmix-p: the training batch's mask channel changes only where the image got the partner's box, and the
    target carries both labels and the kept share, which the loss uses (it differs from the unmixed loss)."""
    runs, _ = tiny_runs
    args = ["--stage", "mask_cn", "--data-dir", str(data_dir), "--image-size", "75x100",
            "--coarse-sn", str(runs / "coarse_sn" / "best.safetensors"), *TINY]
    plain = MaskCNStage(train_stage.parse_args(args))
    mixed = MaskCNStage(train_stage.parse_args([*args, "--cutmix-p", "1"]))
    _, val_tables = train_stage.split_tables(plain.cfg)
    train = plain.load(val_tables["ham10000"].head(8), training=True)
    (x_plain,), labels = plain.batch(train, np.arange(8), torch.Generator().manual_seed(5))
    (x_mixed,), target = mixed.batch(train, np.arange(8), torch.Generator().manual_seed(5))
    own, partner_labels, keep = target
    assert torch.equal(own, labels) and (keep < 1).any()
    image_changed = (x_mixed[:, :3] != x_plain[:, :3]).any(1)
    channel_changed = x_mixed[:, 3] != x_plain[:, 3]
    assert channel_changed.any() and not (channel_changed & ~image_changed).any()
    for stage in (plain, mixed):
        stage.prepare(train)
    logits = torch.randn(8, 7)
    assert not torch.isclose(mixed.loss(logits, target), plain.loss(logits, labels))


def test_stage_without_its_upstream_checkpoint_says_so(data_dir):
    with pytest.raises(SystemExit, match="--coarse-sn"):
        train_stage.main(["--stage", "mask_cn", "--data-dir", str(data_dir), *TINY])


@pytest.mark.parametrize("missing", ["batch", "loss", "validate"])
def test_a_stage_missing_a_method_the_loop_asks_for_cannot_be_made(missing):
    """Stage declares what the training loop asks of every stage; a stage that lacks one fails when it is made, not
    epochs later when the loop first calls it. A stage with all three is made."""
    cfg = train_stage.parse_args(["--stage", "coarse_sn"])
    provided = {name: (lambda self, *args: None) for name in ("batch", "loss", "validate") if name != missing}
    incomplete = type("IncompleteStage", (Stage,), {"arch": "coarse_sn", "default_size": (8, 8), **provided})
    with pytest.raises(TypeError, match=missing):
        incomplete(cfg)
    assert CoarseSNStage(cfg).size == CoarseSNStage.default_size


def _without_timings(history):
    return [{k: v for k, v in row.items() if "second" not in k} for row in history]


def test_resume_after_every_step_equals_an_uninterrupted_run(tmp_path, data_dir):
    """A run cut after every single step (--max-minutes ~0) and resumed each time ends with the same weights,
    learning rates and validation history as one uninterrupted run: optimiser, schedule, EMA, RNG and position
    are all restored."""
    base = ["--stage", "classifier", "--data-dir", str(data_dir), "--pretrained", "none", "--image-size", "60x80",
            "--max-train-batches", "2", *TINY[2:], "--epochs", "2", "--warmup-epochs", "1", "--ema", "0.9"]
    straight = train_stage.main([*base, "--out-dir", str(tmp_path / "straight")])
    pieces = 0
    while True:
        result = train_stage.main([*base, "--out-dir", str(tmp_path / "pieces"), "--max-minutes", "1e-9", "--resume", "true"])
        pieces += 1
        if result["finished"]:
            break
        assert pieces < 10
    assert pieces >= 4  # at least one stop per step (2 epochs x 2 steps)
    assert _without_timings(result["history"]) == _without_timings(straight["history"])
    a = load_file(str(tmp_path / "straight" / "best.safetensors"))
    b = load_file(str(tmp_path / "pieces" / "best.safetensors"))
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A run killed while writing its state leaves the previous state readable."""
    path = tmp_path / "last_state.pt"
    save_state(path, {"step": 1})

    def dies_half_way(obj, file):
        open(file, "wb").write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_state(path, {"step": 2})
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}


def test_ddp_two_cpu_processes_end_with_equal_weights(tmp_path, data_dir, repo_root):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo_root)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
               "-m", "train.train", "--stage", "classifier", "--pretrained", "none", "--out-dir", str(out),
               "--image-size", "60x80", "--data-dir", str(data_dir), "--max-train-batches", "2", *TINY[:-2],
               "--threads", "1"]
    done = subprocess.run(command, cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0 = load_file(str(out / "final_rank0.safetensors"))
    rank1 = load_file(str(out / "final_rank1.safetensors"))
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    # and training changed them (the head is not at its initial values on both ranks by accident)
    torch.manual_seed(42)  # train.train seeds 42 before building the model: this is the exact initial state
    fresh = create_model("classifier", pretrained=None).state_dict()
    assert not np.allclose(fresh["net.classifier.weight"].numpy(), rank0["net.classifier.weight"].numpy())


def test_train_all_counts_an_early_stopped_stage_as_finished(tmp_path):
    """A stage that early stopping ended is done: re-running train_all used to resume it and train one more epoch
    each time (its history had fewer epochs than --epochs)."""
    from train.train_all import finished

    def history(scores, patience):
        (tmp_path / "history.json").write_text(json.dumps({"config": {"patience": patience}, "history": [
            {"epoch": i + 1, "val_metric": s} for i, s in enumerate(scores)]}))

    history([0.5, 0.7, 0.6, 0.65], patience=2)  # best at epoch 2, then 2 epochs without a better score: stopped
    assert finished(tmp_path, ["--epochs", "10"])
    history([0.5, 0.7, 0.6], patience=2)  # only 1 stale epoch: interrupted, not stopped
    assert not finished(tmp_path, ["--epochs", "10"])
    history([0.5, 0.7, 0.7, 0.6], patience=0)  # no early stopping: only all epochs finish it
    assert not finished(tmp_path, ["--epochs", "10"]) and finished(tmp_path, ["--epochs", "4"])


def test_max_minutes_is_decided_by_rank_0_for_every_rank(tmp_path, repo_root):
    """Two ranks whose clocks disagree (rank 0 past --max-minutes, rank 1 not) both stop: each used to check its own
    clock, so one could save and exit while the other trained on and waited forever in its next collective."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{repo_root}:{repo_root / 'tests'}"}
    workers = [subprocess.Popen([sys.executable, str(repo_root / "tests" / "ddp_clock_support.py"), str(rank), "29547",
                                 str(tmp_path)], cwd=repo_root, env=env) for rank in (0, 1)]
    assert [w.wait(timeout=120) for w in workers] == [0, 0]
    answers = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert answers == [True, True]
