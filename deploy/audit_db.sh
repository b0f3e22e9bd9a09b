#!/bin/sh
# The audit-db image's entry point: Debian's PostgreSQL server, run as the postgres user. On the first start (an empty
# volume) it creates the cluster with the superuser POSTGRES_USER / POSTGRES_PASSWORD and the database POSTGRES_DB,
# as the official postgres image does with the same variables. Over TCP every login needs the password
# (scram-sha-256); the unix socket, reachable only inside this container, trusts its users (psql in `docker exec`).
set -eu
: "${POSTGRES_USER:?}" "${POSTGRES_PASSWORD:?}" "${POSTGRES_DB:?}"
BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
PGDATA=/var/lib/lesionlens-db/data

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    password_file="$(mktemp)"
    printf '%s' "$POSTGRES_PASSWORD" > "$password_file"
    "$BIN/initdb" -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$password_file" --auth-local=trust \
        --auth-host=scram-sha-256 >/dev/null
    rm -f "$password_file"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"   # the app's container, on the compose network
    "$BIN/pg_ctl" -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    "$BIN/createdb" -U "$POSTGRES_USER" "$POSTGRES_DB"
    "$BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
    echo "[audit-db] created database $POSTGRES_DB" >&2
fi
exec "$BIN/postgres" -D "$PGDATA" -c listen_addresses='*'
