#!/usr/bin/env python3
"""Regenerate the sample media in Shimmie's layout (images/<ab>/<md5>, thumbs/<ab>/<md5>).

Run from anywhere: python3 conf/sample-data/generate.py
Only the standard library is used, so the output is byte-for-byte reproducible and
the hashes listed in README.md stay valid.
"""
import hashlib
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def png(width, height, pixel):
    """RGB PNG; pixel(x, y) -> (r, g, b)."""
    raw = bytearray()
    for y in range(height):
        raw.append(0)  # filter: none
        for x in range(width):
            raw.extend(pixel(x, y))

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(bytes(raw), 9)) + chunk(b"IEND", b""))


def lzw(indices, min_code_size):
    """GIF-flavoured LZW: variable code width, LSB-first packing."""
    clear, end = 1 << min_code_size, (1 << min_code_size) + 1
    table = {(i,): i for i in range(clear)}
    next_code, width = end + 1, min_code_size + 1
    out, bits, nbits = bytearray(), 0, 0

    def emit(code):
        nonlocal bits, nbits
        bits |= code << nbits
        nbits += width
        while nbits >= 8:
            out.append(bits & 0xFF)
            bits >>= 8
            nbits -= 8

    emit(clear)
    prefix = (indices[0],)
    for i in indices[1:]:
        candidate = prefix + (i,)
        if candidate in table:
            prefix = candidate
            continue
        emit(table[prefix])
        if next_code < 4096:
            table[candidate] = next_code
            next_code += 1
            if next_code > (1 << width) and width < 12:
                width += 1
        else:
            emit(clear)
            table = {(j,): j for j in range(clear)}
            next_code, width = end + 1, min_code_size + 1
        prefix = (i,)
    emit(table[prefix])
    emit(end)
    if nbits:
        out.append(bits & 0xFF)
    return bytes(out)


def gif(width, height, palette, index):
    """GIF89a with a 4-colour palette; index(x, y) -> 0..3."""
    pixels = [index(x, y) for y in range(height) for x in range(width)]
    data = lzw(pixels, 2)
    blocks = b"".join(bytes([len(data[i:i + 255])]) + data[i:i + 255]
                      for i in range(0, len(data), 255))
    return (b"GIF89a" + struct.pack("<HHBBB", width, height, 0x81, 0, 0)
            + b"".join(bytes(c) for c in palette)
            + b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0)
            + b"\x02" + blocks + b"\x00;")


def svg(size):
    return ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
            "<!-- shimmer sample: a ring and a dot -->\n"
            f"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{size}\" height=\"{size}\" "
            "viewBox=\"0 0 100 100\">\n"
            "  <rect width=\"100\" height=\"100\" fill=\"#1d2b53\"/>\n"
            "  <circle cx=\"50\" cy=\"50\" r=\"38\" fill=\"none\" stroke=\"#ffa300\" "
            "stroke-width=\"8\"/>\n"
            "  <circle cx=\"50\" cy=\"50\" r=\"12\" fill=\"#ff77a8\"/>\n"
            "</svg>\n").encode()


def gradient(size, tint=128, axis="xy"):
    scale = 255 // (size - 1)
    if axis == "xy":
        return png(size, size, lambda x, y: (x * scale, y * scale, tint))
    return png(size, size, lambda x, y: (tint, x * scale, y * scale))


def bmp(width, height, pixel):
    """24-bit BMP (bottom-up rows padded to 4 bytes); pixel(x, y) -> (r, g, b)."""
    pad = (4 - (width * 3) % 4) % 4
    rows = bytearray()
    for y in range(height - 1, -1, -1):
        for x in range(width):
            r, g, b = pixel(x, y)
            rows.extend((b, g, r))
        rows.extend(b"\0" * pad)
    header = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(rows), 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(header) + len(rows), 0, 0, 54) + header + bytes(rows)


PALETTE = [(0x1d, 0x2b, 0x53), (0xff, 0xa3, 0x00), (0xff, 0x77, 0xa8), (0xff, 0xf1, 0xe8)]
PALETTES = [
    PALETTE,
    [(0x00, 0x87, 0x51), (0xff, 0xec, 0x27), (0x29, 0xad, 0xff), (0xff, 0xff, 0xff)],
    [(0x7e, 0x25, 0x53), (0xc2, 0xc3, 0xc7), (0xff, 0x00, 0x4d), (0x5f, 0x57, 0x4f)],
]


