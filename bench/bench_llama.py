#!/usr/bin/python3
"""Llama DPO training step: fdpo vs a TRL-style PyTorch step, full weights and LoRA, fp32 and bf16.

The model is a random-init Llama (RMSNorm, rotate-half RoPE, grouped-query attention,
SwiGLU, tied embeddings); --smollm gives SmolLM2-135M's shape (30 layers, hidden 576, 9
heads, 3 KV heads, intermediate 1536, vocab 49152, tied), the default a small shape for a
quick run. One step on P pairs (prompt + chosen + rejected, random ids) = policy forward +
backward of the sigmoid DPO loss + gradient clipping + AdamW.

Interleaved step servers (bench/interleave.py: two warm-up steps, then rounds until each side
has >= 5 timed steps, medians and best, ratio of medians vs torch-fp32):
  torch-fp32        TRL's concatenated_forward: the 2P sequences prompt+chosen /
                    prompt+rejected as one [2P, T] batch through a Llama written here, a live
                    reference forward under no_grad (TRL's default), log-softmax + gather over
                    completion tokens, torch.optim.AdamW
  torch-bf16        the same under torch.autocast("cpu", dtype=torch.bfloat16) (TRL's bf16=True)
  fdpo-fp32         fdpo-harness dpo-bench: one sequence per pair [prompt | chosen | rejected],
                    cached reference log-probs (computed before the clock starts)
  fdpo-bf16         the same with --precision bf16
With --lora, also LoRA r=16, alpha=32 on q_proj,k_proj,v_proj,o_proj:
  torch-lora-fp32/-bf16   a hand-written LoRA (PEFT's layout and init: A [r, in] Kaiming-
                    uniform, B [out, r] zeros, y = x W^T + (alpha/r) x A^T B^T; PEFT is not in
                    Debian); base weights frozen, AdamW over A and B; the reference is the
                    same model with the adapters disabled (what TRL does with a PEFT model)
  fdpo-lora-fp32/-bf16    `fdpo dpo --lora-r 16 --lora-alpha 32 --lora-targets
                    q_proj,k_proj,v_proj,o_proj` on a checkpoint of the same shape, beside
                    `fdpo dpo` with full weights (fdpo-cli-fp32/-bf16) for the memory
                    comparison. A CLI run is one process, so these sides are not stepped in
                    turn with the others: each runs warm-up + n steps on its own, between
                    the interleaved rounds, and its step seconds are the median over the
                    steps after the warm-up of tokens / tokens_per_sec from its metrics.jsonl.
                    An fdpo without --lora-r skips these sides with a message.
Every side is its own process; peak RSS is each process's ru_maxrss (getrusage: RUSAGE_SELF
in the servers, the child's rusage from wait4 for the CLI runs). The machine's measured
peaks come first (interleave.print_peaks). Numbers from a loaded machine are not results.

    /usr/bin/python3 bench/bench_llama.py                  # small shape, full weights
    /usr/bin/python3 bench/bench_llama.py --lora           # + LoRA sides
    /usr/bin/python3 bench/bench_llama.py --smollm --lora  # SmolLM2-135M shape
    /usr/bin/python3 bench/bench_llama.py --smollm --lora --cli-only --steps 1
        # only the `fdpo dpo` runs (full and LoRA): peak RSS and the LoRA/full ratio, which
        # do not depend on the machine's load (their step times do)
"""
import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import interleave  # noqa: E402

FDPO = os.environ.get("FDPO_BIN", os.path.join(HERE, "../build/fdpo"))
SHAPES = {
    "smollm": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                   num_attention_heads=9, num_key_value_heads=3),
    "small": dict(vocab_size=4096, hidden_size=192, intermediate_size=512, num_hidden_layers=4,
                  num_attention_heads=6, num_key_value_heads=2),
}
LORA_R, LORA_ALPHA, LORA_TARGETS = 16, 32, ["q_proj", "k_proj", "v_proj", "o_proj"]


def llama_config(shape, n_positions):
    return dict(SHAPES[shape], model_type="llama", architectures=["LlamaForCausalLM"], hidden_act="silu",
                max_position_embeddings=n_positions, rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True)


