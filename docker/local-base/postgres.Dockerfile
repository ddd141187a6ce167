# A stand-in for the public postgres image, made from Debian's own packages (PostgreSQL 15 of
# Debian 12), for machines that cannot pull public images (bin/test-deploy tags it
# autopay-local/postgres:15). Same interface as the public image where compose.yaml uses it:
# POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB, data in /var/lib/postgresql/data,
# pg_isready on PATH, password (scram-sha-256) logins over the network.
ARG DEBIAN_IMAGE=autopay-local/debian:bookworm
FROM ${DEBIAN_IMAGE}

ENV LANG=C.UTF-8 \
    PGDATA=/var/lib/postgresql/data \
    PATH=/usr/lib/postgresql/15/bin:$PATH

# No cluster from the package: the entrypoint makes one in PGDATA at the first start.
RUN mkdir -p /etc/postgresql-common/createcluster.d \
    && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/docker.conf \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
    && apt-get clean && rm -rf /var/lib/apt/lists/* \
    && install -d -o postgres -g postgres -m 0700 "$PGDATA" \
    && install -d -o postgres -g postgres -m 2775 /var/run/postgresql

COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
VOLUME /var/lib/postgresql/data
# Like the public image: SIGINT is PostgreSQL's "fast shutdown".
STOPSIGNAL SIGINT
EXPOSE 5432
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
