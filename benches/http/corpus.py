"""The benchmark corpus: a Shimmie data directory the built-in origin serves.

Deterministic (seeded), so every run and every machine measures the same bytes, and
generated once: a directory whose manifest matches the parameters is reused.

Layout as Shimmie writes it: images/<ab>/<md5> with the md5 of the file's content.
"""

import hashlib
import json
import os
import random
import shutil

MANIFEST = "bench-manifest.json"
# Bump when the generated content changes, so old corpora are regenerated.
FORMAT = 2

KIB = 1024
MIB = 1024 * KIB

# JPEG and MP4 magic, so the origin's sniffer sends the usual Content-Types.
JPEG_MAGIC = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"
MP4_MAGIC = b"\x00\x00\x00\x18ftypmp42"


def _write(root, rng, size, magic, ext):
    body = magic + rng.randbytes(size - len(magic))
    digest = hashlib.md5(body).hexdigest()
    folder = os.path.join(root, "images", digest[:2])
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, digest), "wb") as f:
        f.write(body)
    return {"hash": digest, "size": size, "ext": ext}


def ensure(root, images=10_000, seed=7, log=print):
    """Return the manifest of the corpus at `root`, generating it when missing."""
    params = {"format": FORMAT, "images": images, "seed": seed}
    path = os.path.join(root, MANIFEST)
    try:
        with open(path) as f:
            manifest = json.load(f)
        if manifest.get("params") == params:
            return manifest
    except (OSError, ValueError):
        pass
    log(f"generating the corpus in {root} ({images} images, seed {seed}) ...")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    rng = random.Random(seed)
    # Image 0 is the hot 20 KB image; the rest are uniform over 2-200 KB.
    sizes = [20 * KIB] + [rng.randint(2 * KIB, 200 * KIB) for _ in range(images - 1)]
    entries = []
    for i, size in enumerate(sizes):
        entry = _write(root, rng, size, JPEG_MAGIC, "jpg")
        entry["id"] = i + 1
        entries.append(entry)
    hot_large = _write(root, rng, 5 * MIB, JPEG_MAGIC, "jpg")
    cold = _write(root, rng, 1 * MIB, JPEG_MAGIC, "jpg")
    videos = [_write(root, rng, mib * MIB, MP4_MAGIC, "mp4") for mib in (20, 50, 100)]
    manifest = {
        "params": params,
        "images": entries,
        "image_bytes": sum(sizes),
        "hot_image": entries[0],
        "hot_large": hot_large,
        "cold": cold,
        "videos": videos,
    }
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(manifest, f)
    os.replace(tmp, path)
    return manifest


def url_path(entry, ident=None):
    """The path a visitor asks a mirror for: /_images/<hash>/<id>.<ext>."""
    return f"/_images/{entry['hash']}/{ident or entry.get('id', 'x')}.{entry['ext']}"
