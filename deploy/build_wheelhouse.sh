#!/usr/bin/env bash
# wheelhouse/: every wheel of requirements.txt for the image, built on this machine with its pip configuration
# (mirrors, find-links), so that the image build installs with `pip install --no-index` and needs no network.
# torch is a CPU build: the PyPI wheel bundles CUDA (about 3 GB more). The newest torch-*+cpu-cp311 wheel in pip's
# find-links folders is used when there is one (the development and CI machines keep one in /opt/wheels), else
# requirements.txt's version from the PyTorch CPU index. torchvision is left to pip: each release pins one torch
# release, so pip takes the torchvision made for that torch. The image's requirements (requirements.txt with those
# two lines changed) are written to wheelhouse/requirements.txt; the Dockerfile installs from it.
#   bash deploy/build_wheelhouse.sh      (skips the work when requirements.txt and the torch wheel are unchanged)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOUSE="$ROOT/wheelhouse"
PY="${PYTHON:-python3}"
CPU_INDEX=https://download.pytorch.org/whl/cpu

# pip picks wheels for the Python that runs it: it must be the image's, Debian bookworm's 3.11.
"$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || {
    echo "[wheelhouse] $PY is not Python 3.11 (the image's); set PYTHON to a python3.11" >&2; exit 1; }

find_links="$("$PY" -m pip config get global.find-links 2>/dev/null || true) ${PIP_FIND_LINKS:-}"
local_wheel="$(for dir in $find_links; do ls "${dir#file://}"/torch-*+cpu-cp311-*.whl 2>/dev/null; done \
    | sort -V | tail -n 1)"
pinned="$(grep -oE '^torch==[^ ]+' "$ROOT/requirements.txt" | cut -d= -f3)"
index_args=()
if [ -n "$local_wheel" ]; then
    torch_version="$(basename "$local_wheel" | cut -d- -f2)"
else
    torch_version="${pinned}+cpu"
    index_args=(--extra-index-url "$CPU_INDEX")
fi
[ "${torch_version%+cpu}" = "$pinned" ] || echo "[wheelhouse] torch $torch_version, the newest CPU build here" \
    "(requirements.txt pins $pinned)" >&2

mkdir -p "$HOUSE"
want="$(sha256sum "$ROOT/requirements.txt" | cut -d' ' -f1) $torch_version"
if [ -f "$HOUSE/.built-from" ] && [ "$(cat "$HOUSE/.built-from")" = "$want" ]; then
    echo "[wheelhouse] up to date ($(ls "$HOUSE"/*.whl | wc -l) wheels, torch $torch_version)" >&2
    exit 0
fi
rm -f "$HOUSE"/*.whl "$HOUSE/.built-from"
sed -E -e "s/^torch==[^ ]+/torch==$torch_version/" -e 's/^torchvision==[^ ]+/torchvision/' \
    "$ROOT/requirements.txt" > "$HOUSE/requirements.txt"
echo "[wheelhouse] pip wheel -r wheelhouse/requirements.txt (torch $torch_version)" >&2
"$PY" -m pip wheel --quiet --wheel-dir "$HOUSE" "${index_args[@]}" -r "$HOUSE/requirements.txt"
echo "$want" > "$HOUSE/.built-from"
echo "[wheelhouse] $(ls "$HOUSE"/*.whl | wc -l) wheels, $(du -sh "$HOUSE" | cut -f1)" >&2
