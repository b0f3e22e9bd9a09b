# LesionLens for a team: three images from one Debian base (see docs/deploy.md).
#   app       the dashboard on CPU torch, non-root, weights baked in and sha256-checked, health-checked
#   audit-db  PostgreSQL for the audit trail (Debian's postgresql)
#   pacs      a demo Orthanc PACS with DICOMweb (Debian's orthanc, orthanc-dicomweb)
# With internet: docker compose up -d --build. Without: bash run.sh image --offline (a base bootstrapped from the
# Debian mirror by deploy/bootstrap_base.sh, the Python wheels from wheelhouse/ built by deploy/build_wheelhouse.sh).
# Only the classic builder's features are used (no RUN --mount): Debian's docker.io has no BuildKit plugin.
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS base
# The bootstrapped base has every package already: then nothing is downloaded here.
COPY deploy/base-packages.txt /tmp/base-packages.txt
RUN packages="$(grep -vE '^\s*(#|$)' /tmp/base-packages.txt)" \
    && installed="$(dpkg-query -W -f '${db:Status-Status}\n' $packages 2>/dev/null | grep -c '^installed$' || true)" \
    && if [ "$installed" != "$(echo $packages | wc -w)" ]; then \
        apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $packages \
        && rm -rf /var/lib/apt/lists/*; fi \
    && rm /tmp/base-packages.txt
ENV LANG=C.UTF-8

FROM base AS audit-db
COPY deploy/audit_db.sh /usr/local/bin/lesionlens-audit-db
# /var/run/postgresql (the server's socket and lock) is made by the init system on a Debian host, by nothing here.
RUN mkdir -p /var/lib/lesionlens-db /var/run/postgresql && chown postgres:postgres /var/lib/lesionlens-db /var/run/postgresql
USER postgres
VOLUME /var/lib/lesionlens-db
EXPOSE 5432
# SIGINT is PostgreSQL's fast shutdown: SIGTERM (smart) would wait for the app's pooled connections to close.
STOPSIGNAL SIGINT
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s --retries=5 \
    CMD ["sh", "-c", "pg_isready -q -h 127.0.0.1 -U \"$POSTGRES_USER\" -d \"$POSTGRES_DB\""]
ENTRYPOINT ["lesionlens-audit-db"]

FROM base AS pacs
COPY deploy/orthanc.json /etc/lesionlens/orthanc.json
# Orthanc does not create its storage folder; the package's postinst makes /var/lib/orthanc only.
RUN mkdir -p /var/lib/orthanc/db && chown -R orthanc:orthanc /var/lib/orthanc
USER orthanc
VOLUME /var/lib/orthanc/db
EXPOSE 8042
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8042/system', timeout=4)"]
ENTRYPOINT ["Orthanc", "/etc/lesionlens/orthanc.json"]

# The Python packages go into a virtual environment in a stage of their own: the wheelhouse copied in here (about
# 700 MB) stays out of the app image, which copies only the installed environment. --no-compile: bytecode for every
# module of every wheel would add about 400 MB; deploy/build_check.py writes it for what the app imports.
FROM base AS app-build
COPY requirements.txt /tmp/requirements.txt
COPY wheelhouse/ /tmp/wheelhouse/
RUN python3 -m venv /opt/venv \
    && if [ -f /tmp/wheelhouse/requirements.txt ]; then \
        /opt/venv/bin/pip install --no-cache-dir --no-compile --no-index --find-links /tmp/wheelhouse \
            -r /tmp/wheelhouse/requirements.txt; \
    else \
        /opt/venv/bin/pip install --no-cache-dir --no-compile --extra-index-url https://download.pytorch.org/whl/cpu \
            -r /tmp/requirements.txt; \
    fi
# PyPI's torchvision is a CUDA build whose import fails on CPU torch: the script guards it (see its header).
COPY deploy/guard_torchvision.sh /tmp/guard_torchvision.sh
RUN bash /tmp/guard_torchvision.sh /opt/venv/bin/python

FROM base AS app
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    LESIONLENS_AUDIT_URL=sqlite:////var/lib/lesionlens/audit.sqlite
COPY --from=app-build /opt/venv /opt/venv
WORKDIR /app
# The app and its shipped model (weights/ with model_card.json).
COPY streamlit_app.py ./
COPY core/ core/
COPY ui/ ui/
COPY app_pages/ app_pages/
COPY weights/ weights/
COPY deploy/ deploy/
COPY deploy/config.toml .streamlit/config.toml
# The weights against the model card's sha256 and every app module imported (writing their bytecode: hence
# PYTHONDONTWRITEBYTECODE emptied for this step).
RUN PYTHONDONTWRITEBYTECODE= python -m deploy.build_check

RUN useradd --system --uid 10001 --create-home lesionlens \
    && mkdir -p /var/lib/lesionlens && chown lesionlens /var/lib/lesionlens
USER lesionlens
VOLUME /var/lib/lesionlens

EXPOSE 8501
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; assert u.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4).read() == b'ok'"]
ENTRYPOINT ["deploy/entrypoint.sh"]
