#!/bin/sh
# Entrypoint of autopay-local/redis (see redis.Dockerfile): as the public image does, serve
# other containers without a config file (protected mode off; the compose network is the
# boundary), own /data, and run as the redis user. Later arguments override the defaults.
set -eu

if [ "${1#-}" != "$1" ]; then
    set -- redis-server "$@"
fi

case " $* " in
    *" --version "* | *" -v "* | *" --help "* | *" -h "*) exec "$@" ;;
esac

if [ "$1" = redis-server ]; then
    shift
    set -- redis-server --protected-mode no --dir /data "$@"
    if [ "$(id -u)" = 0 ]; then
        chown redis:redis /data
        exec setpriv --reuid=redis --regid=redis --init-groups "$@"
    fi
fi

exec "$@"
