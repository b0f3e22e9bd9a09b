# LesionLens for a team: the dashboard on CPU torch, non-root, weights baked in, health-checked.
#   docker build -t lesionlens .          then: docker compose up -d   (see docs/deploy.md)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LESIONLENS_AUDIT_URL=sqlite:////var/lib/lesionlens/audit.sqlite

WORKDIR /app
# CPU-only torch wheels first (the default PyPI wheels bundle CUDA: ~2 GB more), then the rest of the runtime.
COPY requirements.txt .
RUN TORCH="$(grep -E '^torch==' requirements.txt | cut -d' ' -f1)" \
    && VISION="$(grep -E '^torchvision==' requirements.txt | cut -d' ' -f1)" \
    && pip install --index-url https://download.pytorch.org/whl/cpu "$TORCH" "$VISION" \
    && pip install -r requirements.txt

# The app and its shipped model (weights/ with model_card.json: the sha256s are checked at load).
COPY streamlit_app.py ./
COPY core/ core/
COPY ui/ ui/
COPY app_pages/ app_pages/
COPY weights/ weights/
COPY deploy/ deploy/
COPY deploy/config.toml .streamlit/config.toml

RUN useradd --system --uid 10001 --create-home lesionlens \
    && mkdir -p /var/lib/lesionlens && chown lesionlens /var/lib/lesionlens
USER lesionlens
VOLUME /var/lib/lesionlens

EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; assert u.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4).read() == b'ok'"]
ENTRYPOINT ["deploy/entrypoint.sh"]
