#!/usr/bin/python3
"""fdpo against an older build of itself, interleaved: the DPO step and the online / RL phases.

For changes that PyTorch-relative benches cannot resolve (a few percent inside one phase), two
fdpo builds run the same work in one invocation, turn about, so that a machine whose load
moves treats both alike:
  dpo     the DPO step of bench_dpo_step.py's goal side (fdpo-harness dpo-bench, shared
          layout, cached reference; 4 pairs x (128 + 64 + 64) at 124M): two step servers
          interleaved (bench/interleave.py), median wall and CPU seconds per step, and each
          server's peak RSS (ru_maxrss of the whole process, model and optimizer included)
  online  one `fdpo online` round as bench_online.py runs it (its fdpo side), phases from
          fdpo's metrics: sampling, scoring, training
  rl      one `fdpo rl` step as bench_rl.py runs it, the same phases
Each side's median, and old / new (> 1: the new build is faster).

    /usr/bin/python3 bench/ab_binaries.py --baseline-dir /work/fdpo-wave7-build --config 124M --precision bf16
    /usr/bin/python3 bench/ab_binaries.py --baseline-dir DIR --what dpo --steps 7

--baseline-dir holds the older build's fdpo and fdpo-harness; the new build is FDPO_BIN /
FDPO_HARNESS (default: build/).
"""
import argparse
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_online  # noqa: E402
import bench_rl  # noqa: E402
import interleave  # noqa: E402
from bench_dpo_step import CONFIGS as DPO_CONFIGS  # noqa: E402
from bench_sample import CONFIGS, make_checkpoint  # noqa: E402


def ab_dpo(a, builds):
    import json
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "config.json")
        with open(path, "w") as f:
            json.dump(dict(DPO_CONFIGS[a.config], model_type="gpt2"), f)
        servers = [interleave.StepServer(name, [b["harness"], "dpo-bench", "--config", path, "--layout", "shared",
                                                "--ref", "cached", "--pairs", "4", "--prompt", "128", "--chosen", "64",
                                                "--rejected", "64", "--threads", str(a.threads), "--precision",
                                                a.precision, "--serve"])
                   for name, b in builds.items()]
        interleave.interleave(servers, a.steps)
        tails = {s.name: s.close() for s in servers}
    med = {}
    for s in servers:
        w = interleave.stats(s.times)
        c = statistics.median(s.cpu_times) if s.cpu_times else float("nan")
        rss = tails[s.name].get("max_rss_kb", 0) / 1024
        med[s.name] = w["median"]
        print(f"  dpo step {a.config} {a.precision} {s.name:4s}: wall median {w['median']:.3f}s best {w['best']:.3f}s "
              f"(n {w['n']}, IQR {w['iqr']:.3f})  CPU {c:.3f}s/step  peak RSS {rss:.0f} MiB", flush=True)
    print(f"  dpo step old/new: {med['old'] / med['new']:.3f}x")


def ab_phases(a, builds, what):
    run = bench_online.fdpo_online if what == "online" else bench_rl.fdpo_rl
    res = {name: [] for name in builds}
    with tempfile.TemporaryDirectory() as tmp:
        d = os.path.join(tmp, "model")
        make_checkpoint(CONFIGS[a.config], d)
        with open(os.path.join(tmp, "prompts.txt"), "w") as f:
            f.write("\n".join(bench_online.prompt_texts(a.prompts, a.prompt_tokens)) + "\n")
        names = list(builds)
        for r in range(a.runs):
            for name in names[r % 2:] + names[:r % 2]:   # turn about: neither always runs first
                # the binary is passed, not set as the module's FDPO: run's default `binary=FDPO`
                # was bound when it was defined, so the old build would never run
                t = run(d, tmp, a, a.precision, builds[name]["fdpo"])
                res[name].append(t)
                print(f"  {what} run {r + 1} {name}: " + " ".join(f"{p} {t[p]:.3f}" for p in bench_online.PHASES),
                      flush=True)
    med = {n: {p: statistics.median(x[p] for x in res[n]) for p in bench_online.PHASES} for n in res}
    for n in res:
        print(f"  {what} {a.config} {a.precision} {n:4s} median: " +
              " ".join(f"{p} {med[n][p]:.3f}s" for p in bench_online.PHASES))
    print(f"  {what} old/new: " + " ".join(f"{p} {med['old'][p] / med['new'][p]:.3f}x" for p in bench_online.PHASES))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--baseline-dir", required=True, help="directory of the older build's fdpo and fdpo-harness")
    ap.add_argument("--what", default="dpo,online,rl", help="comma list of: dpo, online, rl")
    ap.add_argument("--config", default="124M", choices=sorted(CONFIGS))
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--threads", type=interleave.count, default=2)
    ap.add_argument("--steps", type=interleave.count, default=5, help="dpo: timed steps per build after the warm-up (>= 5)")
    ap.add_argument("--runs", type=interleave.count, default=3, help="online, rl: runs per build")
    a = ap.parse_args()
    a.prompts, a.n, a.new_tokens, a.prompt_tokens = 4, 4, 64, 16   # bench_online's / bench_rl's defaults
    builds = {"new": {"fdpo": bench_online.FDPO, "harness": interleave.HARNESS},
              "old": {"fdpo": os.path.join(a.baseline_dir, "fdpo"), "harness": os.path.join(a.baseline_dir, "fdpo-harness")}}
    for b in builds.values():
        for k, p in b.items():
            if not interleave.is_executable(p):
                sys.exit(f"--baseline-dir: {p} is not an executable {k}")
    whats = interleave.names_in(a.what, ("dpo", "online", "rl"), "--what", "run")
    print(f"fdpo new ({builds['new']['fdpo']}) vs old ({builds['old']['fdpo']}), {a.config} {a.precision}, "
          f"{a.threads} threads; load average {os.getloadavg()[0]:.1f}", flush=True)
    for what in whats:
        if what == "dpo":
            ab_dpo(a, builds)
        else:
            ab_phases(a, builds, what)
    print(f"  load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
