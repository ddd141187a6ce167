# A stand-in for the public redis:7 image, made from Debian's own packages (Redis 7.0 of
# Debian 12), for machines that cannot pull public images (bin/test-deploy tags it
# autopay-local/redis:7). Same interface as the public image where compose.yaml uses it:
# `redis-server --option value ...` as the command, data in /data, redis-cli on PATH, reachable
# from other containers without a config file.
ARG DEBIAN_IMAGE=autopay-local/debian:bookworm
FROM ${DEBIAN_IMAGE}

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
    && apt-get clean && rm -rf /var/lib/apt/lists/* \
    && install -d -o redis -g redis -m 0750 /data

COPY redis-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
VOLUME /data
WORKDIR /data
EXPOSE 6379
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["redis-server"]
