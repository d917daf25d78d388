#!/usr/bin/env bash
# A chat completion with curl against the OpenAI-compatible front.
#
#   bash examples/curl.sh [BASE_URL]
#
# BASE_URL is the front's address (default $EDGE_MOE_HTTP, else http://127.0.0.1:8000/v1);
# the API key is $EDGE_MOE_API_KEY (any string when the front runs without --api-keys).
# The energy budget goes in a header (x-edge-moe-energy-j) or in the body's "edge_moe" object;
# the answer's experts and joules come back in its "edge_moe" object and in headers.
set -euo pipefail
BASE="${1:-${EDGE_MOE_HTTP:-http://127.0.0.1:8000/v1}}"
KEY="${EDGE_MOE_API_KEY:-sk-none}"

curl -sS --fail-with-body "$BASE/chat/completions" \
  -H 'content-type: application/json' \
  -H "authorization: Bearer $KEY" \
  -H 'x-edge-moe-energy-j: 1000000' \
  -d '{"model": "edge-moe", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8}'
echo
