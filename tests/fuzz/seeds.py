#!/usr/bin/env python3
"""Writes the seed corpora that need no Rust: layer tars, data: URLs, a tiny CAR and dag-pb blocks.

Run from tests/fuzz (tests/fuzz.sh does, idempotently). The wire seeds come from a Rust test
(`cargo test --lib --features fuzzing fuzzing::tests::write_wire_seeds -- --ignored`), the job specs are
hand-written files. Escape seeds aim at /tmp/cod-fuzz/outside, the canary dir the fuzz targets watch.
"""
import base64, gzip, hashlib, io, os, tarfile

OUT = "/tmp/cod-fuzz/outside"

def tar_bytes(entries, fmt=tarfile.GNU_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for e in entries:
            kind, name = e[0], e[1]
            info = tarfile.TarInfo(name)
            info.mtime = 1700000000
            data = None
            if kind == "file":
                data = e[2]
                info.size = len(data)
                info.mode = 0o644
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
            elif kind == "sym":
                info.type = tarfile.SYMTYPE
                info.linkname = e[2]
            elif kind == "hard":
                info.type = tarfile.LNKTYPE
                info.linkname = e[2]
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            elif kind == "chr":
                info.type = tarfile.CHRTYPE
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()

LAYERS = {
    "basic": [("dir", "etc"), ("file", "etc/hosts", b"127.0.0.1 localhost\n"), ("dir", "usr/bin"),
              ("file", "usr/bin/sh", b"#!sh\n"), ("sym", "bin", "usr/bin"), ("hard", "etc/hosts2", "etc/hosts"),
              ("fifo", "run/pipe"), ("file", "etc/.wh.old", b""), ("file", "usr/.wh..wh..opq", b""),
              ("file", "./usr/bin/../lib/x", b"x")],
    "escape-dotdot": [("file", "../outside-x", b"x"), ("file", "a/../../b", b"b")],
    "escape-abs-symlink": [("sym", "evil", OUT), ("file", "evil/pwned", b"pwned"), ("file", "evil/canary", b"overwritten")],
    "escape-rel-symlink": [("dir", "a"), ("sym", "a/up", "../../../../../../../.." + OUT), ("file", "a/up/pwned", b"p")],
    "escape-hardlink": [("hard", "passwd", OUT + "/canary"), ("hard", "rel", "../../outside/canary")],
    "escape-symlink-swap": [("dir", "d"), ("file", "d/f", b"1"), ("sym", "d", OUT), ("file", "d/f", b"2")],
    "device": [("chr", "dev/null")],
    "pax-long": [("file", "p/" + "n" * 200, b"long"), ("sym", "l" * 150, "t" * 150)],
}

def cidv0(block):
    return b"\x12\x20" + hashlib.sha256(block).digest()

def uvarint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)

def pb_bytes(field, data):
    return uvarint(field << 3 | 2) + uvarint(len(data)) + data

def pb_varint(field, v):
    return uvarint(field << 3) + uvarint(v)

def unixfs(kind, data=None, filesize=None, blocksizes=()):
    out = pb_varint(1, kind)
    if data is not None:
        out += pb_bytes(2, data)
    if filesize is not None:
        out += pb_varint(3, filesize)
    for b in blocksizes:
        out += pb_varint(4, b)
    return out

def pbnode(links, data):
    out = b""
    for cid, name, tsize in links:  # links first, as dag-pb's canonical form has them
        out += pb_bytes(2, pb_bytes(1, cid) + pb_bytes(2, name.encode()) + pb_varint(3, tsize))
    return out + pb_bytes(1, data)

def car(roots, blocks):
    # DAG-CBOR header {"roots": [CID...], "version": 1}; a CID is tag 42 over bytes 0x00 + cid.
    def cbor_bytes(b):
        return (bytes([0x58, len(b)]) if len(b) < 256 else bytes([0x59]) + len(b).to_bytes(2, "big")) + b
    header = b"\xa2" + b"\x65roots" + bytes([0x80 | len(roots)])
    for r in roots:
        header += b"\xd8\x2a" + cbor_bytes(b"\x00" + r)
    header += b"\x67version\x01"
    out = uvarint(len(header)) + header
    for cid, data in blocks:
        out += uvarint(len(cid) + len(data)) + cid + data
    return out

def write(target, name, data):
    os.makedirs(f"corpus/{target}", exist_ok=True)
    with open(f"corpus/{target}/seed-{name}", "wb") as f:
        f.write(data)

def main():
    for name, entries in LAYERS.items():
        write("layer", name, tar_bytes(entries, tarfile.PAX_FORMAT if name == "pax-long" else tarfile.GNU_FORMAT))

    leaf1 = pbnode([], unixfs(2, b"hello ", 6))
    leaf2 = pbnode([], unixfs(2, b"world\n", 6))
    root = pbnode([(cidv0(leaf1), "", len(leaf1)), (cidv0(leaf2), "", len(leaf2))], unixfs(2, None, 12, [6, 6]))
    dirnode = pbnode([(cidv0(root), "file.txt", len(root)), (cidv0(leaf1), "a", len(leaf1))], unixfs(1))
    for name, block in {"leaf": leaf1, "file": root, "dir": dirnode, "symlink": pbnode([], unixfs(4, b"../x")),
                        "empty": b""}.items():
        write("dagpb", name, block)
    blocks = [(cidv0(b), b) for b in (dirnode, root, leaf1, leaf2)]
    write("car", "dir", car([cidv0(dirnode)], blocks))
    write("car", "bad-hash", car([cidv0(leaf1)], [(cidv0(leaf2), leaf1)]))
    raw = b"raw block"
    cidv1_raw = b"\x01\x55\x12\x20" + hashlib.sha256(raw).digest()
    write("car", "cidv1-raw", car([cidv1_raw], [(cidv1_raw, raw)]))

    def gz_b64(entries):
        return base64.b64encode(gzip.compress(tar_bytes(entries), mtime=0)).decode()
    urls = {
        "text": "data:,hello%20world",
        "plain-name": "data:text/plain;charset=utf-8;name=notes.txt,hi",
        "b64": "data:application/octet-stream;base64,SGVsbG8sIFdvcmxkIQ==",
        "b64-urlsafe": "data:;base64,-_-_",
        "name-traversal": "data:text/plain;name=..%2F..%2Foutside-x,escape",
        "tarball": "data:application/gzip;base64," + gz_b64(LAYERS["basic"][:5]),
        "tarball-escape": "data:application/x-gzip;base64," + gz_b64(LAYERS["escape-abs-symlink"] + LAYERS["escape-dotdot"]),
        "tarball-sniffed": "data:;base64," + gz_b64([("file", "a", b"a")]),
        "tarball-hardlink": "data:application/gzip;base64," + gz_b64(LAYERS["escape-hardlink"]),
    }
    for name, url in urls.items():
        write("data_url", name, url.encode())

if __name__ == "__main__":
    main()
