# tierwatch agent image. Build from the repository root: docker build -t tierwatch .
FROM python:3.11-slim

# No .pyc writes at run time (the chart mounts the root filesystem read-only), logs straight out.
# TIERWATCH_LISTEN: in a container the agent must listen beyond loopback to be scraped. Like every
# TIERWATCH_ variable it beats the config file, so `listen:` in a file has no effect in this image:
# set the address with --listen (the Helm chart passes one) or -e TIERWATCH_LISTEN=HOST:PORT.
# MALLOC_ARENA_MAX: glibc gives each thread that allocates an arena of its own, up to 8 per CPU, and
# with the agent's thread per job RSS grew 4.7 MiB over a 10-minute soak; with two arenas it stays
# within 2 MiB (benchmarks/soak.py). The Helm chart sets it too, for images built otherwise.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MALLOC_ARENA_MAX=2 \
    TIERWATCH_LISTEN=0.0.0.0:10090

# .dockerignore lets only the package sources and its metadata through.
# The python image ships no bytecode, and the agent may not write any at run time: compiled ahead here,
# with -OO as the agent runs, it saves the 3-4 MiB of RSS that compiling at every start leaves behind.
COPY . /src
RUN pip install --no-cache-dir "/src[kubernetes]" \
    && rm -rf /src \
    && python -OO -m compileall -q -j0 -x 'bad_coding|badsyntax|lib2to3/tests/data' $(python -c \
        'import sysconfig; print(sysconfig.get_path("stdlib"), sysconfig.get_path("purelib"))')

# PYTHONOPTIMIZE=2: no docstrings or asserts in memory, 1.7 MiB less RSS (set after pip, which runs
# without it). The Helm chart sets it too, for images built otherwise.
ENV PYTHONOPTIMIZE=2

# nobody:nogroup, the user the Helm chart runs the agent as.
USER 65534:65534
EXPOSE 10090
ENTRYPOINT ["tierwatch"]
CMD ["run"]
