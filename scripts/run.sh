#!/usr/bin/env bash
# `make run`: the built-in origin on conf/sample-data (127.0.0.1:8081) and one mirror,
# node 8080, on the embedded default config (127.0.0.1:8080, admin 127.0.0.1:9090),
# which reads the SQLite Shimmie database target/run/shimmie.db. The database is
# created on the first run only (delete target/run to start over). Ctrl-C stops both.
set -euo pipefail
bin=${1:-target/release/shimmer}
bin=$(realpath "$bin")
cd "$(dirname "$0")/.."
db=target/run/shimmie.db
mkdir -p target/run

if [ ! -f "$db" ]; then
  # Built in a temporary file and renamed, so an interrupted first run leaves nothing
  # half made that the next run would take for a database.
  rm -f "$db.new"
  sqlite3 "$db.new" < conf/sample-data/shimmie.sql
  sqlite3 "$db.new" <<'SQL'
INSERT INTO config (name, value) VALUES
  ('image_ilink', 'http://127.0.0.1:{8080=1,8090=0,8091=0}/_images/$hash/$id%20-%20$tags.$ext'),
  ('image_tlink', 'http://127.0.0.1:{8080=1,8090=0,8091=0}/_thumbs/$hash/thumb.$ext');
SQL
  mv "$db.new" "$db"
  echo "created $db: $(sqlite3 "$db" 'SELECT COUNT(*) FROM images') sample posts in Shimmie's schema"
fi

"$bin" origin --dir conf/sample-data --listen 127.0.0.1:8081 2>target/run/origin.log &
origin=$!
trap 'kill $origin 2>/dev/null; wait $origin 2>/dev/null || true' EXIT INT TERM

# The first PNG post, with the file name Shimmie's template gives it.
IFS='|' read -r id hash ext tags < <(sqlite3 "$db" \
  "SELECT i.id, i.hash, i.ext, (SELECT group_concat(t.tag, '%20') FROM image_tags it
     JOIN tags t ON t.id = it.tag_id WHERE it.image_id = i.id)
   FROM images i WHERE i.ext = 'png' ORDER BY i.id LIMIT 1")
url="http://127.0.0.1:8080/_images/$hash/$id%20-%20$tags.$ext"
cat <<MSG

  shimmer is starting: node 8080 on http://127.0.0.1:8080 (admin: 127.0.0.1:9090),
  origin on 127.0.0.1:8081, weights and bans from $db (polled every 500 ms).

  The first request is a MISS fetched from the origin, the second a HIT from memory:

    curl -sI $url
    curl -sI $url

  Change a weight as Shimmie's board config would: node 8080 drops to weight 0, so
  within a second the mirror answers 307 to node 8090, the image's new owner:

    sqlite3 $db "UPDATE config SET value = replace(value, '{8080=1,8090=0', '{8080=0,8090=1') WHERE name = 'image_ilink'"

  Ban the post as Shimmie's image_hash_ban extension does: within a second, 404:

    sqlite3 $db "INSERT INTO image_bans (hash, reason, date) VALUES ('$hash', 'demo', CURRENT_TIMESTAMP)"

  The fleet at a glance:  $bin fleet --watch 1 127.0.0.1:9090
  Start over:             rm -r target/run

MSG
"$bin"
