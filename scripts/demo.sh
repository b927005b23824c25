#!/usr/bin/env bash
# `make demo`: one origin, three mirrors and a gallery page on 127.0.0.1, all on one
# SQLite Shimmie database (target/demo/shimmie.db, made afresh on every start).
# Each mirror's node name is its port, so the link template's URLs are real:
#   http://127.0.0.1:{8091=5,8092=5,8093=10}/_images/$hash/$id%20-%20$tags.$ext
# The gallery page is rendered with those weights, like a page a visitor already has;
# then 8093 is drained in the database (weight 10 -> 0, as before maintenance), and the
# page's links to 8093 are answered 307 to the images' new owners.
# Ports and the directory can be moved with DEMO_ORIGIN, DEMO_MIRRORS, DEMO_ADMINS,
# DEMO_PAGE and DEMO_DIR (the tests do). DEMO_MODE=proxy (`make demo MODE=proxy`) runs
# the fleet in proxy mode: every mirror answers for every image, fetching from its
# owner, and a killed mirror's images keep answering from their secondaries.
# Ctrl-C stops everything.
set -euo pipefail
bin=$(realpath "${1:-target/release/shimmer}")
cd "$(dirname "$0")/.."
origin_port=${DEMO_ORIGIN:-8081}
read -r -a mirrors <<< "${DEMO_MIRRORS:-8091 8092 8093}"
read -r -a admins <<< "${DEMO_ADMINS:-9091 9092 9093}"
page_port=${DEMO_PAGE:-8090}
work=${DEMO_DIR:-target/demo}
mkdir -p "$work/www"
work=$(realpath "$work")
db=$work/shimmie.db
m1=${mirrors[0]} m2=${mirrors[1]} m3=${mirrors[2]}
mode=${DEMO_MODE:-redirect}
token=$work/fleet.token
braces="{$m1=5,$m2=5,$m3=10}"

rm -f "$db"
sqlite3 "$db" < conf/sample-data/shimmie.sql
sqlite3 "$db" "INSERT INTO config (name, value) VALUES
  ('image_ilink', 'http://127.0.0.1:$braces/_images/\$hash/\$id%20-%20\$tags.\$ext'),
  ('image_tlink', 'http://127.0.0.1:$braces/_thumbs/\$hash/thumb.\$ext')"

head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$token"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null || true' EXIT INT TERM
"$bin" origin --dir conf/sample-data --listen "127.0.0.1:$origin_port" 2>"$work/origin.log" &
pids+=($!)
for i in 0 1 2; do
  port=${mirrors[$i]}
  cat > "$work/mirror-$port.yaml" <<YAML
pid_file: $work/mirror-$port.pid
upgrade_sock: $work/mirror-$port.sock
shimmer:
  node: "$port"
  listen: ["127.0.0.1:$port"]
  source: sqlite://$db
  sync:
    interval: 500ms
  admin:
    listen: 127.0.0.1:${admins[$i]}
  origin:
    servers: ["http://127.0.0.1:$origin_port"]
  mode: $mode
  fleet_token_file: $token
  health: {interval: 500ms, timeout: 300ms, rise: 2, fall: 2}
YAML
  "$bin" -t -c "$work/mirror-$port.yaml" >/dev/null
  "$bin" -c "$work/mirror-$port.yaml" 2>"$work/mirror-$port.log" &
  pids+=($!)
done

# Waits until every mirror reports node $1's _images weight as $2 in its /status.
all_see_weight() {
  for a in "${admins[@]}"; do
    for _ in $(seq 100); do
      curl -sf "http://127.0.0.1:$a/status" | python3 -c '
import json, sys
nodes = json.load(sys.stdin)["silos"]["_images"]["nodes"]
sys.exit(0 if {"name": sys.argv[1], "weight": int(sys.argv[2])} in nodes else 1)' "$1" "$2" \
        2>/dev/null && continue 2
      sleep 0.1
    done
    echo "demo: the mirror with admin port $a did not report weight $2 for $1; see $work/" >&2
    exit 1
  done
}
all_see_weight "$m3" 10

# The page a visitor loaded before the drain.
python3 scripts/gallery.py "$db" "$bin" "$work/www/index.html"
drain="UPDATE config SET value = replace(value, '$m3=10}', '$m3=0}') WHERE name IN ('image_ilink', 'image_tlink')"
sqlite3 "$db" "$drain"
all_see_weight "$m3" 0

python3 -m http.server --bind 127.0.0.1 --directory "$work/www" "$page_port" \
  >"$work/page.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$page_port/" && break; sleep 0.1; done

fleet="$bin fleet"
for i in 0 1 2; do fleet="$fleet ${mirrors[$i]}=127.0.0.1:${admins[$i]}"; done
cat <<MSG

shimmer demo: origin 127.0.0.1:$origin_port, mirrors $m1, $m2 and $m3, database $db
template:  http://127.0.0.1:$braces/_images/\$hash/\$id%20-%20\$tags.\$ext
The gallery page was rendered with those weights, then $m3 was drained (weight 0):
  sqlite3 $db "$drain"
so the page's links to $m3 are answered 307 to the images' new owners, and still load.
Undo: sqlite3 $db "UPDATE config SET value = replace(value, '$m3=0}', '$m3=10}')"

mode:      $mode$( [ "$mode" = proxy ] && echo " (try: kill the mirror on port $m1, then reload the page: its images answer from their secondaries)")
gallery:   http://127.0.0.1:$page_port/
fleet:     $fleet --watch 1
re-render: python3 scripts/gallery.py $db $bin $work/www/index.html

logs in $work/; Ctrl-C stops the demo
MSG
wait
