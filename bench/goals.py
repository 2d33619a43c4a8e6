#!/usr/bin/python3
"""The goal table of issue #13, measured: every row by the bench that measures it, the
whole set run REPEATS times in sequence (default 3) for the reproducibility check, then one
table with each run's figure, the spread across runs ((max - min) / median, goal <= 15 %),
whether the median meets the goal and, for the timed rows, the ratio a step at its floor
would give (its FLOPs at the GEMM peak measured in the same run: interleave.step_floor),
i.e. whether the goal is reachable on this machine.

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
import interleave  # noqa: E402  (interleave.count: the --repeats and --threads check)


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


def floor_ratio(rec, num, den):
    """den's median over num's floor (interleave.step_floor, in the record's floor_seconds):
    the ratio num would show if its step ran at the floor of this run's measured peaks;
    None for a record without floors."""
    f, m = rec.get("floor_seconds") or {}, rec.get("median_seconds") or {}
    return m[den] / f[num] if num in f and den in m and f[num] > 0 else None


def ratio_row(label, key, num, den, goal, least):
    """A timed goal row: num's speed-up over den (ratio of medians) >= least, with its ratio
    at the floor."""
    return (label, key, lambda r: ratio(r, num, den), goal, (lambda x: x >= least) if least else None,
            lambda r: floor_ratio(r, num, den))


# (row label, bench key, function of that bench's record -> figure, goal text, goal test,
#  function of the record -> the figure at the floor of its measured peaks, or None)
ROWS = [
    ratio_row("DPO 124M bf16 vs torch fp32", "dpo", "fdpo-shared-cached-bf16", "torch-fp32", ">= 5x", 5),
    ratio_row("DPO 124M bf16 vs torch bf16", "dpo", "fdpo-shared-cached-bf16", "torch-bf16", ">= 3.5x", 3.5),
    ratio_row("train 124M B4 T256 bf16 vs torch fp32", "train124", "fdpo-bf16", "torch-fp32", ">= 2.5x", 2.5),
    ratio_row("train 124M B4 T256 bf16 vs torch bf16", "train124", "fdpo-bf16", "torch-bf16", ">= 1.8x", 1.8),
    ratio_row("train small 0.9M fp32 vs torch fp32", "trainsmall", "fdpo-fp32", "torch-fp32", ">= 3x", 3),
    ratio_row("train small 0.9M bf16 vs torch fp32", "trainsmall", "fdpo-bf16", "torch-fp32", "(info)", None),
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


def table(records, repeats):
    """The goal table (markdown lines) from {bench key: [one record per run, None for a run
    that failed]}: each row's figure per run, in that run's column ("failed" for a failed
    run, "-" for one without the figure), the spread across runs ((max - min) / median, goal
    <= 15 %, judged only when every run of the row gave its figure), whether the median meets
    the goal, and for the timed rows the median over runs of the figure a step at the floor
    would give (interleave.step_floor: the FLOPs at the run's measured GEMM peak), which says
    whether the goal is reachable on this machine at all."""
    lines = [f"| measure | goal | {' | '.join(f'run {i + 1}' for i in range(repeats))} | spread | median meets goal "
             "| at the floor |",
             "|---|---|" + "---|" * repeats + "---|---|---|"]
    for label, key, fig, goal, test, *at_floor in ROWS:
        if key not in records:
            continue
        runs = records[key]
        per_run = [None if rec is None else fig(rec) for rec in runs]
        xs = [x for x in per_run if x is not None]
        unit = "GB/s" if "GB/s" in goal else "%" if "%" in goal else "x"
        show = lambda x: f"{x:.2f}{unit}" if unit == "x" else f"{x:.1f} GB/s" if unit == "GB/s" else f"{x:.0f}%"  # noqa: E731
        cells = (["failed" if rec is None else "-" if x is None else show(x) for rec, x in zip(runs, per_run)]
                 + ["-"] * (repeats - len(runs)))
        med = statistics.median(xs) if xs else None
        if len(xs) > 1:
            spread = (max(xs) - min(xs)) / med * 100
            sp = (f"{spread:.0f}% {'ok' if spread <= 15 else 'NOT within 15%'}" if len(xs) == len(runs)
                  else f"{spread:.0f}% over {len(xs)} of {len(runs)} runs: not judged")
        else:
            sp = (("(no run)" if all(rec is None for rec in runs) else "(no figure)") if not xs   # failed / not measured
                  else "(one run)" if len(runs) == 1 else f"(one run of {len(runs)})")
        meets = "-" if med is None or test is None else ("yes" if test(med) else "no")
        fl = [x for x in (at_floor[0](rec) for rec in runs if rec is not None) if x is not None] if at_floor else []
        floor = "-"
        if fl:
            f = statistics.median(fl)
            floor = f"{f:.2f}x" + ("" if test is None else " (goal reachable)" if test(f) else " (goal beyond it)")
        lines.append(f"| {label} | {goal} | {' | '.join(cells)} | {sp} | {meets} | {floor} |")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=interleave.count, default=3)
    ap.add_argument("--threads", type=interleave.count, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="dpo,train124,trainsmall,sample,rss")
    a = ap.parse_args()
    cmds = benches(a)
    keys = interleave.names_in(a.only, cmds, "--only", "row key")
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
                    records[k].append(None)   # the run keeps its column: the table shows it failed
                    continue
                with open(out) as f:
                    records[k].append(json.loads(f.read().strip().splitlines()[-1]))
                print(f"   ({time.time() - t0:.0f} s)", flush=True)
    print()
    print("\n".join(table(records, a.repeats)))
    sys.stdout.flush()
    failed = sum(rec is None for runs in records.values() for rec in runs)
    if failed:
        sys.exit(f"goals: {failed} of {sum(map(len, records.values()))} bench runs failed")


if __name__ == "__main__":
    main()
