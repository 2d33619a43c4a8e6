#!/usr/bin/env python3
"""A/B of the decoder's small-rows linear kernel (fdpo-harness decode-matmul) between two
harness binaries, interleaved: each round runs OLD then NEW (then NEW then OLD, alternating)
on every case, and the table reports per case the median over rounds of each side's median
milliseconds, GB/s of weights read, and NEW's speed-up. On a shared machine only the ratio
means much; the peaks line (measured by NEW once per thread count) says how loaded it was.

  bench/ab_decode_matmul.py --old OLD_HARNESS --new NEW_HARNESS [--rounds 3]
                            [--precision bf16] [--rows 1,8,16] [--threads 1,2] [--shapes ...]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bandwidth  # noqa: E402
import interleave  # noqa: E402  (interleave.count: the --rounds check)


def run(binary, args):
    r = subprocess.run([binary, "decode-matmul", *args], capture_output=True, text=True)
    if r.returncode:   # the harness's own message, not a CalledProcessError that hides it
        sys.exit(f"{binary} decode-matmul failed (exit {r.returncode}): {r.stderr.strip()}")
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def list_of(item):
    """argparse type of a comma list, each element checked by item (a function raising
    ValueError), so a bad list is argparse's one-line error before anything runs"""
    def parse(value):
        try:
            for x in value.split(","):
                item(x)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{e} (in {value!r})")
        return value
    return parse


def precision_name(x):
    if x not in ("fp32", "bf16"):
        raise ValueError(f"{x!r} is neither fp32 nor bf16")


def positive_int(x):
    if not x.strip().isdigit() or int(x) < 1:
        raise ValueError(f"{x!r} is not an integer >= 1")


def kxn_shape(x):
    k, _, n = x.partition("x")
    if not (k.isdigit() and n.isdigit() and int(k) > 0 and int(n) > 0):
        raise ValueError(f"{x!r} is not KxN (two integers >= 1)")


def positive_seconds(x):
    try:
        ok = float(x) > 0
    except ValueError:
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0 (got {x!r})")
    return x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", required=True)
    ap.add_argument("--new", required=True)
    ap.add_argument("--rounds", type=interleave.count, default=3)
    ap.add_argument("--precision", type=list_of(precision_name), default="fp32,bf16")
    ap.add_argument("--rows", type=list_of(positive_int), default="1,4,8,16")
    ap.add_argument("--threads", type=list_of(positive_int), default="1,2")
    ap.add_argument("--shapes", type=list_of(kxn_shape), default="768x2304,768x768,768x3072,3072x768,768x50257")
    ap.add_argument("--min-seconds", type=positive_seconds, default="0.2")
    a = ap.parse_args()
    for flag, path in (("--old", a.old), ("--new", a.new)):
        if not interleave.is_executable(path):
            sys.exit(f"{flag}: {path} is not an executable fdpo-harness")
    times = {}  # (side, key) -> [ms_median per round]
    gbytes = {}
    # the peaks line's triad: STREAM's array size for this machine (bench/bandwidth.py)
    triad_mib = bandwidth.triad_sizes(bandwidth.machine_llc()["bytes"], bandwidth.mem_available_bytes())["dram_mib"]
    for t in a.threads.split(","):
        peaks = run(a.new, ["--threads", t, "--shapes", "768x768", "--rows", "1", "--precision", "bf16",
                            "--min-seconds", "0.01", "--triad-mib", str(triad_mib)])[0]
        print(json.dumps(peaks), flush=True)
        for rnd in range(a.rounds):
            order = ["old", "new"] if rnd % 2 == 0 else ["new", "old"]
            for shape in a.shapes.split(","):
                for side in order:
                    rows = run(a.old if side == "old" else a.new,
                               ["--threads", t, "--shapes", shape, "--rows", a.rows, "--precision", a.precision,
                                "--min-seconds", a.min_seconds, "--peaks", "0"])
                    for r in rows:
                        key = (r["precision"], tuple(r["shape"]), r["rows"], r["threads"])
                        times.setdefault((side, key), []).append(r["ms_median"])
                        gbytes[key] = r["gbs"] * r["ms_median"] * 1e-3  # GB per call
    print(f"{'prec':5} {'shape':>10} {'rows':>4} {'thr':>3} {'old ms':>8} {'new ms':>8} {'old GB/s':>8} "
          f"{'new GB/s':>8} {'speed-up':>8}")
    for (side, key) in sorted(k for k in times if k[0] == "old"):
        o, n = statistics.median(times[("old", key)]), statistics.median(times[("new", key)])
        gb = gbytes[key]
        print(f"{key[0]:5} {key[1][0]:>4}x{key[1][1]:<5} {key[2]:>4} {key[3]:>3} {o:8.3f} {n:8.3f} "
              f"{gb / o * 1e3:8.2f} {gb / n * 1e3:8.2f} {o / n:8.2f}")


if __name__ == "__main__":
    main()
