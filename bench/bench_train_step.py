#!/usr/bin/python3
"""Training-step throughput: fdpo vs PyTorch on the same thread count.

One step = forward + backward of the mean next-token loss (SFT) + AdamW update, on B
sequences of T tokens (random ids), GPT-2 architecture. Each side runs in its own
subprocess; each reports tokens/s (mean over the timed steps after one warm-up step), its
best step, its CPU time per step (all threads; comparable on a busy machine at 1 thread,
inflated by spin-waiting at more) and its peak RSS (ru_maxrss).

    /usr/bin/python3 bench/bench_train_step.py                 # 124M at B=4,T=256 and a small config
    /usr/bin/python3 bench/bench_train_step.py --configs small --threads 2 --steps 5

The PyTorch side is a fair batched implementation: [B,T] tensors, one matmul per linear
layer over all B*T tokens, fused F.cross_entropy, torch.optim.AdamW, torch.set_num_threads(n).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
HARNESS = os.environ.get("FDPO_HARNESS", os.path.join(HERE, "../build/fdpo-harness"))

CONFIGS = {
    "124M": (dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12), 4, 256),
    "small": (dict(vocab_size=512, n_positions=256, n_embd=128, n_layer=4, n_head=4), 8, 128),
}


def torch_worker(cfg, B, T, steps, threads):
    import math
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    V, C, L, H = cfg["vocab_size"], cfg["n_embd"], cfg["n_layer"], cfg["n_head"]
    hs = C // H

    def w(*shape, std=0.02):
        return torch.nn.Parameter(torch.randn(*shape) * std)

    def z(*shape):
        return torch.nn.Parameter(torch.zeros(*shape))

    def o(*shape):
        return torch.nn.Parameter(torch.ones(*shape))

    wte, wpe = w(V, C), w(cfg["n_positions"], C)
    layers = [dict(ln1w=o(C), ln1b=z(C), qkvw=w(C, 3 * C), qkvb=z(3 * C), projw=w(C, C, std=0.02 / math.sqrt(2 * L)),
                   projb=z(C), ln2w=o(C), ln2b=z(C), fcw=w(C, 4 * C), fcb=z(4 * C),
                   fcprojw=w(4 * C, C, std=0.02 / math.sqrt(2 * L)), fcprojb=z(C)) for _ in range(L)]
    lnfw, lnfb = o(C), z(C)
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
        for l in layers:
            h = F.layer_norm(x, (C,), l["ln1w"], l["ln1b"], 1e-5)
            q, k, v = (h @ l["qkvw"] + l["qkvb"]).split(C, dim=-1)
            q, k, v = (t.view(B, T, H, hs).transpose(1, 2) for t in (q, k, v))
            att = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(hs))
            att = torch.softmax(att.masked_fill(~mask, float("-inf")), dim=-1)
            y = (att @ v).transpose(1, 2).reshape(B, T, C)
            x = x + y @ l["projw"] + l["projb"]
            h = F.layer_norm(x, (C,), l["ln2w"], l["ln2b"], 1e-5)
            h = F.gelu(h @ l["fcw"] + l["fcb"], approximate="tanh")
            x = x + h @ l["fcprojw"] + l["fcprojb"]
        x = F.layer_norm(x, (C,), lnfw, lnfb, 1e-5)
        loss = F.cross_entropy((x @ wte.t()).view(B * T, V), tgt.view(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    times, cpu = [], 0.0
    for s in range(steps + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        if s > 0:
            times.append(time.perf_counter() - t0)
            cpu += time.process_time() - c0
    return dict(impl="pytorch", tokens_per_sec=B * T * steps / sum(times), step_seconds=sum(times) / steps,
                best_step_seconds=min(times), cpu_seconds_per_step=cpu / steps, threads=threads, torch=torch.__version__,
                max_rss_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def run_fdpo(cfg, B, T, steps, threads):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "config.json")
        with open(path, "w") as f:
            json.dump(dict(cfg, model_type="gpt2"), f)
        r = subprocess.run([HARNESS, "model-bench", "--config", path, "--batch", str(B), "--seq", str(T),
                            "--steps", str(steps), "--threads", str(threads)], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"fdpo bench failed: {r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_torch(name, steps, threads):
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", name, "--steps", str(steps),
                        "--threads", str(threads)], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"pytorch bench failed: {r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--configs", default="small,124M", help="comma list of: " + ", ".join(CONFIGS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        cfg, B, T = CONFIGS[a.worker]
        print(json.dumps(torch_worker(cfg, B, T, a.steps, a.threads)))
        return
    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_WAIT_POLICY") if k in os.environ}
    print(f"threads {a.threads}, steps {a.steps} (+1 warm-up), env {env or 'no OPENBLAS/OMP overrides'}")
    for name in a.configs.split(","):
        cfg, B, T = CONFIGS[name]
        f = run_fdpo(cfg, B, T, a.steps, a.threads)
        t = run_torch(name, a.steps, a.threads)
        print(f"{name} (B={B}, T={T}, params {f['n_params'] / 1e6:.1f}M, AdamW {'yes' if f['adamw'] else 'no'}):")
        for r in (f, t):
            print(f"  {r['impl']:8s} {r['tokens_per_sec']:9.1f} tok/s  mean step {r['step_seconds']:.3f}s  "
                  f"best step {r['best_step_seconds']:.3f}s  CPU/step {r['cpu_seconds_per_step']:.3f}s  "
                  f"peak RSS {r['max_rss_kb'] / 1024:.0f} MiB")
        print(f"  ratio fdpo/pytorch: {f['tokens_per_sec'] / t['tokens_per_sec']:.2f}x (mean), "
              f"{t['best_step_seconds'] / f['best_step_seconds']:.2f}x (best step), "
              f"{t['cpu_seconds_per_step'] / f['cpu_seconds_per_step']:.2f}x (CPU time)")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
