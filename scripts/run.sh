#!/usr/bin/env bash
# `make run`: the built-in origin on conf/sample-data (127.0.0.1:8081) and one mirror
# on the embedded default config (127.0.0.1:8080). Ctrl-C stops both.
set -euo pipefail
bin=${1:-target/release/shimmer}
cd "$(dirname "$0")/.."

"$bin" origin --dir conf/sample-data --listen 127.0.0.1:8081 &
origin=$!
trap 'kill $origin 2>/dev/null; wait $origin 2>/dev/null || true' EXIT INT TERM

hash=$(find conf/sample-data/images -type f ! -name '*.md' | head -n 1 | xargs basename)
cat <<MSG

  shimmer is starting: node a on http://127.0.0.1:8080, origin on 127.0.0.1:8081.
  Try (the first is a MISS from the origin, the second a HIT from memory):

    curl -sI http://127.0.0.1:8080/_images/$hash/sample.png
    curl -s  http://127.0.0.1:8080/_images/$hash/sample.png | sha256sum

MSG
"$bin"
