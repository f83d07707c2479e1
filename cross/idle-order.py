#!/usr/bin/env python3
"""Writes cross/idle-order.ld: the functions an idle, connected compute node runs, placed together.

    cross/idle-order.py EDGE_BIN ORCHESTRATOR_BIN [--seconds N]

EDGE_BIN: an x86_64 edge build with its symbols, i.e. built with the release profile's stripping off:
    CARGO_PROFILE_RELEASE_STRIP=false cross/build.sh x86_64-unknown-linux-musl --edge
ORCHESTRATOR_BIN: any `cod` with the orchestrator role (target/release/cod).

Why: the kernel maps 64 KiB of an executable around every page a process touches (fault-around), and an
idle node's heartbeat path (tokio, libp2p, yamux, noise, minicbor, the resource report) is spread over the
whole of `.text`. So each heartbeat mapped about half of the code, which counts in the node's RSS
(src/node/trim.rs). Laid out together, those functions take a handful of 64 KiB windows instead.

How: the node runs under valgrind's callgrind with instrumentation off through start-up. Once it is connected,
instrumentation is switched on until --seconds after its first trim (src/node/trim.rs), and every function
with a cost in that window is taken. The linker script names their sections by mangled name with the parts
that change between builds made wildcards (see `pattern`), so it keeps matching as hashes change with
compiler and dependency versions; a name that no longer exists matches nothing, which costs only the
grouping. cross/build.sh passes the script to every static build (GNU ld on x86_64, zig's lld on ARM), and
cross/check-idle-order.sh says when too little of it matches.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "cross" / "idle-order.ld"

# Rust's v0 mangling names crates with a disambiguating hash (`Cs<base62>_5tokio`) and refers back to
# earlier parts by byte offset (`B<base62>_`); both change when a hash does. A copy of a generic or inline
# function ends in the crate that instantiated it, which another build may pick differently. And when LTO
# merges modules it renames clashing locals with a `.<number>` or `.llvm.<number>` suffix. In a pattern
# each of these becomes a wildcard.
V0_CRATE = re.compile(r"Cs[0-9A-Za-z]+_")
V0_BACKREF = re.compile(r"B[0-9A-Za-z]*_")
V0_TRAILING_CRATE = re.compile(r"Cs\*_(\d+)([A-Za-z0-9_]+)$")
LOCAL_SUFFIX = re.compile(r"(\.llvm)?(\.\d+)+$")


def wait_for(what, check, deadline_s):
    """Polls `check` until it returns a true value or `deadline_s` passes."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    sys.exit(f"idle-order: timed out waiting for {what}")


def read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def serve(cmd, data, name, extra, env=None):
    ready = data / f"{name}.ready"
    args = cmd + [
        "serve", "--data-dir", str(data / name), "--api-host", "127.0.0.1", "--api-port", "0",
        "--publisher-port", "0", "--listen", "/ip4/127.0.0.1/tcp/0", "--ready-file", str(ready),
    ] + extra
    log = open(data / f"{name}.log", "wb")
    env = {**os.environ, "COD_LOG": "warn", **(env or {})}
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    info = wait_for(f"{name} to be ready (log: {data / name}.log)", lambda: read_json(ready), 300)
    return proc, info


def connected_nodes(api):
    try:
        with urllib.request.urlopen(f"http://{api}/api/v1/orchestrator/nodes", timeout=5) as r:
            nodes = json.load(r).get("Nodes") or []
    except OSError:
        return 0
    return sum(1 for n in nodes if (n.get("Connection") or "").upper() == "CONNECTED")


