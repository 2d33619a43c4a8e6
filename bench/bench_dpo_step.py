#!/usr/bin/python3
"""DPO training-step throughput: fdpo vs a TRL-style PyTorch step, interleaved, same threads.

One step on P pairs (prompt 128 + chosen 64 + rejected 64 tokens, random ids) = policy
forward + backward of the sigmoid DPO loss + gradient clipping + AdamW. Sides (each a
long-lived subprocess, stepped in turn by bench/interleave.py until every side has >= 5
timed steps after two warm-up steps):
  torch-fp32                TRL's concatenated_forward: the 2P sequences prompt+chosen /
                            prompt+rejected as one [2P, T] batch through the policy, plus a
                            live reference forward under no_grad, log-softmax + gather over
                            completion tokens, torch.optim.AdamW
  torch-bf16                the same under torch.autocast("cpu", dtype=torch.bfloat16)
                            (TRL's bf16=True)
  fdpo-plain-live-fp32      the same two sequences per pair, live reference every step
  fdpo-shared-cached-fp32   one sequence per pair [prompt | chosen | rejected] (prompt once),
                            cached reference log-probs (computed before the clock starts)
  fdpo-shared-cached-bf16   the same with --precision bf16
Prints the machine's measured peaks first, then median/best step, pairs/s, GFLOP/s of the
policy forward+backward as a % of the matching GEMM peak, and ratios of medians vs
torch-fp32; then fdpo's own FLOPs per step (shared layout: completion rows only in the LM
head, kept head logits) and the floor they put on each shared side's step: those FLOPs at
the GEMM peak of its precision measured in the same run (interleave.step_floor), with the
ratio to each PyTorch side's median that a step at the floor would give: the most that side
could reach on this machine; then,
per fdpo side, its step's phases as dpo-bench reports them (medians): the forward +
backward against its GEMM peak, and AdamW, the gradient norm and the zeroing of the
gradients in GB/s against the DRAM triad (PHASE_BYTES per parameter).

    /usr/bin/python3 bench/bench_dpo_step.py                       # small config, 4 pairs
    /usr/bin/python3 bench/bench_dpo_step.py --config 124M --steps 5
    /usr/bin/python3 bench/bench_dpo_step.py --peak-rss --config 124M --pairs 1 --prompt 512 --completion 512
    /usr/bin/python3 bench/bench_dpo_step.py --thread-scaling --config 124M [--precision-scaling bf16]

--peak-rss: peak resident memory (getrusage ru_maxrss) over three steps (RSS_STEPS: a
training run's peak, not its first step's), each side in its own fresh process run alone
(so no side's allocations count against another), reported in MiB and as a % of each
PyTorch side's. The goal row of issue #13 is the 124M step at
T = 1024 (TRL's concatenated sequences: prompt 512 + completion 512): <= 60 % of PyTorch.
"""
import argparse
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import interleave  # noqa: E402

CONFIGS = {
    "124M": dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12),
    "small": dict(vocab_size=512, n_positions=512, n_embd=128, n_layer=4, n_head=4),
}
SIDES = ["torch-fp32", "torch-bf16", "fdpo-plain-live-fp32", "fdpo-shared-cached-fp32", "fdpo-shared-cached-bf16"]


