#!/usr/bin/env bash
# Once per Elasticsearch cluster (and after changing a file beside this one): the ILM policy
# (30 days) and the index template of the data stream twinme-ops-logs. Idempotent (PUT).
#   ELASTICSEARCH_URL=https://logs.internal.twinme.ai:9200 ELASTICSEARCH_USER=elastic \
#   ELASTICSEARCH_PASSWORD=... deploy/logging/elasticsearch/setup.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
: "${ELASTICSEARCH_URL:?Fix: set ELASTICSEARCH_URL, e.g. https://logs.internal.twinme.ai:9200}"
put() {
  # the credentials reach curl on stdin (-K -), never on its command line (ps would show them)
  {
    if [ -n "${ELASTICSEARCH_USER:-}" ]; then
      printf 'user = "%s:%s"\n' "$ELASTICSEARCH_USER" "${ELASTICSEARCH_PASSWORD:-}"
    fi
  } | curl -K - --fail-with-body --silent --show-error -X PUT \
    -H 'Content-Type: application/json' --data-binary "@$2" "${ELASTICSEARCH_URL%/}/$1"
  echo
}
put _ilm/policy/twinme-ops-logs "$here/ilm-policy.json"
put _index_template/twinme-ops-logs "$here/index-template.json"
echo "ILM policy and index template twinme-ops-logs are in place"
