# tierwatch agent image. Build from the repository root: docker build -t tierwatch .
FROM python:3.11-slim

# No .pyc writes at run time (the chart mounts the root filesystem read-only), logs straight out.
# TIERWATCH_LISTEN: in a container the agent must listen beyond loopback to be scraped; the
# --listen option (the Helm chart passes one) still takes precedence.
# MALLOC_ARENA_MAX: glibc gives each thread that allocates an arena of its own, up to 8 per CPU, and
# with the agent's thread per job RSS grew 4.7 MiB over a 10-minute soak; with two arenas it stays
# within 2 MiB (benchmarks/soak.py). The Helm chart sets it too, for images built otherwise.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MALLOC_ARENA_MAX=2 \
    TIERWATCH_LISTEN=0.0.0.0:10090

# .dockerignore lets only the package sources and its metadata through.
COPY . /src
RUN pip install --no-cache-dir "/src[kubernetes]" \
    && rm -rf /src

# nobody:nogroup, the user the Helm chart runs the agent as.
USER 65534:65534
EXPOSE 10090
ENTRYPOINT ["tierwatch"]
CMD ["run"]