def checks(size, cell, palette=PALETTE):
    return gif(size, size, palette, lambda x, y: ((x // cell) + 2 * ((y // cell) % 2)) % 4)


def ring(size, bg="#1d2b53", ring_colour="#ffa300", dot="#ff77a8", comment="a ring and a dot"):
    return ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
            f"<!-- shimmer sample: {comment} -->\n"
            f"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{size}\" height=\"{size}\" "
            "viewBox=\"0 0 100 100\">\n"
            f"  <rect width=\"100\" height=\"100\" fill=\"{bg}\"/>\n"
            f"  <circle cx=\"50\" cy=\"50\" r=\"38\" fill=\"none\" stroke=\"{ring_colour}\" "
            "stroke-width=\"8\"/>\n"
            f"  <circle cx=\"50\" cy=\"50\" r=\"12\" fill=\"{dot}\"/>\n"
            "</svg>\n").encode()


def stripes(size, colours):
    band = max(1, size // len(colours))
    return bmp(size, size, lambda x, y: colours[min(len(colours) - 1, y // band)])


# Named colours for tags and file names.
COLOURS = [("red", (0xe0, 0x30, 0x30)), ("green", (0x30, 0xb0, 0x50)),
           ("blue", (0x30, 0x60, 0xe0)), ("yellow", (0xf0, 0xd0, 0x20)),
           ("purple", (0x90, 0x40, 0xc0)), ("orange", (0xf0, 0x80, 0x20)),
           ("teal", (0x20, 0xa0, 0xa0)), ("pink", (0xf0, 0x80, 0xb0)),
           ("grey", (0x80, 0x80, 0x80))]


def hexc(rgb):
    return "#%02x%02x%02x" % rgb


def samples():
    """(tags, ext, mime, width, height, image bytes, thumbnail bytes): the first three
    are the original samples (tests name their hashes), byte for byte."""
    out = [
        ("gradient", "png", "image/png", 64, 64, gradient(64), gradient(32)),
        ("checks", "gif", "image/gif", 48, 48, checks(48, 6), checks(24, 3)),
        ("ring", "svg", "image/svg+xml", 100, 100, svg(100), svg(50)),
    ]
    for i, (name, rgb) in enumerate(COLOURS[:8]):
        size = 48 + 8 * i
        out.append((f"gradient {name}", "png", "image/png", size, size,
                    gradient(size, rgb[2], "yx"), gradient(size // 2, rgb[2], "yx")))
    for i in range(8):
        palette = PALETTES[i % 3]
        cell = 4 + i
        size = cell * 8
        out.append((f"checks palette_{i % 3}", "gif", "image/gif", size, size,
                    checks(size, cell, palette), checks(size // 2, max(1, cell // 2), palette)))
    for i, (name, rgb) in enumerate(COLOURS[:8]):
        other = hexc(COLOURS[(i + 3) % len(COLOURS)][1])
        comment = f"a {name} ring"
        out.append((f"ring {name}", "svg", "image/svg+xml", 100, 100,
                    ring(100, "#1d2b53", hexc(rgb), other, comment),
                    ring(50, "#1d2b53", hexc(rgb), other, comment)))
    for i in range(9):
        colours = [c for _, c in COLOURS[i:] + COLOURS[:i]][:3 + i % 3]
        names = "_".join(n for n, _ in (COLOURS[i:] + COLOURS[:i])[:2])
        size = 40 + 6 * i
        out.append((f"stripes {names}", "bmp", "image/bmp", size, size,
                    stripes(size, colours), stripes(size // 2, colours)))
    return out


SCHEMA = """\
-- Shimmie's tables as its installer creates them on SQLite (core install, and the
-- image_hash_ban extension's image_bans), with the sample posts. Generated by
-- generate.py; load with: sqlite3 shimmie.db < shimmie.sql
PRAGMA foreign_keys = ON;
CREATE TABLE config (name VARCHAR(128) NOT NULL, value TEXT, PRIMARY KEY (name));
CREATE TABLE users (id INTEGER PRIMARY KEY AUTOINCREMENT, name VARCHAR(32) UNIQUE NOT NULL,
  pass VARCHAR(250), joindate TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
  class VARCHAR(32) NOT NULL DEFAULT 'user', email VARCHAR(128));
CREATE TABLE images (id INTEGER PRIMARY KEY AUTOINCREMENT, owner_id INTEGER NOT NULL,
  owner_ip VARCHAR(45) NOT NULL, filename VARCHAR(255) NOT NULL, filesize INTEGER NOT NULL,
  hash CHAR(32) UNIQUE NOT NULL, ext CHAR(4) NOT NULL, source VARCHAR(255),
  width INTEGER NOT NULL, height INTEGER NOT NULL,
  posted TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, locked BOOLEAN NOT NULL DEFAULT FALSE,
  mime VARCHAR(512),
  FOREIGN KEY (owner_id) REFERENCES users(id) ON DELETE RESTRICT);
CREATE INDEX images_owner_id_idx ON images(owner_id);
CREATE INDEX images_width_idx ON images(width);
CREATE INDEX images_height_idx ON images(height);
CREATE TABLE tags (id INTEGER PRIMARY KEY AUTOINCREMENT, tag VARCHAR(64) UNIQUE NOT NULL,
  count INTEGER NOT NULL DEFAULT 0);
CREATE TABLE image_tags (image_id INTEGER NOT NULL, tag_id INTEGER NOT NULL,
  UNIQUE(image_id, tag_id),
  FOREIGN KEY (image_id) REFERENCES images(id) ON DELETE CASCADE,
  FOREIGN KEY (tag_id) REFERENCES tags(id) ON DELETE CASCADE);
CREATE INDEX images_tags_tag_id_idx ON image_tags(tag_id);
CREATE TABLE image_bans (id INTEGER PRIMARY KEY AUTOINCREMENT, hash CHAR(32) NOT NULL,
  date TIMESTAMP DEFAULT CURRENT_TIMESTAMP, reason TEXT NOT NULL);
CREATE INDEX image_bans_hash_idx ON image_bans(hash);
INSERT INTO users (id, name, pass, class) VALUES (1, 'Anonymous', '', 'anonymous');
INSERT INTO users (id, name, pass, class) VALUES (2, 'admin', '', 'admin');
"""


def sql_text(s):
    return "'" + s.replace("'", "''") + "'"


def main():
    sql = [SCHEMA]
    tag_ids = {}
    table = []
    for post_id, (tags, ext, mime, w, h, image, thumb) in enumerate(samples(), start=1):
        md5 = hashlib.md5(image).hexdigest()
        for silo, data in (("images", image), ("thumbs", thumb)):
            path = os.path.join(HERE, silo, md5[:2], md5)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        filename = tags.split()[0] + "-" + str(post_id) + "." + ext
        sql.append("INSERT INTO images (id, owner_id, owner_ip, filename, filesize, hash, ext, "
                   "width, height, posted, mime) VALUES "
                   f"({post_id}, 2, '127.0.0.1', {sql_text(filename)}, {len(image)}, '{md5}', "
                   f"'{ext}', {w}, {h}, '2026-01-01 12:{post_id:02d}:00', '{mime}');\n")
        for tag in tags.split() + [ext]:
            if tag not in tag_ids:
                tag_ids[tag] = len(tag_ids) + 1
                sql.append(f"INSERT INTO tags (id, tag, count) VALUES ({tag_ids[tag]}, {sql_text(tag)}, 0);\n")
            sql.append(f"INSERT INTO image_tags (image_id, tag_id) VALUES ({post_id}, {tag_ids[tag]});\n")
        table.append(f"| {post_id} | `{md5}` | {mime} | {w}x{h} | {len(image)} | {len(thumb)} | {tags} |")
    sql.append("UPDATE tags SET count = (SELECT COUNT(*) FROM image_tags WHERE tag_id = tags.id);\n")
    with open(os.path.join(HERE, "shimmie.sql"), "w") as f:
        f.write("".join(sql))
    print("\n".join(table))


if __name__ == "__main__":
    main()
