#!/usr/bin/env python3
"""Render a gallery page like Shimmie's post list from a Shimmie database.

    scripts/gallery.py SHIMMIE.db SHIMMER_BIN OUT.html

Every link comes from the board's own link templates (config rows image_ilink and
image_tlink), with the node Shimmie would pick: `shimmer owners` runs Shimmie's
placement. A small script on the page counts the images the browser loaded and
writes the result into the page (#load-report), so a person and a headless browser
read the same thing. Standard library only.
"""
import html
import sqlite3
import subprocess
import sys
import urllib.parse


def owners_links(shimmer, template, hashes):
    """hash -> link with the node substituted (Shimmie's placement, via shimmer)."""
    out = subprocess.run([shimmer, "owners", "--template", template, "-"],
                         input="".join(h + "\n" for h in hashes), capture_output=True,
                         text=True, check=True).stdout
    links = {}
    for line in out.splitlines():
        h, _primary, _secondary, link = line.split(" ", 3)
        links[h] = link
    return links


def fill(link, post):
    # Shimmie's template variables; $tags is the tag list rawurlencoded.
    return (link.replace("$hash", post["hash"]).replace("$id", str(post["id"]))
            .replace("$tags", urllib.parse.quote(post["tags"], safe=""))
            .replace("$ext", post["ext"]))


def main():
    db_path, shimmer, out_path = sys.argv[1:4]
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    config = dict(db.execute("SELECT name, value FROM config"))
    posts = [dict(id=i, hash=h, ext=e, width=w, height=ht, tags=t or "")
             for i, h, e, w, ht, t in db.execute(
                 "SELECT i.id, i.hash, i.ext, i.width, i.height, (SELECT group_concat(tag, ' ')"
                 " FROM (SELECT t.tag FROM image_tags it JOIN tags t ON t.id = it.tag_id"
                 " WHERE it.image_id = i.id ORDER BY t.tag)) FROM images i ORDER BY i.id DESC")]
    hashes = [p["hash"] for p in posts]
    ilinks = owners_links(shimmer, config["image_ilink"], hashes)
    tlinks = owners_links(shimmer, config["image_tlink"], hashes)
    thumbs, full = [], []
    for p in posts:
        ilink, tlink = fill(ilinks[p["hash"]], p), fill(tlinks[p["hash"]], p)
        title = html.escape(f"{p['tags']} // {p['width']}x{p['height']} // {p['ext'].upper()}")
        thumbs.append(
            f'<a href="{html.escape(ilink)}" class="thumb shm-thumb" data-post-id="{p["id"]}" '
            f'data-tags="{html.escape(p["tags"])}"><img id="thumb_{p["id"]}" class="lazy" '
            f'title="{title}" alt="{title}" src="{html.escape(tlink)}"></a>')
        full.append(f'<figure><img id="main_image_{p["id"]}" class="shm-main-image" '
                    f'alt="post {p["id"]}" src="{html.escape(ilink)}">'
                    f'<figcaption>#{p["id"]} {html.escape(p["tags"])}</figcaption></figure>')
    page = PAGE.format(count=len(posts), thumbs="\n".join(thumbs), full="\n".join(full),
                       ilink=html.escape(config["image_ilink"]),
                       tlink=html.escape(config["image_tlink"]))
    with open(out_path, "w") as f:
        f.write(page)


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Posts - shimmer demo</title>
<style>
body {{ font-family: sans-serif; margin: 1em; background: #f5f5f5; }}
h1 {{ font-size: 1.3em; margin: 0 0 .3em; }}
.shm-image-list {{ display: flex; flex-wrap: wrap; gap: 8px; }}
.shm-thumb {{ display: flex; width: 64px; height: 64px; align-items: center; justify-content: center;
  background: #fff; border: 1px solid #ccc; }}
.full {{ display: flex; flex-wrap: wrap; gap: 10px; }}
figure {{ margin: 0; text-align: center; font-size: 10px; color: #555; }}
#load-report {{ padding: .4em .6em; margin: .5em 0; background: #fff; border-left: 4px solid #999; }}
#load-report.ok {{ border-color: #2a2; }} #load-report.bad {{ border-color: #c22; }}
code {{ font-size: 11px; }}
</style></head><body>
<h1>Posts ({count}) &mdash; every image below comes through the shimmer fleet</h1>
<div><code>image_tlink = {tlink}</code><br><code>image_ilink = {ilink}</code></div>
<div id="load-report">loading&hellip;</div>
<section id="image-list" class="shm-image-list">
{thumbs}
</section>
<h1>Full size</h1>
<section class="full">
{full}
</section>
<script>
// After every image has settled, report how many the browser could decode.
window.addEventListener("load", function () {{
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) {{ return !(i.complete && i.naturalWidth > 0); }});
  var r = document.getElementById("load-report");
  r.className = broken.length ? "bad" : "ok";
  r.dataset.total = imgs.length;
  r.dataset.loaded = imgs.length - broken.length;
  r.dataset.broken = broken.map(function (i) {{ return i.src; }}).join(" ");
  r.textContent = (imgs.length - broken.length) + " of " + imgs.length + " images loaded" +
    (broken.length ? " (broken: " + broken.map(function (i) {{ return i.id; }}).join(", ") + ")" : "");
}});
</script>
</body></html>
"""

if __name__ == "__main__":
    main()
