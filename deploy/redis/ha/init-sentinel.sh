#!/bin/sh
# Render sentinel.conf for this pod (the redis-sentinel StatefulSet's init container; the tests
# run it too). Writes $OUT (mode 0600, in a writable volume: Sentinel rewrites it): the template,
# then the primary to monitor and the secrets. The primary is the one the other Sentinels
# report; when none answers (first start), it is $FIRST_HOST (redis-0). Secrets come from the
# environment only and are never printed.
set -eu
: "${REDIS_PASSWORD:?REDIS_PASSWORD is not set. Fix: mount the redis-auth Secret}"
: "${REDIS_CONFIG_COMMAND:?REDIS_CONFIG_COMMAND is not set. Fix: mount the redis-auth Secret}"
: "${REDIS_SLAVEOF_COMMAND:?REDIS_SLAVEOF_COMMAND is not set. Fix: mount the redis-auth Secret}"
TEMPLATE="${TEMPLATE:-/etc/redis-template/sentinel.conf}"
OUT="${OUT:-/run/sentinel/sentinel.conf}"
SERVICE="${SERVICE:-mymaster}"
QUORUM="${QUORUM:-2}"
SENTINEL_HOST="${SENTINEL_HOST:-redis-sentinel}"
SENTINEL_PORT="${SENTINEL_PORT:-26379}"
MY_HOST="${MY_HOST:-$(hostname).redis-sentinel-headless}"
MY_PORT="${MY_PORT:-26379}"
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
  echo "# rendered by init-sentinel.sh"
  echo "sentinel announce-ip $MY_HOST"
  echo "sentinel announce-port $MY_PORT"
  echo "requirepass $REDIS_PASSWORD"
  echo "sentinel monitor $SERVICE $primary_host $primary_port $QUORUM"
  echo "sentinel auth-pass $SERVICE $REDIS_PASSWORD"
  echo "sentinel down-after-milliseconds $SERVICE ${DOWN_AFTER_MS:-5000}"
  echo "sentinel failover-timeout $SERVICE ${FAILOVER_TIMEOUT_MS:-60000}"
  echo "sentinel parallel-syncs $SERVICE 1"
  echo "sentinel rename-command $SERVICE CONFIG $REDIS_CONFIG_COMMAND"
  echo "sentinel rename-command $SERVICE SLAVEOF $REDIS_SLAVEOF_COMMAND"
} > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "init-sentinel: monitoring $SERVICE at $primary_host:$primary_port (quorum $QUORUM)"
