#!/usr/bin/python3
"""DPO training-step throughput: fdpo vs a TRL-style PyTorch step, same thread count.

One step on P pairs (prompt 128 + chosen 64 + rejected 64 tokens, random ids, GPT-2 124M by
default) = policy forward + backward of the sigmoid DPO loss + gradient clipping + AdamW:
  pytorch        TRL's concatenated_forward: the 2P sequences prompt+chosen / prompt+rejected
                 as one [2P, T] batch through the policy, plus a live reference forward under
                 no_grad, log-softmax + gather over completion tokens, torch.optim.AdamW
  fdpo plain     the same two sequences per pair, live reference run every step
  fdpo shared    one sequence per pair [prompt | chosen | rejected] (prompt computed once),
                 cached reference log-probs (computed once before training: not timed)
Each side runs in its own process and reports pairs/s (mean over the timed steps after one
warm-up step), its best step and its peak RSS.

    /usr/bin/python3 bench/bench_dpo_step.py                       # 124M, 4 pairs, 2 threads
    /usr/bin/python3 bench/bench_dpo_step.py --config small --steps 2
"""
import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
HARNESS = os.environ.get("FDPO_HARNESS", os.path.join(HERE, "../build/fdpo-harness"))

CONFIGS = {
    "124M": dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12),
    "small": dict(vocab_size=512, n_positions=512, n_embd=128, n_layer=4, n_head=4),
}


def torch_worker(cfg, pairs, Tp, Tc, steps, threads):
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    V, C, L, H = cfg["vocab_size"], cfg["n_embd"], cfg["n_layer"], cfg["n_head"]
    hs = C // H

    def make_params(requires_grad):
        def w(*shape, std=0.02):
            return torch.nn.Parameter(torch.randn(*shape) * std, requires_grad=requires_grad)
        z = lambda *s: torch.nn.Parameter(torch.zeros(*s), requires_grad=requires_grad)
        o = lambda *s: torch.nn.Parameter(torch.ones(*s), requires_grad=requires_grad)
        return dict(wte=w(V, C), wpe=w(cfg["n_positions"], C), lnfw=o(C), lnfb=z(C), layers=[
            dict(ln1w=o(C), ln1b=z(C), qkvw=w(C, 3 * C), qkvb=z(3 * C), projw=w(C, C, std=0.02 / math.sqrt(2 * L)),
                 projb=z(C), ln2w=o(C), ln2b=z(C), fcw=w(C, 4 * C), fcb=z(4 * C),
                 fcprojw=w(4 * C, C, std=0.02 / math.sqrt(2 * L)), fcprojb=z(C)) for _ in range(L)])

    policy = make_params(True)
    ref = make_params(False)
    with torch.no_grad():  # the reference starts as a copy of the policy, as in DPO
        for k in ("wte", "wpe", "lnfw", "lnfb"):
            ref[k].copy_(policy[k])
        for lr_, lp in zip(ref["layers"], policy["layers"]):
            for k in lp:
                lr_[k].copy_(lp[k])
    params = [policy["wte"], policy["wpe"], policy["lnfw"], policy["lnfb"]] + [p for l in policy["layers"] for p in l.values()]
    opt = torch.optim.AdamW(params, lr=1e-6, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    T = Tp + Tc
    B = 2 * pairs  # concatenated chosen + rejected
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, V, (B, T), generator=g)
    pos = torch.arange(T)
    loss_mask = torch.zeros(B, T - 1)
    loss_mask[:, Tp - 1:] = 1  # targets that are completion tokens

    def forward(p):
        x = p["wte"][ids] + p["wpe"][pos]
        for l in p["layers"]:
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
        x = F.layer_norm(x, (C,), p["lnfw"], p["lnfb"], 1e-5)
        logits = x @ p["wte"].t()
        lp = torch.log_softmax(logits[:, :-1], dim=-1).gather(2, ids[:, 1:, None])[..., 0]
        return (lp * loss_mask).sum(-1)

    def step():
        logps = forward(policy)
        with torch.no_grad():
            ref_logps = forward(ref)
        lw, ll = (logps - ref_logps)[:pairs], (logps - ref_logps)[pairs:]
        loss = -F.logsigmoid(0.1 * (lw - ll)).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    times = []
    for s in range(steps + 1):
        t0 = time.perf_counter()
        step()
        if s > 0:
            times.append(time.perf_counter() - t0)
    return dict(impl="pytorch-trl-live", pairs_per_sec=pairs * steps / sum(times), step_seconds=sum(times) / steps,
                best_step_seconds=min(times), tokens_per_step=2 * B * T, threads=threads, torch=torch.__version__,
                max_rss_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def run_fdpo(cfg, layout, ref, a):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "config.json")
        with open(path, "w") as f:
            json.dump(dict(cfg, model_type="gpt2"), f)
        r = subprocess.run([HARNESS, "dpo-bench", "--config", path, "--layout", layout, "--ref", ref,
                            "--pairs", str(a.pairs), "--prompt", str(a.prompt), "--chosen", str(a.completion),
                            "--rejected", str(a.completion), "--steps", str(a.steps), "--threads", str(a.threads)],
                           capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"fdpo bench failed: {r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_torch(a):
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", "--config", a.config,
                        "--pairs", str(a.pairs), "--prompt", str(a.prompt), "--completion", str(a.completion),
                        "--steps", str(a.steps), "--threads", str(a.threads)], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"pytorch bench failed: {r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--config", default="124M", choices=sorted(CONFIGS))
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--completion", type=int, default=64, help="tokens of chosen and of rejected")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    cfg = CONFIGS[a.config]
    if a.worker:
        print(json.dumps(torch_worker(cfg, a.pairs, a.prompt, a.completion, a.steps, a.threads)))
        return
    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}
    print(f"{a.config}: {a.pairs} pairs x (prompt {a.prompt} + chosen {a.completion} + rejected {a.completion}); "
          f"threads {a.threads}, steps {a.steps} (+1 warm-up), env {env or 'no OPENBLAS overrides'}")
    sys.stdout.flush()
    t = run_torch(a)
    results = [t, run_fdpo(cfg, "plain", "live", a), run_fdpo(cfg, "shared", "cached", a)]
    for r in results:
        print(f"  {r['impl']:20s} {r['pairs_per_sec']:8.3f} pairs/s  mean step {r['step_seconds']:.3f}s  "
              f"best step {r['best_step_seconds']:.3f}s  tokens/step {r['tokens_per_step']}  "
              f"peak RSS {r['max_rss_kb'] / 1024:.0f} MiB  ratio vs pytorch {r['pairs_per_sec'] / t['pairs_per_sec']:.2f}x")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