def torch_worker(cfg, pairs, Tp, Tc, threads, bf16):
    """Step server (interleave.StepServer protocol) for the PyTorch side."""
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    V, C, H = cfg["vocab_size"], cfg["n_embd"], cfg["n_head"]

    policy = interleave.torch_gpt2_params(cfg, True)
    ref = interleave.torch_gpt2_params(cfg, False)
    with torch.no_grad():  # the reference starts as a copy of the policy, as in DPO
        for k in ("wte", "wpe", "lnfw", "lnfb"):
            ref[k].copy_(policy[k])
        for lr_, lp in zip(ref["layers"], policy["layers"]):
            for k in lp:
                lr_[k].copy_(lp[k])
    params = [policy["wte"], policy["wpe"], policy["lnfw"], policy["lnfb"]] + [p for l in policy["layers"] for p in l.values()]
    opt = torch.optim.AdamW(params, lr=1e-6, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    T = Tp + Tc
    ids, mask, loss_mask = interleave.torch_dpo_batch(V, pairs, Tp, Tc)
    pos = torch.arange(T)

    def forward(p):
        x = p["wte"][ids] + p["wpe"][pos]
        x = interleave.torch_gpt2_blocks(x, p["layers"], mask, H)
        x = F.layer_norm(x, (C,), p["lnfw"], p["lnfb"], 1e-5)
        logits = x @ p["wte"].t()
        lp = torch.log_softmax(logits[:, :-1], dim=-1).gather(2, ids[:, 1:, None])[..., 0]
        return (lp * loss_mask).sum(-1)

    interleave.serve_torch_dpo_steps(lambda: forward(policy), lambda: forward(ref), pairs, params, opt, bf16)


def fdpo_shared_flops(cfg, pairs, Tp, Tc):
    """FLOPs of the shared-layout step as fdpo computes it (docs/model.md, the 124M step's
    floor): each pair packed as [prompt | chosen | rejected] less the last rejected token,
    the linear layers over every token (forward + d input + d weight) except the last
    block's c_proj and MLP, which run on the K rows the LM head reads (docs/model.md, "The
    last block on the head's rows"), the LM head over those completion rows only (forward +
    d input + d wte; the forward's logits are kept for the backward), and the attention
    pairs the branch mask allows (QK^T and PV forward, ~2.5x that backward)."""
    C, L, V = cfg["n_embd"], cfg["n_layer"], cfg["vocab_size"]
    N, K = pairs * (Tp + 2 * Tc - 1), pairs * 2 * Tc
    tri = lambda n: n * (n + 1) // 2  # noqa: E731
    qk = pairs * (tri(Tp) + Tc * Tp + tri(Tc) + (Tc - 1) * Tp + tri(Tc - 1))
    linear = 12 * C * C * N * (L - 1) + (3 * C * C * N + 9 * C * C * K)
    return 3 * 2 * linear + 3 * 2 * K * C * V + 3.5 * 4 * C * qk * L


# bytes per parameter each optimizer pass moves: AdamW reads param, grad, m, v and writes
# param, m, v (and, in bf16, the param's bf16 copy: fdpo_model_params_updated); the gradient
# norm reads the grads; zeroing writes them
PHASE_BYTES = {"adamw": 28, "grad_norm": 4, "zero_grad": 4}


def phases_line(s, own_flops, peaks):
    """Where an fdpo side's step goes (medians of its timed steps): the forward + backward
    (fdpo_dpo_step) in GFLOP/s against the GEMM peak of its precision, each optimizer pass in
    GB/s against the DRAM triad (PHASE_BYTES per parameter), and the step's remainder.
    own_flops is the shared layout's work with a cached reference (fdpo_shared_flops): the
    GFLOP/s is given for the fdpo-shared sides only; the plain-live side computes TRL's layout
    (the prompt twice) and a reference forward, about twice that work, so its rate against
    own_flops would be about half the truth (its time alone is shown)."""
    med = {k: statistics.median(p[k] for p in s.phases) for k in s.phases[0]}
    bf16 = s.name.endswith("bf16")
    peak = peaks["bf16_gflops"] if bf16 else peaks["sgemm_gflops"]
    fb = med["forward_backward"]
    g = own_flops / fb * 1e-9
    rate = (f" ({g:.0f} GFLOP/s = {100 * g / peak:.0f}% of the {'bf16' if bf16 else 'sgemm'} peak)"
            if s.name.startswith("fdpo-shared-cached") else "")
    parts = [f"forward+backward {fb:.3f}s{rate}"]
    for k in ("adamw", "grad_norm", "zero_grad"):
        gbs = s.ready["n_params"] * (PHASE_BYTES[k] + (2 if k == "adamw" and bf16 else 0)) / med[k] * 1e-9
        parts.append(f"{k} {1e3 * med[k]:.1f} ms ({gbs:.0f} GB/s = {100 * gbs / peaks['triad_gbs']:.0f}% of the triad)")
    rest = statistics.median(s.times) - sum(med.values())
    return f"  {s.name} phases (medians): " + ", ".join(parts) + f"; median step less these {1e3 * rest:+.1f} ms"


def server(side, cfg_path, a, threads=None, env=None):
    if side.startswith("fdpo"):
        _, layout, ref, prec = side.split("@")[0].split("-")
        return interleave.StepServer(side, [interleave.HARNESS, "dpo-bench", "--config", cfg_path, "--layout", layout,
                                            "--ref", ref, "--pairs", str(a.pairs), "--prompt", str(a.prompt),
                                            "--chosen", str(a.completion), "--rejected", str(a.completion),
                                            "--threads", str(threads or a.threads), "--precision", prec, "--serve"],
                                     env=env)
    return interleave.StepServer(side, interleave.torch_cmd([sys.executable, os.path.abspath(__file__), "--worker", "--config", a.config,
                                        "--pairs", str(a.pairs), "--prompt", str(a.prompt), "--completion",
                                        str(a.completion), "--threads", str(a.threads)]
                                 + (["--bf16"] if side == "torch-bf16" else [])))


# Steps per side for --peak-rss: a training run's peak, not its first step's. In step 1
# AdamW's state does not exist yet during the backward; from step 2 it lives beside the
# activations and gradients. Measured in wave 20 (124M, 1 pair, T = 1024): PyTorch fp32
# 5415 MiB after one step, 6412 after two, 6593 after three; fdpo allocates its state up
# front (bf16 3126 / 3132 / 3132 MiB, fp32 2860 flat).
RSS_STEPS = 3


def peak_rss(sides, a):
    """RSS_STEPS steps per side, each side in a fresh process started after the previous one
    ended; prints peak RSS (MiB) and each fdpo side's as a % of each torch side's."""
    cfg = CONFIGS[a.config]
    rss = {}
    with interleave.gpt2_config_file(cfg) as path:
        for side in sides:
            srv = server(side, path, a)
            seconds = [srv.step()["seconds"] for _ in range(RSS_STEPS)]
            rss[side] = srv.close().get("max_rss_kb", 0) / 1024
            print(f"  {side:24s} peak RSS {rss[side]:8.0f} MiB  ({RSS_STEPS} steps, the last {seconds[-1]:.1f} s)",
                  flush=True)
    interleave.write_json(a.json, {"bench": "dpo_peak_rss", "config": a.config, "pairs": a.pairs, "prompt": a.prompt,
                                   "completion": a.completion, "threads": a.threads, "rss_mib": rss})
    for side in sides:
        if side.startswith("fdpo"):
            vs = [f"{100 * rss[side] / rss[t]:.0f}% of {t}" for t in sides if t.startswith("torch") and rss[t] > 0]
            if vs:
                print(f"  {side:24s} " + ", ".join(vs))
    sys.stdout.flush()


def thread_scaling(cfg_path, a):
    """fdpo's DPO step at 1 thread and at a.threads threads (and, for the wait policy, at
    a.threads with GOMP_SPINCOUNT=100000: libgomp's threads then spin ~5 ms before they
    sleep between parallel regions instead of ~50 us), interleaved: median wall and process
    CPU seconds per step, the speedup wall(1) / wall(N) and its efficiency speedup / N. CPU
    seconds that stay flat while the wall time does not halve point at waiting (serial
    stretches, barriers, wake-ups), not at extra work."""
    prec = a.precision_scaling
    side = f"fdpo-shared-cached-{prec}"
    servers = [server(side, cfg_path, a, threads=1), server(side, cfg_path, a, threads=a.threads)]
    servers[0].name, servers[1].name = f"{side}@1t", f"{side}@{a.threads}t"
    env = dict(os.environ, GOMP_SPINCOUNT="100000")
    spin = server(side, cfg_path, a, threads=a.threads, env=env)
    spin.name = f"{side}@{a.threads}t-spin100k"
    servers.append(spin)
    interleave.interleave(servers, a.steps)
    for s in servers:
        s.close()
    base = interleave.stats(servers[0].times)["median"]
    for s in servers:
        w = interleave.stats(s.times)
        c = interleave.stats(s.cpu_times)["median"] if s.cpu_times else float("nan")
        line = f"  {s.name:40s} wall median {w['median']:.3f}s best {w['best']:.3f}s  CPU {c:.3f}s/step"
        if s is not servers[0]:
            line += f"  speedup {base / w['median']:.2f}x = {100 * base / w['median'] / a.threads:.0f}% efficiency"
        print(line)
    interleave.write_json(a.json, {"bench": "dpo_thread_scaling", "config": a.config, "pairs": a.pairs,
                                   "threads": a.threads, "median_seconds": interleave.medians(servers),
                                   "median_cpu_seconds": {s.name: interleave.stats(s.cpu_times)["median"]
                                                          for s in servers if s.cpu_times}})
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--config", default="small", choices=sorted(CONFIGS))
    ap.add_argument("--pairs", type=interleave.count, default=4)
    ap.add_argument("--prompt", type=interleave.count, default=128)
    ap.add_argument("--completion", type=interleave.count, default=64, help="tokens of chosen and of rejected")
    ap.add_argument("--threads", type=interleave.count, default=2)
    ap.add_argument("--steps", type=interleave.count, default=5, help="timed steps per side after the warm-up (at least 5)")
    ap.add_argument("--sides", default=",".join(SIDES), help="comma list of: " + ", ".join(SIDES))
    interleave.add_triad_arg(ap)  # default: STREAM's rule (bench/bandwidth.py), the same in every bench
    ap.add_argument("--quick", action="store_true",
                    help="5 timed steps, the goal sides only (torch-fp32, torch-bf16, fdpo-shared-cached-bf16)")
    ap.add_argument("--json", help="append one JSON line with each side's median step seconds (or peak RSS MiB)")
    ap.add_argument("--peak-rss", action="store_true",
                    help="measure each side's peak RSS over RSS_STEPS (3) steps, in separate processes, instead of timing")
    ap.add_argument("--thread-scaling", action="store_true",
                    help="fdpo only: the step at 1 thread vs --threads (and with a longer OpenMP spin), wall and CPU "
                         "seconds, speedup and efficiency")
    ap.add_argument("--precision-scaling", default="fp32", choices=["fp32", "bf16"],
                    help="precision of the --thread-scaling sides")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    cfg = CONFIGS[a.config]
    if a.worker:
        torch_worker(cfg, a.pairs, a.prompt, a.completion, a.threads, a.bf16)
        return
    if a.quick:
        a.steps = interleave.MIN_TIMED_STEPS
        if a.sides == ",".join(SIDES):
            a.sides = "torch-fp32,torch-bf16,fdpo-shared-cached-bf16"
    sides = interleave.names_in(a.sides, SIDES, "--sides", "side")
    env = interleave.set_fair_env()
    print(f"{a.config}: {a.pairs} pairs x (prompt {a.prompt} + chosen {a.completion} + rejected {a.completion}); "
          f"threads {a.threads}, >= {max(a.steps, interleave.MIN_TIMED_STEPS)} timed steps per side (+{interleave.WARMUP_STEPS} warm-up), "
          f"interleaved; env {env or 'no OPENBLAS overrides'}; load average {os.getloadavg()[0]:.1f}")
    if a.peak_rss:
        peak_rss(sides, a)
        return
    if a.thread_scaling:
        with interleave.gpt2_config_file(cfg) as path:
            thread_scaling(path, a)
        return
    peaks = interleave.machine_peaks(a.threads, triad_mib=a.triad_mib)
    interleave.print_peaks(peaks)
    with interleave.gpt2_config_file(cfg) as path:
        servers = [server(s, path, a) for s in sides]
        interleave.interleave(servers, a.steps)
        tails = {s.name: s.close() for s in servers}
    # the policy's forward + backward over what TRL computes: 2P sequences of prompt + completion
    flops = interleave.gpt2_train_flops(cfg, [a.prompt + a.completion] * (2 * a.pairs))
    print(f"  (GFLOP/s counts the TRL-layout policy forward+backward, {flops / 1e9:.1f} GFLOP/step, for every side)")
    interleave.report(servers, flops, peaks, baseline="torch-fp32" if "torch-fp32" in sides else None,
                      unit_per_step=a.pairs, unit="pairs/s")
    own = fdpo_shared_flops(cfg, a.pairs, a.prompt, a.completion)
    line = f"  fdpo's own work, shared layout: {own / 1e9:.1f} GFLOP/step"
    for s in servers:
        if s.name.startswith("fdpo-shared"):
            line += f"; {s.name} {own / interleave.stats(s.times)['median'] * 1e-9:.0f} GFLOP/s"
    print(line)
    # the floor of the shared sides at that work; the plain-live side computes TRL's layout
    # and a reference forward, so its floor is not this one
    floor_s = {k: v for k, v in interleave.floors(servers, own, peaks).items() if k.startswith("fdpo-shared")}
    if floor_s:
        print(interleave.floor_line(floor_s, servers))
    for s in servers:
        if s.phases:
            print(phases_line(s, own, peaks))
    print("  peak RSS " + ", ".join(f"{k} {v.get('max_rss_kb', 0) / 1024:.0f} MiB" for k, v in tails.items()))
    print(f"  load average after: {os.getloadavg()[0]:.1f}")
    interleave.write_json(a.json, {"bench": "dpo_step", "config": a.config, "pairs": a.pairs, "prompt": a.prompt,
                                   "completion": a.completion, "threads": a.threads,
                                   "median_seconds": interleave.medians(servers), "floor_seconds": floor_s,
                                   "peaks": peaks})
    sys.stdout.flush()


if __name__ == "__main__":
    main()
