# ClipSAM Label Studio ML backend and its retraining worker: one base, two targets.
#   CPU (default):  docker build -t clipsam-backend .                      (target: backend)
#                   docker build --target worker -t clipsam-worker .
#   CUDA:           docker build --build-arg BASE_IMAGE=pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime \
#                     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t clipsam-backend:cuda .
#                   (add --target worker for the worker: GPUs pay off most there)
# Run: docker run -p 9090:9090 -v clipsam-data:/data -e LABEL_STUDIO_URL=... -e LABEL_STUDIO_API_KEY=... clipsam-backend
# The whole stack (Label Studio, Redis, backend, worker): docker compose up (docker-compose.yml).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE} AS base

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOST=0.0.0.0 \
    PORT=9090 \
    WORKERS=1 \
    THREADS=4 \
    LOG_LEVEL=INFO \
    MODEL_DIR=/data/models \
    CLIPSAM_HOME=/data/weights

WORKDIR /app
COPY requirements.txt .
# torch from the CPU (or CUDA) wheel index first, so the rest does not pull a different build.
RUN pip install --extra-index-url "${TORCH_INDEX}" -r requirements.txt

# The package itself (console scripts included); its dependencies are the pinned ones above.
# .dockerignore lets in only what the package is built from.
COPY . /tmp/clipsam-src
RUN pip install --no-deps /tmp/clipsam-src && rm -rf /tmp/clipsam-src

# The folders volumes are mounted on exist here, owned by the service user: Docker gives a new
# named volume the ownership of the folder it is mounted on (root for a folder it had to create).
RUN useradd --create-home --uid 1000 clipsam \
    && mkdir -p /data/models /data/model_dir /data/weights \
    && chown -R clipsam /data
USER clipsam
VOLUME ["/data"]

# Retraining jobs from the clipsam-retrain queue (REDIS_URL); CUDA when the image and host have it.
FROM base AS worker
CMD ["python", "-m", "training.worker"]

# The ML backend Label Studio connects to; the last stage, so a plain `docker build` builds it.
FROM base AS backend
EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PORT\"]}/health', timeout=4)"
CMD ["python", "-m", "backend"]
