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


def gradient(size):
    scale = 255 // (size - 1)
    return png(size, size, lambda x, y: (x * scale, y * scale, 128))


PALETTE = [(0x1d, 0x2b, 0x53), (0xff, 0xa3, 0x00), (0xff, 0x77, 0xa8), (0xff, 0xf1, 0xe8)]


def checks(size, cell):
    return gif(size, size, PALETTE, lambda x, y: ((x // cell) + 2 * ((y // cell) % 2)) % 4)


SAMPLES = [
    # (description, image bytes, thumbnail bytes)
    ("PNG, 64x64 RGB gradient", gradient(64), gradient(32)),
    ("GIF, 48x48 four-colour checks", checks(48, 6), checks(24, 3)),
    ("SVG, 100x100 ring and dot", svg(100), svg(50)),
]


def main():
    for _, image, thumb in SAMPLES:
        md5 = hashlib.md5(image).hexdigest()
        for silo, data in (("images", image), ("thumbs", thumb)):
            path = os.path.join(HERE, silo, md5[:2], md5)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        print(md5, len(image), len(thumb))


if __name__ == "__main__":
    main()
