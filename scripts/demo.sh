#!/usr/bin/env bash
# `make demo`: one origin and three mirrors on 127.0.0.1 with weights 5, 5 and 10.
# Each mirror's node name is its port, so the link template's URLs are real:
#   http://127.0.0.1:{8091=5,8092=5,8093=10}/_images/$hash/$id.$ext
# Ctrl-C stops everything.
set -euo pipefail
bin=${1:-target/release/shimmer}
cd "$(dirname "$0")/.."
work=target/demo
mkdir -p "$work"
ilink='http://127.0.0.1:{8091=5,8092=5,8093=10}/_images/$hash/$id.$ext'
tlink='http://127.0.0.1:{8091=5,8092=5,8093=10}/_thumbs/$hash/thumb.$ext'

pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null || true' EXIT INT TERM
"$bin" origin --dir conf/sample-data --listen 127.0.0.1:8081 2>"$work/origin.log" &
pids+=($!)
for port in 8091 8092 8093; do
  cat > "$work/mirror-$port.yaml" <<YAML
pid_file: $PWD/$work/mirror-$port.pid
upgrade_sock: $PWD/$work/mirror-$port.sock
shimmer:
  node: "$port"
  listen: ["127.0.0.1:$port"]
  static:
    image_ilink: "$ilink"
    image_tlink: "$tlink"
  origin:
    servers: ["http://127.0.0.1:8081"]
YAML
  "$bin" -t -c "$work/mirror-$port.yaml" >/dev/null
  "$bin" -c "$work/mirror-$port.yaml" 2>"$work/mirror-$port.log" &
  pids+=($!)
done
sleep 1

echo
echo "shimmer demo: origin 127.0.0.1:8081, mirrors 8091 (weight 5), 8092 (5), 8093 (10)"
echo "template: $ilink"
echo
for f in $(find conf/sample-data/images -type f ! -name '*.md' | sort); do
  hash=$(basename "$f")
  read -r _ primary secondary _ < <("$bin" owners --template "$ilink" "$hash")
  echo "image $hash: primary $primary, secondary $secondary"
  echo "  served by its owner:   curl -sI http://127.0.0.1:$primary/_images/$hash/x.png"
  for port in 8091 8092 8093; do
    if [ "$port" != "$primary" ] && [ "$port" != "$secondary" ]; then
      echo "  redirected by $port:   curl -sI http://127.0.0.1:$port/_images/$hash/x.png"
    fi
  done
done
echo
echo "logs in $work/; Ctrl-C stops the demo"
wait