def llama_train_flops(cfg, seq_lens, lora=False):
    """FLOPs of one forward + backward of the Llama on sequences of these lengths: every
    linear layer and the LM head (2 N in out) plus the attention products over full T x T
    tiles (4 T^2 QD per layer). Backward = 2x forward with full weights; with LoRA the
    frozen weights need no weight gradient, so backward ~ 1x forward (the adapters' own
    FLOPs, r/in of a layer, are left out)."""
    C, L, V, F = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"], cfg["intermediate_size"]
    hd = C // cfg["num_attention_heads"]
    QD, KD = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    N = sum(seq_lens)
    per_token = L * (C * (QD + 2 * KD) + QD * C + 3 * C * F) + C * V
    fwd = 2 * N * per_token + L * sum(4 * T * T * QD for T in seq_lens)
    return fwd * (2 if lora else 3)


def torch_worker(cfg, pairs, Tp, Tc, threads, bf16, lora):
    """Step server (interleave.StepServer protocol) for the PyTorch side."""
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    V, C, L = cfg["vocab_size"], cfg["hidden_size"], cfg["num_hidden_layers"]
    NH, NKV, Fd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["intermediate_size"]
    hd = C // NH
    QD, KD = NH * hd, NKV * hd
    eps = cfg["rms_norm_eps"]

    def make_params(requires_grad):
        def w(*shape):
            return torch.nn.Parameter(torch.randn(*shape) * 0.02, requires_grad=requires_grad)
        o = lambda n: torch.nn.Parameter(torch.ones(n), requires_grad=requires_grad)  # noqa: E731
        return dict(embed=w(V, C), norm=o(C), layers=[
            dict(ln1=o(C), q_proj=w(QD, C), k_proj=w(KD, C), v_proj=w(KD, C), o_proj=w(C, QD), ln2=o(C),
                 gate=w(Fd, C), up=w(Fd, C), down=w(C, Fd)) for _ in range(L)])

    policy = make_params(not lora)
    adapters = []
    if lora:  # PEFT's LoRA: A Kaiming-uniform(a=sqrt(5)), B zeros; scaling alpha / r
        for layer in policy["layers"]:
            ad = {}
            for t in LORA_TARGETS:
                out_f, in_f = layer[t].shape
                A = torch.empty(LORA_R, in_f)
                torch.nn.init.kaiming_uniform_(A, a=math.sqrt(5))
                ad[t] = (torch.nn.Parameter(A), torch.nn.Parameter(torch.zeros(out_f, LORA_R)))
            adapters.append(ad)
        params = [p for ad in adapters for ab in ad.values() for p in ab]
        ref = None  # the reference is the base: the same weights with the adapters disabled
    else:
        ref = make_params(False)
        with torch.no_grad():  # the reference starts as a copy of the policy, as in DPO
            ref["embed"].copy_(policy["embed"])
            ref["norm"].copy_(policy["norm"])
            for lr_, lp in zip(ref["layers"], policy["layers"]):
                for k in lp:
                    lr_[k].copy_(lp[k])
        params = [policy["embed"], policy["norm"]] + [p for l in policy["layers"] for p in l.values()]
    opt = torch.optim.AdamW(params, lr=1e-6, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    T = Tp + Tc
    B = 2 * pairs  # concatenated chosen + rejected
    ids, mask, loss_mask = interleave.torch_dpo_batch(V, pairs, Tp, Tc)
    inv_freq = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq[None, :]
    cos = torch.cat([ang.cos(), ang.cos()], -1).float()
    sin = torch.cat([ang.sin(), ang.sin()], -1).float()
    def rms(x, w):
        return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps).to(x.dtype) * w

    def rot(x):
        h = x.shape[-1] // 2
        return torch.cat([-x[..., h:], x[..., :h]], dim=-1)

    def forward(p, ad_list):
        x = p["embed"][ids]
        for i, l in enumerate(p["layers"]):
            ad = ad_list[i] if ad_list else None

            def lin(h, name):
                y = h @ l[name].t()
                if ad and name in ad:
                    A, Bm = ad[name]
                    y = y + (h @ A.t()) @ Bm.t() * (LORA_ALPHA / LORA_R)
                return y
            h = rms(x, l["ln1"])
            q = lin(h, "q_proj").view(B, T, NH, hd).transpose(1, 2)
            k = lin(h, "k_proj").view(B, T, NKV, hd).transpose(1, 2)
            v = lin(h, "v_proj").view(B, T, NKV, hd).transpose(1, 2)
            q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
            k, v = k.repeat_interleave(NH // NKV, dim=1), v.repeat_interleave(NH // NKV, dim=1)
            att = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(hd))
            att = torch.softmax(att.masked_fill(~mask, float("-inf")), dim=-1)
            y = (att @ v).transpose(1, 2).reshape(B, T, QD)
            x = x + lin(y, "o_proj")
            h = rms(x, l["ln2"])
            x = x + (F.silu(h @ l["gate"].t()) * (h @ l["up"].t())) @ l["down"].t()
        x = rms(x, p["norm"])
        logits = x @ p["embed"].t()
        lp = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(2, ids[:, 1:, None])[..., 0]
        return (lp * loss_mask).sum(-1)

    interleave.serve_torch_dpo_steps(lambda: forward(policy, adapters),
                                     lambda: forward(ref, None) if ref is not None else forward(policy, None),
                                     pairs, params, opt, bf16)


