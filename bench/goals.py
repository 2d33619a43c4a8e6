#!/usr/bin/python3
"""The goal table of issue #13, measured: every row by the bench that measures it, the
whole set run REPEATS times in sequence (default 3) for the reproducibility check, then one
table with each run's figure, the spread across runs ((max - min) / median, goal <= 15 %)
and whether the median meets the goal.

Rows (2 threads by default; ratios are ratios of medians within one invocation):
  DPO step 124M, shared + cached, bf16     bench_dpo_step.py --config 124M
  train step 124M B4 T256, bf16            bench_train_step.py --configs 124M
  train step, small config (0.9M params)   bench_train_step.py --configs small
  sampling 124M, 8 prompts x 128 tokens    bench_sample.py --configs 124M (ratio of the whole
                                           generations; the decoding steps' % of the DRAM triad,
                                           the bandwidth limit: bench/bandwidth.py)
  peak RSS, DPO step 124M at T = 1024      bench_dpo_step.py --peak-rss (once: memory, not timing)

    /usr/bin/python3 bench/goals.py [--quick] [--repeats 3] [--threads 2] [--only dpo,train124,...]

--quick passes --quick to every bench (goal sides only, 5 timed steps each). Row keys for
--only: dpo, train124, trainsmall, sample, rss.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable
sys.path.insert(0, HERE)
import bandwidth  # noqa: E402


def benches(a):
    t = ["--threads", str(a.threads)] + (["--quick"] if a.quick else [])
    return {
        "dpo": [PY, f"{HERE}/bench_dpo_step.py", "--config", "124M"] + t,
        "train124": [PY, f"{HERE}/bench_train_step.py", "--configs", "124M"] + t,
        "trainsmall": [PY, f"{HERE}/bench_train_step.py", "--configs", "small"] + t,
        "sample": [PY, f"{HERE}/bench_sample.py", "--configs", "124M", "--prompts", "8", "--new-tokens", "128"] + t,
        "rss": [PY, f"{HERE}/bench_dpo_step.py", "--peak-rss", "--config", "124M", "--pairs", "1", "--prompt", "512",
                "--completion", "512", "--threads", str(a.threads),
                "--sides", "torch-fp32,torch-bf16,fdpo-shared-cached-fp32,fdpo-shared-cached-bf16"],
    }


def ratio(rec, num, den, higher_is_faster=False):
    m = rec.get("median_seconds") or rec.get("median_tokens_per_sec")
    if not m or num not in m or den not in m:
        return None
    return m[num] / m[den] if higher_is_faster else m[den] / m[num]


# (row label, bench key, function of that bench's record -> figure, goal text, goal test)
ROWS = [
    ("DPO 124M bf16 vs torch fp32", "dpo", lambda r: ratio(r, "fdpo-shared-cached-bf16", "torch-fp32"), ">= 5x",
     lambda x: x >= 5),
    ("DPO 124M bf16 vs torch bf16", "dpo", lambda r: ratio(r, "fdpo-shared-cached-bf16", "torch-bf16"), ">= 3.5x",
     lambda x: x >= 3.5),
    ("train 124M B4 T256 bf16 vs torch fp32", "train124", lambda r: ratio(r, "fdpo-bf16", "torch-fp32"), ">= 2.5x",
     lambda x: x >= 2.5),
    ("train 124M B4 T256 bf16 vs torch bf16", "train124", lambda r: ratio(r, "fdpo-bf16", "torch-bf16"), ">= 1.8x",
     lambda x: x >= 1.8),
    ("train small 0.9M fp32 vs torch fp32", "trainsmall", lambda r: ratio(r, "fdpo-fp32", "torch-fp32"), ">= 3x",
     lambda x: x >= 3),
    ("train small 0.9M bf16 vs torch fp32", "trainsmall", lambda r: ratio(r, "fdpo-bf16", "torch-fp32"), "(info)",
     None),
    ("sampling 124M 8x128 bf16 vs torch fp32", "sample", lambda r: ratio(r, "fdpo-bf16", "torch-fp32", True),
     ">= 3x", lambda x: x >= 3),
    ("sampling 124M 8x128 fp32 vs torch fp32", "sample", lambda r: ratio(r, "fdpo-fp32", "torch-fp32", True),
     "(info)", None),
    ("sampling 124M bf16, decoding steps, % of DRAM bandwidth limit", "sample",
     lambda r: sample_pct(r, "fdpo-bf16", rate="median_decode_tokens_per_sec"), ">= 50%", lambda x: x >= 50),
    ("sampling 124M bf16, whole generation (set-up, prefill), % of DRAM", "sample", lambda r: sample_pct(r, "fdpo-bf16"),
     "(info %)", None),
    ("sampling 124M bf16, decoding steps, % of in-cache triad", "sample",
     lambda r: sample_pct(r, "fdpo-bf16", "triad_cache_gbs", "median_decode_tokens_per_sec"),
     "(info %)", None),
    ("DRAM triad GB/s (the limit; fdpo's pages)", "sample", lambda r: r["peaks"].get("triad_gbs"), "(info GB/s)", None),
    ("DRAM triad GB/s on the other page size", "sample", lambda r: r["peaks"].get("triad_other_pages_gbs"),
     "(info GB/s)", None),
    ("peak RSS DPO 124M T=1024 bf16, % of torch fp32", "rss", lambda r: rss_pct(r, "fdpo-shared-cached-bf16"),
     "<= 60%", lambda x: x <= 60),
    ("peak RSS DPO 124M T=1024 fp32, % of torch fp32", "rss", lambda r: rss_pct(r, "fdpo-shared-cached-fp32"),
     "<= 60%", lambda x: x <= 60),
]


def sample_pct(r, side, limit="triad_gbs", rate="median_tokens_per_sec"):
    """decode steps/s x the bytes one step reads (bench/bandwidth.py's decode_step_bytes:
    weights at the side's precision, fp32 vectors, KV cache at the mean length, logits), as a
    % of the run's DRAM triad (limit="triad_cache_gbs": of its in-cache triad); steps/s from
    the whole generation's tokens/s, or (rate="median_decode_tokens_per_sec") its decoding
    steps' alone."""
    tps = r.get(rate, {}).get(side)
    if tps is None or limit not in r["peaks"] or "cfg" not in r:
        return None
    step = bandwidth.decode_step_bytes(r["cfg"], "bf16" if "bf16" in side else "fp32", r["prompts"],
                                       r["prompt_tokens"], r["new_tokens"])
    return bandwidth.decode_pct(tps, r["prompts"], step["total"], r["peaks"][limit])[1]


def rss_pct(r, side):
    m = r["rss_mib"]
    return 100 * m[side] / m["torch-fp32"] if side in m and m.get("torch-fp32") else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="dpo,train124,trainsmall,sample,rss")
    a = ap.parse_args()
    keys = a.only.split(",")
    cmds = benches(a)
    for k in keys:
        if k not in cmds:
            sys.exit(f"--only: unknown row key '{k}' (known: {', '.join(cmds)})")
    records = {k: [] for k in keys}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(a.repeats):
            for k in keys:
                if k == "rss" and rep > 0:
                    continue  # peak memory does not vary with load: measured once
                out = os.path.join(tmp, f"{k}-{rep}.jsonl")
                print(f"== run {rep + 1}/{a.repeats}: {k}: {' '.join(os.path.basename(x) for x in cmds[k][1:])}",
                      flush=True)
                t0 = time.time()
                r = subprocess.run(cmds[k] + ["--json", out])
                if r.returncode:
                    print(f"   {k} failed (exit {r.returncode})", flush=True)
                    continue
                with open(out) as f:
                    records[k].append(json.loads(f.read().strip().splitlines()[-1]))
                print(f"   ({time.time() - t0:.0f} s)", flush=True)
    print()
    print(f"| measure | goal | {' | '.join(f'run {i + 1}' for i in range(a.repeats))} | spread | median meets goal |")
    print("|---|---|" + "---|" * a.repeats + "---|---|")
    for label, key, fig, goal, test in ROWS:
        if key not in records:
            continue
        xs = [fig(rec) for rec in records[key]]
        xs = [x for x in xs if x is not None]
        unit = "GB/s" if "GB/s" in goal else "%" if "%" in goal else "x"
        cells = ([f"{x:.2f}{unit}" if unit == "x" else f"{x:.1f} GB/s" if unit == "GB/s" else f"{x:.0f}%" for x in xs]
                 + ["-"] * (a.repeats - len(xs)))
        if len(xs) > 1:
            med = statistics.median(xs)
            spread = (max(xs) - min(xs)) / med * 100
            sp = f"{spread:.0f}% {'ok' if spread <= 15 else 'NOT within 15%'}"
        else:
            med, sp = (xs[0] if xs else None), "(one run)"
        meets = "-" if med is None or test is None else ("yes" if test(med) else "no")
        print(f"| {label} | {goal} | {' | '.join(cells)} | {sp} | {meets} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
