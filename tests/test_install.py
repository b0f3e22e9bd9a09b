"""The runtime install is CPU-only and small: torch's CPU build (no CUDA libraries, no triton), PyPI's torchvision
importable on it (deploy/guard_torchvision.sh), and requirements.txt with all it pulls in under 2.5 GB on disk."""
from __future__ import annotations

from packaging.requirements import Requirement

from bench.install_size import requirements, runtime_distributions, runtime_install

RUNTIME_LIMIT_GB = 2.5


def test_torch_is_the_cpu_build_without_cuda_libraries():
    install = runtime_install()
    assert install["torch_cuda"] is None, f"torch {install['torch']} is a CUDA build: see requirements.txt"
    assert install["cuda_distributions"] == []
    pinned = next(r for r in requirements() if r.name == "torch")
    assert pinned.specifier.contains(install["torch"].split("+")[0])


def test_the_runtime_install_stays_under_its_size_limit():
    install = runtime_install()
    assert 0.5 < install["gb"] <= RUNTIME_LIMIT_GB, install["largest_mb"]


def test_the_runtime_closure_follows_dependencies_and_extras():
    dists = runtime_distributions([Requirement("ray[data]")])
    assert {"ray", "pyarrow", "pandas", "numpy"} <= set(dists)  # pyarrow and pandas come with the `data` extra
    assert "pyarrow" not in runtime_distributions([Requirement("ray")])  # ... and only with it


def test_torchvision_and_the_model_libraries_import_on_the_cpu_build():
    import segmentation_models_pytorch
    import timm
    import torchvision

    assert timm.create_model("efficientnet_lite0", pretrained=False, num_classes=7) is not None
    assert segmentation_models_pytorch.__version__ and torchvision.__version__
