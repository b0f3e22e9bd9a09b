#!/bin/sh
# The container's entry point: check the deployment's secrets, then start the dashboard as `bash run.sh app` does
# (python -m ui.serve: the model starts loading before the server). The Streamlit settings are deploy/config.toml,
# copied to .streamlit/config.toml in the image. `entrypoint.sh check` checks the secrets and exits.
#   LESIONLENS_SECRETS  the secrets.toml ([auth], [lesionlens]); default /run/secrets/lesionlens.toml (a compose
#                       secret). Its name must end in .toml: Streamlit ignores any other (sign-in would be off).
#                       Missing: the container refuses to start, because sign-in would be off (anyone who reaches the
#                       port gets in as the one local user, an admin), unless LESIONLENS_SIGN_IN=off says so on purpose
#                       (only for a machine nobody else can reach).
set -eu
cd "$(dirname "$0")/.."
SECRETS="${LESIONLENS_SECRETS:-/run/secrets/lesionlens.toml}"
PYTHON="${PYTHON:-python}"
check_only=0
if [ "${1:-}" = "check" ]; then check_only=1; shift; fi

case "$SECRETS" in
    *.toml) ;;
    *) echo "[lesionlens] $SECRETS: Streamlit reads secrets only from a file named *.toml (sign-in would be off)" >&2
       exit 1 ;;
esac
if [ -f "$SECRETS" ]; then
    "$PYTHON" -m core.security.access "$SECRETS" || {
        echo "[lesionlens] fix $SECRETS (template: .streamlit/secrets.toml.example)" >&2; exit 1; }
    set -- --secrets.files "$SECRETS" "$@"
elif [ "${LESIONLENS_SIGN_IN:-}" = "off" ]; then
    echo "[lesionlens] no secrets file at $SECRETS: sign-in is OFF (anyone who reaches the port gets in)" >&2
else
    echo "[lesionlens] no secrets file at $SECRETS: refusing to start with sign-in off; mount the secrets" \
        "(template: .streamlit/secrets.toml.example) or set LESIONLENS_SIGN_IN=off for a machine nobody else can reach" >&2
    exit 1
fi
[ "$check_only" = 1 ] && exit 0
exec "$PYTHON" -m ui.serve "$@"