def profiled_functions(out_file):
    """Names of the functions with a self cost in a callgrind output file.

    A cost line belongs to the current `fn=`, except the one right after `calls=`: that is the call's
    inclusive cost, charged to the caller's line but spent in the callee.
    """
    names, costly, current, call_cost_next = {}, set(), None, False
    for line in open(out_file, encoding="utf-8", errors="replace"):
        if line.startswith("fn="):
            # `fn=(id) name` the first time a function appears, `fn=(id)` after.
            m = re.match(r"fn=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
            if m:
                if m.group(2):
                    names[m.group(1)] = m.group(2)
                current = m.group(1)
        elif line.startswith("cfn="):
            # A callee may be named first here; the other `c*=` lines, like `fl=` and `ob=`, name files.
            m = re.match(r"cfn=\((\d+)\) (.*)", line.rstrip("\n"))
            if m:
                names[m.group(1)] = m.group(2)
        elif line.startswith("calls="):
            call_cost_next = True
        elif line[:1].isdigit() or line[:1] in "+-*":
            if call_cost_next:
                call_cost_next = False
            elif current:
                costs = line.split()[1:]
                if any(c != "0" for c in costs):
                    costly.add(current)
    return sorted(names[i] for i in costly if i in names)


def pattern(symbol):
    """A linker-script pattern for the name a function's section has after `.text.`, matching across hash
    changes."""
    symbol = LOCAL_SUFFIX.sub("", symbol)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.$]*", symbol):
        return None
    if not symbol.startswith("_R"):
        # C (musl, LMDB, ring): plain names, one section each where compiled with -ffunction-sections.
        return symbol
    # Crates first: a crate's hash may itself hold a `B`.
    general = V0_BACKREF.sub("B*_", V0_CRATE.sub("Cs*_", symbol))
    # The instantiating crate: a back-reference, or a crate root whose identifier is all that is left (a
    # path always ends in an identifier of its own, so `Cs*_5tokio4main` keeps its crate).
    if general.endswith("B*_"):
        general = general[: -len("B*_")]
    elif (m := V0_TRAILING_CRATE.search(general)) and len(m.group(2)) == int(m.group(1)):
        general = general[: m.start()]
    # The trailing wildcard takes the instantiating crate and a local's suffix.
    return general + "*"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("edge_bin")
    ap.add_argument("orchestrator_bin")
    ap.add_argument(
        "--seconds", type=float, default=35, help="of idling after the first trim (default 35: two heartbeats)"
    )
    a = ap.parse_args()
    if not shutil.which("valgrind"):
        sys.exit("idle-order: needs valgrind (apt-get install valgrind)")
    # Function sizes, read once: they also tell whether the binary has symbols at all.
    listing = subprocess.run(["nm", "-S", "--defined-only", a.edge_bin], capture_output=True, text=True)
    sizes = {}
    for line in listing.stdout.splitlines():
        f = line.split()
        if len(f) == 4 and f[2] in "tTwW":
            sizes[f[3]] = int(f[1], 16)
    if listing.returncode != 0 or not sizes:
        sys.exit(f"idle-order: {a.edge_bin} has no symbols; build it with CARGO_PROFILE_RELEASE_STRIP=false")

    data = Path(tempfile.mkdtemp(prefix="cod-idle-order."))
    procs = []
    try:
        orch, info = serve([a.orchestrator_bin], data, "orch", ["--orchestrator"])
        procs.append(orch)
        out_file = data / "callgrind.out"
        log = data / "compute.log"
        compute, _ = serve(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--demangle=no", "--dump-instr=no",
             f"--callgrind-out-file={out_file}", a.edge_bin],
            data, "compute",
            ["--compute", "--orchestrators", info["p2p"][0]],
            # The trim says when it has run; the default heartbeat (15 s) leaves the node quiet enough under
            # valgrind for it to run at all.
            {"COD_LOG": "warn,cod::node::trim=debug"},
        )
        procs.append(compute)
        wait_for("the node to connect", lambda: connected_nodes(info["api"]) == 1, 300)
        # From here on: the tail of start-up, the trim (whose own code runs again after every busy spell),
        # then idling through heartbeats.
        subprocess.run(["callgrind_control", "-i", "on", str(compute.pid)], check=True, capture_output=True)
        wait_for("the node's first trim", lambda: "quiet: unmapped" in log.read_text(errors="replace"), 300)
        time.sleep(a.seconds)
        subprocess.run(["callgrind_control", "-i", "off", str(compute.pid)], check=True, capture_output=True)
        assert connected_nodes(info["api"]) == 1, "the node stayed connected through the window"
        compute.terminate()
        compute.wait(timeout=120)
        functions = profiled_functions(out_file)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    patterns = sorted({p for p in map(pattern, functions) if p})
    size = sum(sizes.get(f, 0) for f in functions)
    text = "".join(
        [
            "/* Generated by cross/idle-order.py: do not edit. The functions an idle, connected compute node\n",
            f" * runs ({len(functions)} functions, {size} bytes of code in the build profiled), placed first in\n",
            " * the code so that the kernel's fault-around maps them, not their neighbours (that script says why).\n",
            " */\n",
            "SECTIONS\n{\n  .text.idle : {\n",
        ]
        # LLVM puts a function it finds cold in `.text.unlikely.<name>`, and one build may find it cold where
        # another did not.
        + [f"    *(.text.{p} .text.unlikely.{p})\n" for p in patterns]
        + ["  }\n}\nINSERT BEFORE .text;\n"]
    )
    OUT.write_text(text)
    print(f"idle-order: {len(functions)} functions, {size} bytes, {len(patterns)} patterns -> {OUT}")
    shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
