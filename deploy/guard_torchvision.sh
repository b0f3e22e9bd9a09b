#!/usr/bin/env bash
# Make PyPI's torchvision importable on the CPU build of torch.
# PyPI's torchvision is a CUDA build: on CPU torch its C++ operators (_C.so needs libtorch_cuda) cannot load, and
# torchvision then fails at import on its two fake-kernel registrations that, unlike its others, do not check that
# the operators loaded. LesionLens uses torchvision only through the Python code of timm and
# segmentation_models_pytorch, never an operator, so those two get the same check. A torchvision whose operators load
# (the CPU build of the PyTorch index) is left as it is.
#   bash deploy/guard_torchvision.sh PYTHON      (PYTHON: the environment's interpreter, e.g. .venv/bin/python)
set -euo pipefail
PY="${1:?usage: guard_torchvision.sh PYTHON}"
"$PY" -c "import torchvision" 2>/dev/null && exit 0
registrations="$("$PY" -c "import importlib.util as u; print(u.find_spec('torchvision').submodule_search_locations[0])")/_meta_registrations.py"
sed -i -E 's/^@(torch\.library\.register_fake\("torchvision::[a-z_]+"\))$/@(\1 if torchvision.extension._has_ops() else (lambda fn: fn))/' \
    "$registrations"
"$PY" -c "import torchvision, timm, segmentation_models_pytorch" || {
    echo "[guard_torchvision] torchvision still fails to import on this torch ($registrations)" >&2; exit 1; }
echo "[guard_torchvision] torchvision's operators do not load on this torch (a CUDA build of torchvision on CPU torch):" \
    "its two unguarded fake-kernel registrations now check for them, as the others do" >&2
