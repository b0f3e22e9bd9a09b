#!/usr/bin/env bash
# A working Docker for `bash run.sh image` and tests/test_container.py: installs Debian's docker.io (dockerd),
# docker-compose (Compose v1: Debian bookworm has no `docker compose` plugin) and mmdebstrap (deploy/bootstrap_base.sh)
# with apt-get when they are missing, then starts dockerd as root in the background when no daemon answers
# (the development and CI machines run no init system that would start it). Log: /var/log/lesionlens-dockerd.log.
set -euo pipefail

docker info >/dev/null 2>&1 && exit 0

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
if [ "$(id -u)" != 0 ]; then
    echo "[start_docker] no Docker daemon answers and only root can install or start one" >&2
    exit 1
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "[start_docker] installing ${missing[*]} with apt-get" >&2
    { env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" \
        || { apt-get update -qq && env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; }; } >&2
fi

echo "[start_docker] starting dockerd" >&2
# setsid: the daemon outlives the test or shell that started it (it keeps the layer cache for the next build).
setsid dockerd >>/var/log/lesionlens-dockerd.log 2>&1 < /dev/null &
for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && exit 0
    sleep 1
done
echo "[start_docker] dockerd did not answer within 60 s; see /var/log/lesionlens-dockerd.log" >&2
exit 1
