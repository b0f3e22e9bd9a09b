#!/usr/bin/env bash
# LesionLens launcher.
#   bash run.sh app                 start the dashboard (PORT env, default 8501) on the weights in weights/
#   bash run.sh test [pytest args]  run the test suite (DATA_DIR defaults to ../shared/data)
#   bash run.sh pacs [--port N]     a demo PACS (Orthanc, DICOMweb on localhost:8042) with made-up dermoscopy studies
#   bash run.sh batch INPUT --out OUT [--ray ADDRESS|auto] [--workers N] [--labels CSV]   archive analysis to Parquet
#   bash run.sh image [--offline]   build the container images (app, audit-db, pacs; docs/deploy.md); --offline: from a
#                                   Debian base bootstrapped from the apt mirror and a wheelhouse built here
#   bash run.sh MODULE [args...]    run `python -m MODULE args...` in the project environment,
#                                   e.g. bash run.sh train.splits --data-dir ../shared/data --out splits.csv
# The first run creates .venv/ and installs requirements.txt (the runtime; `test` also requirements-dev.txt, the
# test tools); it reinstalls when a requirements file changes.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"

VENV="$ROOT/.venv"
PY="$VENV/bin/python"

usage() {
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
}

ensure_venv() {
    # $1: the requirements file to install (requirements.txt for the app, requirements-dev.txt for the tests)
    local file="${1:-requirements.txt}" stamp
    stamp="$VENV/.$(basename "$file" .txt).sha256"
    if [ ! -x "$PY" ]; then
        echo "[run.sh] creating virtual environment in .venv/" >&2
        python3 -m venv "$VENV" || {
            echo "[run.sh] 'python3 -m venv' failed; install python3-venv (Debian: apt-get install python3-venv)" >&2
            exit 1
        }
    fi
    local want have=""
    want="$(cat "$file" requirements.txt | sha256sum | cut -d' ' -f1)"
    [ -f "$stamp" ] && have="$(cat "$stamp")"
    if [ "$want" != "$have" ]; then
        echo "[run.sh] installing $file into .venv/ (torch: the CPU build, see requirements.txt)" >&2
        "$PY" -m pip install -r "$file"
        bash "$ROOT/deploy/guard_torchvision.sh" "$PY"
        echo "$want" > "$stamp"
    fi
}

ensure_chromium() {
    # The browser test drives the dashboard with Debian's chromium; install it when possible, never fail here.
    [ -x /usr/bin/chromium ] && return 0
    command -v apt-get >/dev/null 2>&1 || { echo "[run.sh] no /usr/bin/chromium and no apt-get; browser test may fail" >&2; return 0; }
    local sudo=""
    if [ "$(id -u)" != "0" ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
            echo "[run.sh] no /usr/bin/chromium and no root to install it; browser test may fail" >&2
            return 0
        fi
    fi
    echo "[run.sh] installing chromium with apt-get" >&2
    { $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium \
        || { $sudo apt-get update && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }; } \
        >&2 || echo "[run.sh] could not install chromium; browser test may fail" >&2
    return 0
}

ensure_orthanc() {
    # The PACS tests and `run.sh pacs` run Debian's Orthanc with its DICOMweb plugin (and dicom3tools' dciodvfy).
    [ -x /usr/sbin/Orthanc ] && [ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] && command -v dciodvfy >/dev/null 2>&1 && return 0
    local sudo=""
    [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null && sudo="sudo -n"
    echo "[run.sh] installing orthanc, orthanc-dicomweb and dicom3tools with apt-get" >&2
    { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc \
        orthanc-dicomweb dicom3tools; } >&2 || echo "[run.sh] could not install Orthanc; the PACS tests will fail" >&2
    return 0
}

ensure_postgresql() {
    # tests/test_audit.py starts a throwaway server from Debian's postgresql; install it when possible, never fail here.
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && return 0
    command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ] || {
        echo "[run.sh] no PostgreSQL and no root apt-get to install it; the PostgreSQL audit tests will fail" >&2; return 0; }
    echo "[run.sh] installing postgresql with apt-get" >&2
    { env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql \
        || { apt-get update && env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql; }; } \
        >&2 || echo "[run.sh] could not install postgresql; the PostgreSQL audit tests will fail" >&2
    return 0
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
    ""|-h|--help|help)
        usage
        ;;
    app)
        ensure_venv
        exec "$PY" -m ui.serve --server.port "${PORT:-8501}" "$@"
        ;;
    pacs)
        ensure_venv
        ensure_orthanc
        export DATA_DIR="${DATA_DIR:-$ROOT/../shared/data}"
        exec "$PY" -m core.io.demo_pacs "$@"
        ;;
    batch)
        ensure_venv
        exec "$PY" -m core.batch.batch_engine "$@"
        ;;
    image)
        # Builds only: `docker compose up -d` starts them. Each image is one target of the Dockerfile, named as in
        # compose.yaml.
        bash deploy/start_docker.sh
        base="${LESIONLENS_BASE:-debian:bookworm-slim}"
        if [ "${1:-}" = "--offline" ]; then
            base="${LESIONLENS_BASE:-lesionlens-base:bookworm}"
            LESIONLENS_BASE="$base" bash deploy/bootstrap_base.sh
            bash deploy/build_wheelhouse.sh
        fi
        for target in audit-db pacs app; do
            name="lesionlens-$target:latest"
            [ "$target" = app ] && name="lesionlens:latest"
            echo "[run.sh] docker build --target $target -t $name (BASE=$base)" >&2
            docker build --quiet --build-arg BASE="$base" --target "$target" -t "$name" . >/dev/null
        done
        docker images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^lesionlens' >&2
        ;;
    test)
        ensure_venv requirements-dev.txt
        ensure_chromium
        ensure_postgresql
        ensure_orthanc
        export DATA_DIR="${DATA_DIR:-$ROOT/../shared/data}"
        exec "$PY" -m pytest -q "$@"
        ;;
    *)
        ensure_venv
        exec "$PY" -m "$cmd" "$@"
        ;;
esac
