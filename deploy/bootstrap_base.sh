#!/usr/bin/env bash
# The base image of every LesionLens service, made without a container registry: mmdebstrap bootstraps Debian bookworm
# (minbase) from the machine's own Debian mirror with deploy/base-packages.txt already installed, and `docker import`
# makes it an image. Build FROM it with `bash run.sh image --offline` (Dockerfile build arg BASE); its base stage then
# finds every package installed and downloads nothing.
#   bash deploy/bootstrap_base.sh [--force]     (--force: rebuild even when the image exists)
# Env: LESIONLENS_BASE  the image name (default lesionlens-base:bookworm)
#      DEBIAN_MIRROR    the mirror (default: the first .../debian mirror in this machine's apt sources)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE="${LESIONLENS_BASE:-lesionlens-base:bookworm}"

if [ "${1:-}" != "--force" ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "[bootstrap_base] $IMAGE exists (--force rebuilds it)" >&2
    exit 0
fi

host_mirror() {
    # The apt sources in either format: one-line (deb URI suite ...) and deb822 (URIs: URI).
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | grep -oE '(https?|file):/+[^ ]*/debian/?( |$)' | head -n 1 | tr -d ' ' || true
}
MIRROR="${DEBIAN_MIRROR:-$(host_mirror)}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
MIRROR="${MIRROR%/}"

packages="$(grep -vE '^\s*(#|$)' "$ROOT/deploy/base-packages.txt" | paste -sd, -)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "[bootstrap_base] bookworm from $MIRROR with $packages" >&2
# No documentation, manual pages or translations: nothing in a container reads them (about 60 MB less).
mmdebstrap --variant=minbase --include="$packages" \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
    bookworm "$work/base.tar" \
    "deb $MIRROR bookworm main" "deb $MIRROR bookworm-updates main" "deb ${MIRROR}-security bookworm-security main"
docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' "$work/base.tar" "$IMAGE" >/dev/null
echo "[bootstrap_base] $IMAGE: $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')" >&2
