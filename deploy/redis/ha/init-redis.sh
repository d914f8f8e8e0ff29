#!/bin/sh
# Render redis.conf for this pod (the redis StatefulSet's init container; the tests run it too).
# Writes $OUT (mode 0600): the template, then the secrets, then `replicaof` unless this pod is the
# primary. The primary is the one the Sentinels report; when no Sentinel answers (first start of
# the whole set), it is $FIRST_HOST (redis-0). Secrets come from the environment only and are
# never printed.
set -eu
: "${REDIS_PASSWORD:?REDIS_PASSWORD is not set. Fix: mount the redis-auth Secret}"
: "${REDIS_CONFIG_COMMAND:?REDIS_CONFIG_COMMAND is not set. Fix: mount the redis-auth Secret}"
: "${REDIS_SLAVEOF_COMMAND:?REDIS_SLAVEOF_COMMAND is not set. Fix: mount the redis-auth Secret}"
TEMPLATE="${TEMPLATE:-/etc/redis-template/redis.conf}"
OUT="${OUT:-/run/redis/redis.conf}"
SERVICE="${SERVICE:-mymaster}"
SENTINEL_HOST="${SENTINEL_HOST:-redis-sentinel}"
SENTINEL_PORT="${SENTINEL_PORT:-26379}"
MY_HOST="${MY_HOST:-$(hostname).redis-headless}"
MY_PORT="${MY_PORT:-6379}"
FIRST_HOST="${FIRST_HOST:-redis-0.redis-headless}"
FIRST_PORT="${FIRST_PORT:-6379}"

primary=$(REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli --no-auth-warning -h "$SENTINEL_HOST" \
  -p "$SENTINEL_PORT" SENTINEL get-master-addr-by-name "$SERVICE" 2>/dev/null || true)
# shellcheck disable=SC2086
set -- $primary
if [ $# -eq 2 ]; then
  primary_host=$1 primary_port=$2
else
  primary_host=$FIRST_HOST primary_port=$FIRST_PORT
fi

umask 077
{
  cat "$TEMPLATE"
  echo
  echo "# rendered by init-redis.sh"
  echo "requirepass $REDIS_PASSWORD"
  echo "masterauth $REDIS_PASSWORD"
  echo "rename-command CONFIG $REDIS_CONFIG_COMMAND"
  echo "rename-command SLAVEOF $REDIS_SLAVEOF_COMMAND"
  echo "replica-announce-ip $MY_HOST"
  echo "replica-announce-port $MY_PORT"
  if [ "$primary_host" != "$MY_HOST" ] || [ "$primary_port" != "$MY_PORT" ]; then
    echo "replicaof $primary_host $primary_port"
  fi
} > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
if [ "$primary_host" = "$MY_HOST" ] && [ "$primary_port" = "$MY_PORT" ]; then
  echo "init-redis: $MY_HOST:$MY_PORT starts as the primary"
else
  echo "init-redis: $MY_HOST:$MY_PORT starts as a replica of $primary_host:$primary_port"
fi
