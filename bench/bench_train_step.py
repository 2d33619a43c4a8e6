"""Training-step throughput: fdpo vs PyTorch, interleaved in one invocation, same threads.

One step = forward + backward of the mean next-token loss (SFT) + AdamW update, on B
sequences of T tokens (random ids), GPT-2 architecture. Four sides, each a long-lived
subprocess stepped in turn (bench/interleave.py: fdpo step, torch step, ...): warm-up rounds
until every side has run >= 2 steps and >= 1.5 s, then timed rounds until every side has >= 5
timed steps and >= 2 s of them (the small config's 40 ms fdpo steps: ~50 samples, so the
median holds still while the machine's load moves; see docs/model.md#benchmarks):
  fdpo-fp32      fdpo-harness model-bench --serve --precision fp32 (the chunked LM head, as
                 fdpo pretrain/sft run it)
  fdpo-bf16      the same with --precision bf16 (bf16 matmul inputs, fp32 accumulation)
  torch-fp32     a batched PyTorch implementation (below)
  torch-bf16     the same step under torch.autocast("cpu", dtype=torch.bfloat16), which is
                 what TRL's bf16=True does
Prints the machine's peaks measured in the same run (fp32 sgemm, bf16 GEMM, STREAM triad),
then per side: median and best step, tokens/s, achieved GFLOP/s as a % of the matching GEMM
peak, and the ratio of medians against torch-fp32; then each fdpo side's floor (its FLOPs,
causal attention pairs only, at the GEMM peak of its precision: interleave.step_floor) and
the ratio to each PyTorch side's median a step at the floor would give, the most that side
could reach on this machine.

    /usr/bin/python3 bench/bench_train_step.py                       # small config (default)
    /usr/bin/python3 bench/bench_train_step.py --configs 124M --steps 5 --threads 2
    /usr/bin/python3 bench/bench_train_step.py --sides fdpo-fp32,torch-fp32
    /usr/bin/python3 bench/bench_train_step.py --sides fdpo-fp32,torch-fp32,base-fp32 --baseline /tmp/old/fdpo-harness

--baseline HARNESS adds base-fp32 / base-bf16: the same model-bench server from another
build (e.g. main before a change), so a before/after A/B runs interleaved in one invocation.

The PyTorch side is a fair batched implementation: [B,T] tensors, one matmul per linear
layer over all B*T tokens, fused F.cross_entropy, torch.optim.AdamW, torch.set_num_threads(n).
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import interleave  # noqa: E402

CONFIGS = {
    "124M": (dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12), 4, 256),
    "small": (dict(vocab_size=512, n_positions=256, n_embd=128, n_layer=4, n_head=4), 8, 128),
}
SIDES = ["fdpo-fp32", "fdpo-bf16", "torch-fp32", "torch-bf16"]
BASE_SIDES = ["base-fp32", "base-bf16"]  # --baseline HARNESS


def torch_worker(cfg, B, T, threads, bf16):
    """Step server (interleave.StepServer protocol) for the PyTorch side."""
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    V, C, H = cfg["vocab_size"], cfg["n_embd"], cfg["n_head"]
    gpt2 = interleave.torch_gpt2_params(cfg)
    wte, wpe, layers, lnfw, lnfb = gpt2["wte"], gpt2["wpe"], gpt2["layers"], gpt2["lnfw"], gpt2["lnfb"]
    decay = [wte, wpe] + [p for l in layers for k, p in l.items() if k.endswith("w") and not k.startswith("ln")]
    no_decay = [lnfw, lnfb] + [p for l in layers for k, p in l.items() if not (k.endswith("w") and not k.startswith("ln"))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.95), eps=1e-8)
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    g = torch.Generator().manual_seed(7)
    idx = torch.randint(0, V, (B, T), generator=g)
    tgt = torch.randint(0, V, (B, T), generator=g)
    pos = torch.arange(T)

    def step():
        x = wte[idx] + wpe[pos]
        x = interleave.torch_gpt2_blocks(x, layers, mask, H)
        x = F.layer_norm(x, (C,), lnfw, lnfb, 1e-5)
        loss = F.cross_entropy((x @ wte.t()).view(B * T, V), tgt.view(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    interleave.serve_torch_steps(step, bf16)


def server(side, name, cfg_path, B, T, threads, baseline=None):
    if side.startswith(("fdpo", "base")):
        harness = baseline if side.startswith("base") else interleave.HARNESS
        return interleave.StepServer(side, [harness, "model-bench", "--config", cfg_path, "--batch", str(B),
                                            "--seq", str(T), "--threads", str(threads), "--serve",
                                            "--precision", side.split("-")[1]])
    return interleave.StepServer(side, interleave.torch_cmd([sys.executable, os.path.abspath(__file__), "--worker", name,
                                        "--threads", str(threads)] + (["--bf16"] if side == "torch-bf16" else [])))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--configs", default="small", help="comma list of: " + ", ".join(CONFIGS))
    ap.add_argument("--threads", type=interleave.count, default=2)
    ap.add_argument("--steps", type=interleave.count, default=5, help="timed steps per side after the warm-up (at least 5)")
    ap.add_argument("--warmup", type=int, default=interleave.WARMUP_STEPS, help="warm-up steps per side, untimed (at least this many ...)")
    ap.add_argument("--warmup-seconds", type=float, default=1.5, help="... and at least this long per side)")
    ap.add_argument("--min-seconds", type=float, default=2.0,
                    help="timed rounds continue until every side's timed steps add up to this many seconds")
    ap.add_argument("--sides", default=",".join(SIDES), help="comma list of: " + ", ".join(SIDES))
    interleave.add_triad_arg(ap)  # default: STREAM's rule (bench/bandwidth.py), the same in every bench
    ap.add_argument("--quick", action="store_true",
                    help=">= 5 timed steps (and --min-seconds), the goal sides only (fdpo-bf16, fdpo-fp32 on the small config, torch-fp32, "
                         "torch-bf16)")
    ap.add_argument("--baseline", help="another fdpo-harness (e.g. a build from before a change): adds the sides "
                    "base-fp32 / base-bf16 (for each fdpo side run), stepped in turn with the others")
    ap.add_argument("--json", help="append one JSON line per config with each side's median step seconds")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        cfg, B, T = CONFIGS[a.worker]
        torch_worker(cfg, B, T, a.threads, a.bf16)
        return
    configs = interleave.names_in(a.configs, CONFIGS, "--configs", "config")
    if a.quick:
        a.steps = interleave.MIN_TIMED_STEPS
    sides = interleave.names_in(a.sides, SIDES + (BASE_SIDES if a.baseline else []), "--sides", "side",
                                "; base-* need --baseline HARNESS")
    if a.baseline:
        if not interleave.is_executable(a.baseline):
            sys.exit(f"--baseline: {a.baseline} is not an executable file")
        if a.sides == ",".join(SIDES) or a.quick:
            sides += [b for b in BASE_SIDES if b.replace("base", "fdpo") in sides]
    env = interleave.set_fair_env()
    print(f"threads {a.threads}, >= {max(a.steps, interleave.MIN_TIMED_STEPS)} timed steps and >= {a.min_seconds:g} s "
          f"per side after >= {a.warmup} warm-up steps and >= {a.warmup_seconds:g} s, "
          f"interleaved; env {env or 'no OPENBLAS/OMP overrides'}; load average {os.getloadavg()[0]:.1f}")
    peaks = interleave.machine_peaks(a.threads, triad_mib=a.triad_mib)
    interleave.print_peaks(peaks)
    for name in configs:
        cfg, B, T = CONFIGS[name]
        with interleave.gpt2_config_file(cfg) as path:
            run_sides = [s for s in sides if not (a.quick and name != "small" and s in ("fdpo-fp32", "base-fp32"))]
            servers = [server(s, name, path, B, T, a.threads, a.baseline) for s in run_sides]
            interleave.interleave(servers, a.steps, warmup=a.warmup, min_seconds=a.min_seconds,
                                  warmup_seconds=a.warmup_seconds)
            tails = {s.name: s.close() for s in servers}
        n_params = next((s.ready["n_params"] for s in servers if "n_params" in s.ready), 0)
        print(f"{name} (B={B}, T={T}, params {n_params / 1e6:.1f}M, AdamW):")
        interleave.report(servers, interleave.gpt2_train_flops(cfg, [T] * B), peaks,
                          baseline="torch-fp32" if "torch-fp32" in sides else None,
                          unit_per_step=B * T, unit="tok/s")
        floor_s = interleave.floors(servers, interleave.gpt2_train_flops(cfg, [T] * B, causal=True), peaks)
        if floor_s:
            print(interleave.floor_line(floor_s, servers))
        print("  peak RSS " + ", ".join(f"{k} {v.get('max_rss_kb', 0) / 1024:.0f} MiB" for k, v in tails.items()))
        print(f"  load average after: {os.getloadavg()[0]:.1f}")
        interleave.write_json(a.json, {"bench": "train_step", "config": name, "B": B, "T": T, "threads": a.threads,
                                       "median_seconds": interleave.medians(servers), "floor_seconds": floor_s,
                                       "peaks": peaks})
        sys.stdout.flush()


if __name__ == "__main__":
    main()
