#!/usr/bin/env bash
# The main job until the full demo lands: the health of every backend, with the local services
# (or SATELLITES_* variables) and the noida-db Elasticsearch emulator when no ES is configured.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
export SATELLITES_POSTGRES_URL="${SATELLITES_POSTGRES_URL:-postgresql://postgres@127.0.0.1:5432/test}"
export SATELLITES_FAISS_INDEX_PATH="${SATELLITES_FAISS_INDEX_PATH:-./data/faiss}"
if [[ -z "${SATELLITES_ELASTICSEARCH_URL:-}" ]]; then
  port=$("$BIN/python" -c 'from satellites_es.testing import free_port; print(free_port())')
  data=$(mktemp -d)
  "$BIN/noida-db" start --only elasticsearch --elasticsearch-port "$port" --data-dir "$data" \
    >/dev/null 2>&1 &
  es_pid=$!
  trap 'kill $es_pid 2>/dev/null; wait $es_pid 2>/dev/null; rm -rf "$data"' EXIT
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port" >/dev/null && break; sleep 0.1; done
  export SATELLITES_ELASTICSEARCH_URL="http://127.0.0.1:$port"
  echo "Elasticsearch: noida-db emulator on $SATELLITES_ELASTICSEARCH_URL"
fi
"$BIN/satellites-es" health
