# A stand-in for the public python:3.11-slim image, made from Debian's own packages (python3.11
# of Debian 12). bin/test-deploy builds it on a machine that cannot pull public images and tags it
# autopay-local/python:3.11; `docker build --build-arg PYTHON_IMAGE=autopay-local/python:3.11`
# then builds the project's image on it. Like the public image: `python` on PATH, venv works.
ARG DEBIAN_IMAGE=autopay-local/debian:bookworm
FROM ${DEBIAN_IMAGE}

ENV LANG=C.UTF-8

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       python3.11 python3.11-venv ca-certificates \
    && ln -s /usr/bin/python3.11 /usr/local/bin/python \
    && ln -s /usr/bin/python3.11 /usr/local/bin/python3 \
    && apt-get clean && rm -rf /var/lib/apt/lists/*

CMD ["python3"]
