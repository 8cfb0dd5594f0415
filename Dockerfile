# Code Hero Gateway.
#   docker build -t code-hero .
#   docker run -p 8000:8000 -v code-hero-data:/data \
#     -e CODE_HERO_API_KEYS="$(openssl rand -hex 24)=you:admin" code-hero
# With no DATABASE_URL it keeps its checkpoints in /data/checkpoints.sqlite
# (mount a volume there); with DATABASE_URL=postgresql://... it uses PostgreSQL.
# It listens on 0.0.0.0, so it needs API keys or JWT settings (README,
# Security); CODE_HERO_ALLOW_ANONYMOUS=true serves it open (never on a network).
FROM python:3.11-slim

# PYTHONNODEBUGRANGES: code objects without their column tables (the `^^^`
# markers under a traceback's line; the line numbers stay), for the installed
# .pyc files too: about 0.8 MiB less resident for a server (README, "Where a
# run's time and the server's memory go").
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONNODEBUGRANGES=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 --user-group codehero \
    && mkdir /data \
    && chown codehero:codehero /data

WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . && rm -rf /src

USER codehero
WORKDIR /data
VOLUME ["/data"]
ENV SQLITE_PATH=/data/checkpoints.sqlite
EXPOSE 8000

# /healthz answers 200 while checkpoints are stored, 503 when not; urlopen
# raises on a 503 or no answer, and the command exits 1.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('CODE_HERO_PORT', '8000'), timeout=4)"]

# uvicorn stops gracefully on SIGTERM (docker stop): running runs get 10 s to
# finish, the rest are left resumable for the next start.
STOPSIGNAL SIGTERM
CMD ["code-hero", "serve", "--host", "0.0.0.0"]