def server(side, cfg_path, a):
    if side.startswith("fdpo"):
        prec = side.split("-")[-1]
        return interleave.StepServer(side, [interleave.HARNESS, "dpo-bench", "--config", cfg_path, "--layout", "shared",
                                            "--ref", "cached", "--pairs", str(a.pairs), "--prompt", str(a.prompt),
                                            "--chosen", str(a.completion), "--rejected", str(a.completion),
                                            "--threads", str(a.threads), "--precision", prec, "--serve"])
    argv = interleave.torch_cmd([sys.executable, os.path.abspath(__file__), "--worker", "--pairs", str(a.pairs), "--prompt", str(a.prompt),
            "--completion", str(a.completion), "--threads", str(a.threads)])
    if a.smollm:
        argv.append("--smollm")
    if side.endswith("bf16"):
        argv.append("--bf16")
    if "lora" in side:
        argv.append("--lora")
    return interleave.StepServer(side, argv)


def fdpo_has_lora():
    r = subprocess.run([FDPO, "dpo", "--help"], capture_output=True, text=True)
    return "--lora-r" in r.stdout


class CliRun:
    """A side run as one `fdpo dpo` process: per-step seconds from metrics.jsonl, peak RSS
    from the child's own rusage (wait4). Quacks like a StepServer for interleave.report."""

    def __init__(self, name, argv, tokens_per_step, warmup, d):
        self.name = name
        log = os.path.join(d, name + ".log")
        with open(log, "w") as f:
            proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT)
            _, status, ru = os.wait4(proc.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        proc.returncode = code
        if code != 0:
            sys.exit(f"{name}: exit {code}: {open(log).read().strip()}")
        self.max_rss_kb = ru.ru_maxrss
        out_dir = argv[argv.index("--out") + 1]
        rows = [json.loads(l) for l in open(os.path.join(out_dir, "metrics.jsonl")) if '"tokens_per_sec"' in l]
        self.times = [tokens_per_step / r["tokens_per_sec"] for r in rows[warmup:]]


def write_cli_inputs(d, cfg, a, n_pairs):
    """a checkpoint of the bench's shape (fdpo-harness model-init), a byte tokenizer, and
    n_pairs pairs of random lowercase text: prompt a.prompt bytes, chosen and rejected
    a.completion - 1 bytes each (+ <|endoftext|> = a.completion tokens)"""
    cfg_path = os.path.join(d, "config.json")
    ck = os.path.join(d, "ck")
    r = subprocess.run([interleave.HARNESS, "model-init", "--config", cfg_path, "--seed", "1", "--out", ck],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"model-init: {r.stderr.strip()}")
    with open(os.path.join(ck, "fdpo_tokenizer.json"), "w") as f:
        json.dump({"type": "byte"}, f)
    rng = random.Random(7)
    text = lambda n: "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(n))  # noqa: E731
    data = os.path.join(d, "pairs.jsonl")
    with open(data, "w") as f:
        for _ in range(n_pairs):
            f.write(json.dumps({"prompt": text(a.prompt), "chosen": text(a.completion - 1),
                                "rejected": text(a.completion - 1)}) + "\n")
    return ck, data


def cli_sides(d, cfg, a, warmup):
    """fdpo dpo runs, full weights and LoRA, fp32 and bf16 (the LoRA ones only if this
    fdpo has --lora-r)"""
    has_lora = fdpo_has_lora()
    if not has_lora:
        print("  skip fdpo-lora-fp32, fdpo-lora-bf16: this fdpo has no `fdpo dpo --lora-r` (LoRA, issue #14, "
              "not merged yet); the full-weight fdpo dpo runs still go")
    # --cli-only measures memory: --steps as given (the step times then are not medians of >= 5)
    n_steps = warmup + (a.steps if a.cli_only else max(a.steps, interleave.MIN_TIMED_STEPS))
    ck, data = write_cli_inputs(d, cfg, a, a.pairs * n_steps)
    tokens_per_step = a.pairs * ((a.prompt - 1) + 2 * a.completion)  # shared layout, src/train/dpo.c
    runs = []
    for lora in (False, True) if has_lora else (False,):
        for prec in ("fp32", "bf16"):
            name = f"fdpo-{'lora' if lora else 'cli'}-{prec}"
            out = os.path.join(d, name)
            argv = [FDPO, "dpo", "--model", ck, "--data", data, "--out", out, "--steps", str(n_steps),
                    "--batch-size", str(a.pairs), "--eval-fraction", "0", "--eval-every", "0", "--log-every", "1",
                    "--max-length", str(a.prompt + a.completion), "--lr", "1e-6", "--weight-decay", "0",
                    "--threads", str(a.threads), "--precision", prec, "--quiet"]
            if lora:
                argv += ["--lora-r", str(LORA_R), "--lora-alpha", str(LORA_ALPHA), "--lora-targets", ",".join(LORA_TARGETS)]
            runs.append(CliRun(name, argv, tokens_per_step, warmup, d))
    return runs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--smollm", action="store_true", help="SmolLM2-135M's shape instead of the small one")
    ap.add_argument("--lora", action="store_true", help="also LoRA r=16 on q,k,v,o (torch and `fdpo dpo --lora-r`)")
    ap.add_argument("--pairs", type=interleave.count, default=4)
    ap.add_argument("--prompt", type=interleave.count, default=128)
    ap.add_argument("--completion", type=interleave.count, default=64, help="tokens of chosen and of rejected")
    ap.add_argument("--threads", type=interleave.count, default=2)
    ap.add_argument("--steps", type=interleave.count, default=5, help="timed steps per side after the warm-up (at least 5; the servers' warm-up is "
                         "interleave.WARMUP_STEPS = 2 steps, the CLI runs' one)")
    ap.add_argument("--sides", default=None, help="comma list of the interleaved sides (default: all that apply)")
    ap.add_argument("--cli-only", action="store_true",
                    help="with --lora: only the fdpo dpo runs (full and LoRA), no interleaved servers or peaks")
    interleave.add_triad_arg(ap)  # default: STREAM's rule (bench/bandwidth.py), the same in every bench
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    shape = "smollm" if a.smollm else "small"
    cfg = llama_config(shape, a.prompt + a.completion)
    if a.worker:
        torch_worker(cfg, a.pairs, a.prompt, a.completion, a.threads, a.bf16, a.lora)
        return
    known = ["torch-fp32", "torch-bf16", "fdpo-fp32", "fdpo-bf16"] + \
        (["torch-lora-fp32", "torch-lora-bf16"] if a.lora else [])
    sides = interleave.names_in(a.sides, known, "--sides", "side") if a.sides else known
    if not a.sides and a.smollm:
        # six SmolLM2-sized step servers at once need more than this 24 GB machine (the OOM
        # killer took one): the PyTorch bf16-autocast sides only when asked for with --sides
        sides = [s for s in known if not (s.startswith("torch") and s.endswith("bf16"))]
        print("--smollm: PyTorch bf16 sides left out for memory (name them with --sides to include them)")
    env = interleave.set_fair_env()   # PyTorch gets OpenBLAS's right kernels too
    C, F = cfg["hidden_size"], cfg["intermediate_size"]
    KD = C // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    n_params = cfg["vocab_size"] * C + C + cfg["num_hidden_layers"] * (2 * C + C * (C + 2 * KD) + C * C + 3 * C * F)
    print(f"Llama {shape} ({n_params / 1e6:.1f}M parameters: {cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']}, "
          f"{cfg['num_attention_heads']} heads / {cfg['num_key_value_heads']} KV, intermediate {cfg['intermediate_size']}, "
          f"vocab {cfg['vocab_size']}, tied): {a.pairs} pairs x (prompt {a.prompt} + chosen {a.completion} + rejected "
          f"{a.completion}); threads {a.threads}, "
          + (f"fdpo dpo runs only, {a.steps} steps (+1 warm-up)" if a.cli_only else
             f">= {max(a.steps, interleave.MIN_TIMED_STEPS)} timed steps per side (+{interleave.WARMUP_STEPS} warm-up), "
             "interleaved")
          + f"; env {env or 'no OPENBLAS overrides'}; load average {os.getloadavg()[0]:.1f}")
    if a.cli_only and not a.lora:
        sys.exit("--cli-only: needs --lora (the fdpo dpo runs are the LoRA comparison)")
    if a.cli_only:
        sides = []
    peaks = None if a.cli_only else interleave.machine_peaks(a.threads, triad_mib=a.triad_mib)
    if peaks:
        interleave.print_peaks(peaks)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "config.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        servers = [server(s, path, a) for s in sides]
        if servers:
            interleave.interleave(servers, a.steps)
        tails = {s.name: s.close() for s in servers}
        cli = cli_sides(d, cfg, a, warmup=1) if a.lora else []
    seqs = [a.prompt + a.completion] * (2 * a.pairs)
    full = llama_train_flops(cfg, seqs)
    print(f"  (GFLOP/s counts the TRL-layout policy forward+backward, {full / 1e9:.1f} GFLOP/step with full weights, "
          f"{llama_train_flops(cfg, seqs, lora=True) / 1e9:.1f} with LoRA (no weight gradients of frozen layers))")
    full_sides = [s for s in servers if "lora" not in s.name] + [r for r in cli if "lora" not in r.name]
    lora_sides = [s for s in servers if "lora" in s.name] + [r for r in cli if "lora" in r.name]
    base = "torch-fp32" if "torch-fp32" in sides else None
    interleave.report(full_sides, full, peaks, baseline=base, unit_per_step=a.pairs, unit="pairs/s")
    if lora_sides:
        print("  LoRA r=16, alpha=32, q/k/v/o:")
        lbase = "torch-lora-fp32" if "torch-lora-fp32" in sides else None
        interleave.report(lora_sides, llama_train_flops(cfg, seqs, lora=True), peaks, baseline=lbase,
                          unit_per_step=a.pairs, unit="pairs/s")
    rss = {k: v.get("max_rss_kb", 0) for k, v in tails.items()}
    rss.update({r.name: r.max_rss_kb for r in cli})
    print("  peak RSS " + ", ".join(f"{k} {v / 1024:.0f} MiB" for k, v in rss.items()))
    for prec in ("fp32", "bf16"):
        for who, full_name, lora_name in (("torch", f"torch-{prec}", f"torch-lora-{prec}"),
                                          ("fdpo dpo", f"fdpo-cli-{prec}", f"fdpo-lora-{prec}")):
            if rss.get(full_name) and rss.get(lora_name):
                print(f"  {who} {prec}: LoRA peak RSS = {100 * rss[lora_name] / rss[full_name]:.0f}% of full-weight DPO's")
    med = {s.name: statistics.median(s.times) for s in full_sides + lora_sides if s.times}
    for name in ("fdpo-lora-fp32", "fdpo-lora-bf16"):
        for vs in ("torch-lora-fp32", "torch-lora-bf16"):
            if name in med and vs in med:
                print(f"  {name} vs {vs}: ratio of medians {med[vs] / med[name]:.2f}x")
    print(f"  load average after: {os.getloadavg()[0]:.1f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
