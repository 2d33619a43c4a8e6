#!/usr/bin/python3
"""Sampling throughput (new tokens per second): `fdpo generate` vs a PyTorch sampling loop
with a key/value cache, on the same weights and the same thread count.

B prompts of P tokens each (byte-level text, so every prompt has exactly P tokens), N new
tokens per prompt (the random model cannot draw EOS, ban_eos, so no fdpo row stops early:
a run that draws fewer than B x N is refused), temperature 1, no truncation, one sample per prompt, all B sequences
decoded together (fdpo --batch-size B; PyTorch [B, ...] tensors). fdpo's figure is the one it
prints itself: generation only, after the checkpoint is loaded. PyTorch's covers the same
span: prefill + N decoding steps (softmax + torch.multinomial each step), after the weights
are loaded. Sides: fdpo-fp32, fdpo-bf16 (--precision bf16: bf16 weights in decode),
torch-fp32 and torch-bf16 (the loop under torch.autocast("cpu", dtype=torch.bfloat16)).
Each run is its own process; the sides run INTERLEAVED, round after round (the order
rotates each round), for >= 5 rounds, and each side reports median and best tokens/s and
the ratio of medians vs torch-fp32. Each side also times its decoding steps alone (fdpo prints
them: "decoder set-up A s, prefill B s, N decoding steps of M tokens in S s (T tokens/s)"; the PyTorch loop
times the steps after its prefill: the draws and the one-token forwards), because that is the
part the memory-bandwidth limit is about: a decoder's set-up (bf16: packing the weights, on
this VM mostly the first touch of 247 MB of fresh memory, 0.2-0.7 s) and the prefill are paid
once per run, while fdpo online / rl keep one decoder for all their rounds. The decoding
rate is given as the bandwidth it reads at and as a % of the memory-bandwidth limit measured
in the same invocation (the whole generation's % beside it, for information):
decode steps/s (decoding tokens/s / B) x the bytes one step must read (bench/bandwidth.py's
decode_step_bytes: every weight matrix at the side's precision, the fp32 vectors, the fp32
key/value cache at the mean cached length P + N/2, each row's fp32 logits), against the DRAM
STREAM triad (arrays >= 4 x the last-level cache: bench/bandwidth.py; on the pages the
decoder's weights and cache get: FDPO_HUGEPAGES unset or 1 2 MiB, =0 4 KiB, =system the
system's THP policy, bandwidth.triad_huge; with --triad-both-pages the other page size's triad runs
too, for information),
measured once more in
every round (one more item of the rotation) and taken as the median of those rounds, so it
sees the same load as the sides; in brackets the same against the in-cache triad of the
start, for information. The 124M bf16 weights (247 MB) are smaller than
this machine's 260 MiB L3, so part of them can stay in cache between steps and decoding can
exceed the DRAM figure; the goal (#13: >= 50 %) is against DRAM.

    /usr/bin/python3 bench/bench_sample.py                       # small config, 2 threads
    /usr/bin/python3 bench/bench_sample.py --configs 124M --rounds 5 --threads 2
    /usr/bin/python3 bench/bench_sample.py --configs 124M --baseline /tmp/fdpo-before \
        --sides fdpo-fp32,base-fp32,torch-fp32          # A/B of two fdpo builds, interleaved

--baseline BIN adds the sides base-fp32 and base-bf16: the same `fdpo generate` run with
another fdpo binary (a build from before a change), interleaved with the others, so a
before/after comparison shares the machine's state round by round.

The PyTorch loop is a fair one: batched matmuls over the B rows, keys/values written in
place into a preallocated cache per layer (torch.cat of the whole cache every step, as
Hugging Face's GPT-2 does, was 7-25% slower at 1 thread), F.scaled_dot_product_attention is
not in torch 1.13, so attention is two batched matmuls over the cache (what the C decoder
does too).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FDPO = os.environ.get("FDPO_BIN", os.path.join(HERE, "../build/fdpo"))
HARNESS = os.environ.get("FDPO_HARNESS", os.path.join(HERE, "../build/fdpo-harness"))
sys.path.insert(0, os.path.join(HERE, "../tests/py"))
sys.path.insert(0, HERE)
import bandwidth  # noqa: E402
import interleave  # noqa: E402

CONFIGS = {
    "124M": dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12),
    "small": dict(vocab_size=512, n_positions=256, n_embd=128, n_layer=4, n_head=4),
}


def torch_worker(model_dir, prompts, new_tokens, threads, seed, bf16=False):
    import math
    import torch
    import torch.nn.functional as F
    from fdpo_ref import safetensors as st
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    t, _ = st.load(os.path.join(model_dir, "model.safetensors"))
    g = lambda k: torch.from_numpy(t.get("transformer." + k, t.get(k)))
    C, L, H = cfg["n_embd"], cfg["n_layer"], cfg["n_head"]
    hs, eps = C // H, cfg.get("layer_norm_epsilon", 1e-5)
    wte, wpe = g("wte.weight"), g("wpe.weight")
    layers = [{n: g(f"h.{i}.{n}") for n in ["ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias",
                                          "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias",
                                          "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight",
                                          "mlp.c_proj.bias"]} for i in range(L)]
    lnfw, lnfb = g("ln_f.weight"), g("ln_f.bias")
    B = len(prompts)

    def step(ids, pos0, cache):
        # ids [B, T] new tokens at positions pos0.. ; cache: per layer (k, v) [B, H, max_len, hs] or None
        T = ids.shape[1]
        x = wte[ids] + wpe[pos0:pos0 + T]
        for i, p in enumerate(layers):
            h = F.layer_norm(x, (C,), p["ln_1.weight"], p["ln_1.bias"], eps)
            q, k, v = torch.addmm(p["attn.c_attn.bias"], h.view(-1, C), p["attn.c_attn.weight"]).view(B, T, 3 * C).split(C, -1)
            q, k, v = (z.view(B, T, H, hs).transpose(1, 2) for z in (q, k, v))
            if cache[i] is None:  # preallocated, written in place (torch.cat per step copies it all)
                cache[i] = (torch.empty(B, H, max_len, hs), torch.empty(B, H, max_len, hs))
            cache[i][0][:, :, pos0:pos0 + T] = k
            cache[i][1][:, :, pos0:pos0 + T] = v
            k, v = cache[i][0][:, :, :pos0 + T], cache[i][1][:, :, :pos0 + T]
            att = (q @ k.transpose(-1, -2)) / math.sqrt(hs)
            if T > 1:
                att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
            y = (torch.softmax(att, -1) @ v).transpose(1, 2).reshape(B * T, C)
            x = x + torch.addmm(p["attn.c_proj.bias"], y, p["attn.c_proj.weight"]).view(B, T, C)
            h = F.layer_norm(x, (C,), p["ln_2.weight"], p["ln_2.bias"], eps).view(-1, C)
            h = F.gelu(torch.addmm(p["mlp.c_fc.bias"], h, p["mlp.c_fc.weight"]), approximate="tanh")
            x = x + torch.addmm(p["mlp.c_proj.bias"], h, p["mlp.c_proj.weight"]).view(B, T, C)
        x = F.layer_norm(x[:, -1], (C,), lnfw, lnfb, eps)
        return x @ wte.t()  # [B, V] logits of the last position

    ids = torch.tensor([list(p.encode()) for p in prompts])
    max_len = ids.shape[1] + new_tokens
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        t0 = time.perf_counter()
        cache = [None] * L
        logits = step(ids, 0, cache)
        pos = ids.shape[1]
        t_decode = time.perf_counter()  # the decoding steps: the draws and the one-token steps
        for _ in range(new_tokens):
            nxt = torch.multinomial(torch.softmax(logits.float(), -1), 1)
            if _ == new_tokens - 1:
                break
            logits = step(nxt, pos, cache)
            pos += 1
        t1 = time.perf_counter()
    dt = t1 - t0
    print(json.dumps({"tokens_per_sec": B * new_tokens / dt, "seconds": dt,
                      "decode_tokens_per_sec": B * (new_tokens - 1) / (t1 - t_decode)}))


def make_checkpoint(cfg, directory):
    os.makedirs(directory, exist_ok=True)
    cpath = os.path.join(directory, "config.in.json")
    json.dump(dict(cfg, model_type="gpt2", layer_norm_epsilon=1e-5, activation_function="gelu_new"), open(cpath, "w"))
    r = subprocess.run([HARNESS, "model-init", "--config", cpath, "--seed", "1", "--out", directory],
                       capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"model-init failed: {r.stderr}")
    json.dump({"type": "byte", "vocab_size": 257, "eos_token_id": 256},
              open(os.path.join(directory, "fdpo_tokenizer.json"), "w"))
    ban_eos(os.path.join(directory, "model.safetensors"), cfg["n_embd"])


# the byte tokenizer's <|endoftext|> (fixed: the byte tokenizer has no other)
BYTE_EOS = 256


def ban_eos(path, C):
    """Make the random model unable to sample EOS: fdpo's rows stop at EOS while the PyTorch
    loops always draw every token, so a drawn EOS (p ~ 1/V per draw: 22 % of the small
    config's rows of 128) made the two sides do different work. The final LayerNorm's feature 0
    becomes a constant 1 (gain 0, bias 1) and EOS's tied embedding row reads only it, at
    -1024: its logit is -1024 at every position, whose exp is 0 in fp32, bf16 and double.
    Every other token's logit moves by a constant of its own (its wte[t][0], ~0.02), the
    same on both sides; the work per step is unchanged. Patched in place (F32 tensors)."""
    import struct
    with open(path, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        body = 8 + n

        def put(name, index, values):
            info = header.get("transformer." + name, header.get(name))
            assert info["dtype"] == "F32", f"{path}: {name} is {info['dtype']}, expected F32"
            f.seek(body + info["data_offsets"][0] + 4 * index)
            f.write(struct.pack(f"<{len(values)}f", *values))

        put("ln_f.weight", 0, [0.0])
        put("ln_f.bias", 0, [1.0])
        put("wte.weight", BYTE_EOS * C, [-1024.0] + [0.0] * (C - 1))


def run_side(side, d, tmp, a):
    """One generation run; returns (tokens/s of the whole generation after the weights are
    loaded, tokens/s of its decoding steps alone or None), as each side times them. fdpo
    prints both ("decoder set-up ..., N decoding steps in S s (T tokens/s)": the steps' fed
    tokens over their seconds, set-up and prefill left out); the PyTorch loop times its
    steps after the prefill the same way."""
    if side.startswith("fdpo") or side.startswith("base"):
        pf = os.path.join(tmp, "prompts.txt")
        r = subprocess.run([a.baseline if side.startswith("base") else FDPO, "generate", "--model", d, "--data", pf,
                            "--out", os.path.join(tmp, "o.jsonl"),
                            "--max-new-tokens", str(a.new_tokens), "--batch-size", str(a.prompts), "--threads",
                            str(a.threads), "--seed", "1", "--precision", side.split("-")[1]],
                           capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"fdpo generate failed: {r.stderr}")
        m = re.search(r"generated \d+ samples, (\d+) new tokens in ([\d.]+)s \(([\d.]+) tokens/s\)", r.stderr)
        if int(m.group(1)) != a.prompts * a.new_tokens:
            # a row that stopped early: fewer tokens and fewer rows per decoding step than
            # PyTorch's loop and decode_pct assume (ban_eos should make this impossible)
            sys.exit(f"{side}: fdpo generate drew {m.group(1)} new tokens, not {a.prompts} x {a.new_tokens}: "
                     "a row stopped early, so it did not do PyTorch's work")
        dm = re.search(r"decoding steps of \d+ tokens in [\d.]+s \(([\d.]+) tokens/s\)", r.stderr)
        return float(m.group(3)), float(dm.group(1)) if dm else None
    w = subprocess.run(interleave.torch_cmd([sys.executable, __file__, "--worker", d, "1", "--threads", str(a.threads),
                        "--prompts", str(a.prompts), "--prompt-tokens", str(a.prompt_tokens),
                        "--new-tokens", str(a.new_tokens)] + (["--bf16"] if side == "torch-bf16" else [])),
                       capture_output=True, text=True)
    if w.returncode:
        sys.exit(f"torch worker failed: {w.stderr}")
    j = json.loads(w.stdout.strip().splitlines()[-1])
    return j["tokens_per_sec"], j["decode_tokens_per_sec"]


SIDES = ["fdpo-fp32", "fdpo-bf16", "torch-fp32", "torch-bf16"]
BASE_SIDES = ["base-fp32", "base-bf16"]  # --baseline BIN


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="small", help="comma list of: " + ", ".join(CONFIGS))
    ap.add_argument("--threads", type=interleave.count, default=2)
    ap.add_argument("--prompts", type=interleave.count, default=8)
    ap.add_argument("--prompt-tokens", type=interleave.count, default=16)
    ap.add_argument("--new-tokens", type=interleave.count, default=128)
    ap.add_argument("--rounds", type=interleave.count, default=5, help="interleaved rounds (at least 5)")
    ap.add_argument("--sides", default=",".join(SIDES), help="comma list of: " + ", ".join(SIDES))
    interleave.add_triad_arg(ap)  # default: STREAM's rule (bench/bandwidth.py), the same in every bench
    ap.add_argument("--quick", action="store_true",
                    help="5 rounds, the goal sides only (fdpo-bf16, fdpo-fp32, torch-fp32)")
    ap.add_argument("--baseline", help="another fdpo binary (e.g. a build from before a change): adds the sides "
                    "base-fp32 and base-bf16, interleaved with the others")
    ap.add_argument("--json", help="append one JSON line per config with each side's median tokens/s")
    ap.add_argument("--triad-both-pages", action="store_true",
                    help="also run the DRAM triad on the other page size (2 MiB when fdpo's buffers get 4 KiB, and "
                         "the reverse) in every round, for information; on this VM a fresh 2 MiB-page triad takes "
                         "10-50 s to first-touch its 3 GiB (docs/eval.md, round 8)")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    prompts = [f"Prompt {i:02d}: once upon a time"[:a.prompt_tokens].ljust(a.prompt_tokens, ".")
               for i in range(a.prompts)]
    if a.worker:
        torch_worker(a.worker[0], prompts, a.new_tokens, a.threads, int(a.worker[1]), a.bf16)
        return
    import statistics
    configs = interleave.names_in(a.configs, CONFIGS, "--configs", "config")
    if a.quick:
        a.rounds = 5
        if a.sides == ",".join(SIDES):
            a.sides = "fdpo-fp32,fdpo-bf16,torch-fp32"
    sides = interleave.names_in(a.sides, SIDES + (BASE_SIDES if a.baseline else []), "--sides", "side",
                                "; base-* need --baseline BIN")
    if a.baseline and not interleave.is_executable(a.baseline):
        sys.exit(f"--baseline: {a.baseline} is not an executable file")
    blas_note = interleave.fair_blas_env()
    if blas_note:
        print(blas_note)
    env_note = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}
    print(f"sampling: {a.prompts} prompts x {a.new_tokens} new tokens, prompt {a.prompt_tokens} tokens, "
          f"{a.threads} threads, >= {max(a.rounds, 5)} interleaved rounds" + (f", env {env_note}" if env_note else "")
          + f"; load average {os.getloadavg()[0]:.1f}")
    peaks = interleave.machine_peaks(a.threads, triad_mib=a.triad_mib)
    interleave.print_peaks(peaks)
    for name in configs:
        cfg = CONFIGS[name]
        C, L, V, P = cfg["n_embd"], cfg["n_layer"], cfg["vocab_size"], cfg["n_positions"]
        n_params = V * C + P * C + L * (12 * C * C + 13 * C) + 2 * C
        tps = {s: [] for s in sides}  # whole generation, tokens/s
        dps = {s: [] for s in sides}  # its decoding steps alone, tokens/s (None: a baseline that does not say)
        with tempfile.TemporaryDirectory() as tmp:
            d = os.path.join(tmp, "model")
            make_checkpoint(cfg, d)
            open(os.path.join(tmp, "prompts.txt"), "w").write("\n".join(prompts) + "\n")
            # the DRAM triad is one more item of every round, in the rotation, so the limit
            # is measured under the same load as the sides (the start-of-run figure alone
            # can meet another load than the minutes of sampling after it)
            # the limit's triad runs on the pages fdpo's buffers get (peaks["triad_huge"]); the
            # other pages' triad runs beside it every round, for information: how much the
            # limit itself moves with the page size
            triads, other_triads = [], []
            order = sides + ["triad"] + (["triad-other"] if a.triad_both_pages else [])
            for r in range(max(a.rounds, 5)):
                k = r % len(order)
                for s in order[k:] + order[:k]:
                    if s.startswith("triad"):
                        other = s == "triad-other"
                        huge = (0 if peaks["triad_huge"] == 1 else 1) if other else peaks["triad_huge"]
                        t = bandwidth.measure_triad(interleave.HARNESS, a.threads, dram_mib=peaks["triad_mib"],
                                                    cache=False, huge=huge)["triad_gbs"]
                        (other_triads if other else triads).append(t)
                    else:
                        whole, steps = run_side(s, d, tmp, a)
                        tps[s].append(whole)
                        dps[s].append(steps)
        limit = dict(peaks, triad_gbs=statistics.median(triads), triad_start_gbs=peaks["triad_gbs"],
                     triad_rounds_gbs=triads)
        if other_triads:
            limit.update(triad_other_pages_gbs=statistics.median(other_triads), triad_other_pages_rounds_gbs=other_triads)
        print(f"{name} ({n_params / 1e6:.1f}M params):")
        base = statistics.median(tps["torch-fp32"]) if "torch-fp32" in tps else None
        step = {p: bandwidth.decode_step_bytes(cfg, p, a.prompts, a.prompt_tokens, a.new_tokens) for p in ("fp32", "bf16")}
        other_label = "4 KiB pages (--huge 0)" if peaks["triad_huge"] == 1 else "2 MiB pages (--huge 1)"
        print(f"  DRAM triad in each round ({bandwidth.pages_label(peaks['triad_huge'], bandwidth.thp_mode())}): "
              f"{', '.join(f'{x:.2f}' for x in triads)} GB/s; "
              f"the limit used: their median {limit['triad_gbs']:.2f} GB/s (at the start: {peaks['triad_gbs']:.2f})"
              + (f"; on {other_label}, for information: median {limit['triad_other_pages_gbs']:.2f} GB/s "
                 f"({', '.join(f'{x:.2f}' for x in other_triads)})" if other_triads else ""))
        for p, b in step.items():
            print(f"  bytes one decoding step reads, {p}: {b['total'] / 1e6:.1f} MB = weights {b['weights'] / 1e6:.1f} "
                  f"+ KV cache {b['kv'] / 1e6:.1f} ({a.prompts} rows x {b['mean_len']:g} mean positions, fp32) "
                  f"+ logits {b['logits'] / 1e6:.1f}")
        print("  whole generation (after the weights are loaded: set-up, prefill, decoding), then its decoding steps "
              "alone; the bandwidth is the decoding steps' (steps/s x the bytes a step reads), the ratio the whole "
              "generation's")
        decode_med = {s: statistics.median(dps[s]) if None not in dps[s] else None for s in sides}
        for s in sides:
            med, best = statistics.median(tps[s]), max(tps[s])
            b = step["bf16" if "bf16" in s else "fp32"]
            line = f"  {s:11s} median {med:9.1f} tok/s  best {best:9.1f} tok/s  (n={len(tps[s])})"
            dmed = decode_med[s]
            if dmed is not None:
                gbs, pct = bandwidth.decode_pct(dmed, a.prompts, b["total"], limit["triad_gbs"])
                _, pct_cache = bandwidth.decode_pct(dmed, a.prompts, b["total"], peaks["triad_cache_gbs"])
                _, pct_whole = bandwidth.decode_pct(med, a.prompts, b["total"], limit["triad_gbs"])
                line += (f"  decoding {dmed:9.1f} tok/s reads {gbs:6.2f} GB/s = {pct:5.1f}% of the DRAM triad "
                         f"({pct_cache:.1f}% of the in-cache one; the whole generation's rate: {pct_whole:.1f}%)")
            if base and s != "torch-fp32":
                line += f"  ratio of medians {med / base:.2f}x vs torch-fp32"
            twin = "base-" + s.split("-")[1] if s.startswith("fdpo") else None
            if twin in tps:
                line += f", {med / statistics.median(tps[twin]):.2f}x vs {twin}"
            print(line)
        print(f"  load average after: {os.getloadavg()[0]:.1f}")
        interleave.write_json(a.json, {"bench": "sample", "config": name, "prompts": a.prompts,
                                       "prompt_tokens": a.prompt_tokens, "new_tokens": a.new_tokens,
                                       "threads": a.threads, "n_params": n_params, "cfg": cfg,
                                       "median_tokens_per_sec": {s: statistics.median(tps[s]) for s in sides},
                                       "median_decode_tokens_per_sec": decode_med,
                                       "peaks": limit})
        sys.stdout.flush()


if __name__ == "__main__":
    main()
