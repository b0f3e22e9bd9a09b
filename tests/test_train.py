"""Training CLIs on real data, tiny: a few steps, small subsets (heavy training stays out of the tests)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from core.data import load_manifest
from core.losses import hybrid_loss
from core.models import create_model
from core.tensors import SEGMENTER_SIZE, normalize_batch
from train import train as train_stage
from train.cache import load_split_arrays

TINY = ["--epochs", "1", "--max-train-images", "48", "--max-val-images", "24", "--batch-size", "8",
        "--use-cache", "false", "--threads", "2"]


def test_coarse_sn_overfits_a_batch_of_real_lesions(ham_manifest):
    """The segmentation loss on 8 real images falls when we train on them (the model can learn at all)."""
    torch.manual_seed(0)
    rows = ham_manifest.head(8)
    images, masks = load_split_arrays(rows, SEGMENTER_SIZE, with_masks=True, use_cache=False)
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


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory, data_dir):
    """The three MB-DCNN stages, wired as train.pipeline wires them, each for a few steps."""
    runs = tmp_path_factory.mktemp("runs")
    common = ["--data-dir", str(data_dir), *TINY]
    coarse = train_stage.main(["--stage", "coarse_sn", "--out-dir", str(runs / "coarse_sn"), "--max-train-batches", "2", *common])
    mask_cn = train_stage.main(["--stage", "mask_cn", "--out-dir", str(runs / "mask_cn"), "--max-train-batches", "2",
                                "--coarse-sn", str(runs / "coarse_sn" / "best.safetensors"), *common])
    enhanced = train_stage.main(["--stage", "enhanced_sn", "--out-dir", str(runs / "enhanced_sn"), "--max-train-batches", "2",
                                 "--coarse-sn", str(runs / "coarse_sn" / "best.safetensors"),
                                 "--mask-cn", str(runs / "mask_cn" / "best.safetensors"), *common])
    return runs, {"coarse_sn": coarse, "mask_cn": mask_cn, "enhanced_sn": enhanced}


def test_each_stage_writes_checkpoint_and_history(tiny_runs):
    runs, results = tiny_runs
    for stage, result in results.items():
        assert (runs / stage / "best.safetensors").is_file()
        history = json.loads((runs / stage / "history.json").read_text())["history"]
        assert len(history) == 1 and history[0]["steps"] == 2
        assert 0.0 <= history[0]["val_metric"] <= 1.0


def test_enhanced_sn_starts_from_coarse_sn(tiny_runs):
    """enhanced-SN is warm-started: the frozen encoder stem is identical to coarse-SN's."""
    runs, _ = tiny_runs
    coarse = load_file(str(runs / "coarse_sn" / "best.safetensors"))
    enhanced = load_file(str(runs / "enhanced_sn" / "best.safetensors"))
    key = "unet.encoder.model.conv_stem.weight"
    assert torch.equal(coarse[key], enhanced[key])
    assert any(k.startswith("e_layers") for k in enhanced)


def test_stage_without_its_upstream_checkpoint_says_so(data_dir):
    with pytest.raises(SystemExit, match="--coarse-sn"):
        train_stage.main(["--stage", "mask_cn", "--data-dir", str(data_dir), *TINY])


def test_resume_continues_the_history(tmp_path, data_dir):
    out = tmp_path / "classifier"
    args = ["--stage", "classifier", "--out-dir", str(out), "--data-dir", str(data_dir), "--pretrained", "none",
            "--max-train-batches", "1", *TINY]
    train_stage.main(args)
    resumed = train_stage.main([*args[:-len(TINY)], *TINY[2:], "--epochs", "2", "--resume", "true"])
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]


def test_ddp_two_cpu_processes_end_with_equal_weights(tmp_path, data_dir, repo_root):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo_root)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
               "-m", "train.train", "--stage", "classifier", "--pretrained", "none", "--out-dir", str(out),
               "--data-dir", str(data_dir), "--max-train-batches", "2", *TINY[:-2], "--threads", "1"]
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
