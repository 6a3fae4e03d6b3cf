FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# pip also looks here: CPU-only torch wheels keep the image small. For CUDA, build with
# --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cu126 (and give the worker a GPU).
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu

WORKDIR /app
COPY . .
RUN pip install --no-cache-dir .

# Not root; /data is where compose mounts AESQ_DATA_DIR, created here so the volume is ours.
RUN useradd --create-home --uid 1000 aesq && mkdir /data && chown aesq:aesq /data
USER aesq

ENTRYPOINT ["aesq"]
CMD ["--help"]
