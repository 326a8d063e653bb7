# storaged and hostctl in one image; the docker-compose lab runs two arrays and a host from it.
FROM debian:12-slim
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc \
        libiscsi-bin qemu-utils qemu-block-extra && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/storaged
COPY pyproject.toml README.md ./
COPY storaged ./storaged
COPY hostctl ./hostctl
RUN python3 -m venv .venv && .venv/bin/pip install --no-cache-dir ".[fast]"
ENV PATH=/opt/storaged/.venv/bin:$PATH
EXPOSE 3260 3300
CMD ["storaged", "--config", "/etc/storaged/array.yaml"]
