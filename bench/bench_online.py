#!/usr/bin/python3
"""One online f-DPO round, fdpo vs PyTorch, split into its phases.

A round: P prompts (byte-level text, every prompt exactly --prompt-tokens tokens), n
completions each sampled from the current policy (temperature 1, --new-tokens new tokens;
the policy's log-prob of each completion, for the round's KL metric, taken from the
sampler's own softmax on both sides), scored (the `length:words` reward plus the log-probs
under the reference), the best and the worst completion of each prompt paired, and one f-DPO
step (sigmoid loss, reverse KL, beta 0.1) over the P pairs with AdamW, the pairs' reference
log-probs taken from the scoring.

fdpo side: `fdpo online --rounds 3 --batch-size P --epochs 1`, a process per run; the round
timed is round 2, the first whose reference is warm as PyTorch's is in its timed round
(round 0 scores no reference: it is the policy itself; round 1 is the reference's first
forward, which makes its bf16 weight copy and buffers once per run: 2.5 s of wave 9's
first idle run, where PyTorch's timed round is its second use of its reference), its split read from fdpo's own metrics.jsonl: the three phases both sides
do -- time/sampling: generation; time/scoring: reward + reference log-probs; time/training:
the round's f-DPO step on the in-memory policy (trainer, clipping, AdamW) -- and two that only
fdpo has, shown apart: time/checkpoint, what writing the previous round's checkpoint (atomic,
fsynced, for resume per round; a background thread writes it while this round samples) cost
this round in waiting, and "other", the rest of the round's wall time (time/round minus the
phases: pairing, the metrics line, the glue). PyTorch writes nothing. The ratio is given
without them (the same work) and with them (the round as fdpo runs it).
PyTorch side (this script's --worker mode, a process per run): the same round written
here -- sampling with a preallocated key/value cache (use_cache-style: prefill, then one
token per step over the cache), the reward and the reference log-probs in one batched
forward, and one DPO step (policy forward/backward over the 2P sequences, AdamW, grad clip
1); two rounds in the process, the second timed, models kept in memory.

Pairs: a prompt whose samples tie gives no pair, so how many pairs a round trains on
depends on the samples, and the fdpo sides differ (fp32 and bf16 draw different samples).
The PyTorch round trains once per distinct pair count of the fdpo sides (one DPO step on
that many pairs each, timed apart), and each fdpo side's ratios use PyTorch's step on its
own count: every ratio compares the same work. The table has a PyTorch row per count
("torch-fp32 (2 pairs)") and the pair counts of every run are printed.

Sides run INTERLEAVED (fdpo, torch, torch, fdpo, ...) for >= 5 runs each; medians per phase
and of the total, the ratio of medians (torch / fdpo: > 1 means fdpo is faster), and the
machine peaks measured at the start (fp32 sgemm, triad). Do not quote numbers from a loaded
machine: the load average is printed before and after.

    /usr/bin/python3 bench/bench_online.py                          # small config, 2 threads
    /usr/bin/python3 bench/bench_online.py --config 124M --runs 5 --threads 2
    /usr/bin/python3 bench/bench_online.py --config 124M --baseline OLD/fdpo   # + base-P sides: another build, A/B
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FDPO = os.environ.get("FDPO_BIN", os.path.join(HERE, "../build/fdpo"))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "../tests/py"))
import interleave  # noqa: E402
from bench_sample import CONFIGS, make_checkpoint  # noqa: E402

PHASES = ["sampling", "scoring", "training"]
LAYER_KEYS = ["ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
              "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
              "mlp.c_proj.weight", "mlp.c_proj.bias"]


class TorchGPT2:
    """GPT-2 (Hugging Face Conv1D layout, tied LM head) as plain tensors, batched: a full
    forward for scoring/training and a key/value-cached one for sampling."""

    def __init__(self, model_dir, trainable):
        import torch
        from fdpo_ref import safetensors as st
        cfg = json.load(open(os.path.join(model_dir, "config.json")))
        t, _ = st.load(os.path.join(model_dir, "model.safetensors"))
        g = lambda k: torch.from_numpy(t.get("transformer." + k, t.get(k)).copy()).requires_grad_(trainable)
        self.C, self.L, self.H = cfg["n_embd"], cfg["n_layer"], cfg["n_head"]
        self.eps = cfg.get("layer_norm_epsilon", 1e-5)
        self.wte, self.wpe = g("wte.weight"), g("wpe.weight")
        self.layers = [{n: g(f"h.{i}.{n}") for n in LAYER_KEYS} for i in range(self.L)]
        self.lnfw, self.lnfb = g("ln_f.weight"), g("ln_f.bias")

    def parameters(self):
        return [self.wte, self.wpe, self.lnfw, self.lnfb] + [p for l in self.layers for p in l.values()]

    def forward(self, ids, pos0=0, cache=None, last_only=False):
        """ids [B, T] at positions pos0.. -> logits [B, T, V] (or [B, V] with last_only).
        cache: None (no cache: causal attention over ids) or a list per layer that is filled
        with preallocated [B, H, max_len, hs] keys/values and written in place."""
        import torch
        import torch.nn.functional as F
        B, T = ids.shape
        C, H = self.C, self.H
        hs = C // H
        x = self.wte[ids] + self.wpe[pos0:pos0 + T]
        for i, p in enumerate(self.layers):
            h = F.layer_norm(x, (C,), p["ln_1.weight"], p["ln_1.bias"], self.eps)
            q, k, v = torch.addmm(p["attn.c_attn.bias"], h.reshape(-1, C), p["attn.c_attn.weight"]).view(B, T, 3 * C).split(C, -1)
            q, k, v = (z.reshape(B, T, H, hs).transpose(1, 2) for z in (q, k, v))
            if cache is not None:
                cache[i][0][:, :, pos0:pos0 + T] = k
                cache[i][1][:, :, pos0:pos0 + T] = v
                k, v = cache[i][0][:, :, :pos0 + T], cache[i][1][:, :, :pos0 + T]
            att = (q @ k.transpose(-1, -2)) / math.sqrt(hs)
            if T > 1:
                S = k.shape[2]
                att = att.masked_fill(torch.ones(T, S, dtype=torch.bool).triu(S - T + 1), float("-inf"))
            y = (torch.softmax(att, -1) @ v).transpose(1, 2).reshape(B * T, C)
            x = x + torch.addmm(p["attn.c_proj.bias"], y, p["attn.c_proj.weight"]).view(B, T, C)
            h = F.layer_norm(x, (C,), p["ln_2.weight"], p["ln_2.bias"], self.eps).reshape(-1, C)
            h = F.gelu(torch.addmm(p["mlp.c_fc.bias"], h, p["mlp.c_fc.weight"]), approximate="tanh")
            x = x + torch.addmm(p["mlp.c_proj.bias"], h, p["mlp.c_proj.weight"]).view(B, T, C)
        if last_only:
            x = x[:, -1]
        return F.layer_norm(x, (C,), self.lnfw, self.lnfb, self.eps) @ self.wte.t()

    def sample(self, prompt_ids, new_tokens, generator):
        """prompt_ids [B, P] -> completions [B, new_tokens], temperature 1, with a KV cache, and
        each completion's summed log-prob under the sampling model (from the same softmax, as
        fdpo's sampler returns it)."""
        import torch
        B, P = prompt_ids.shape
        hs = self.C // self.H
        max_len = P + new_tokens
        # under bf16 autocast the projections give bf16 keys/values: the cache holds them as
        # they come (as Hugging Face's cache does), half the bytes each step reads
        dt = torch.bfloat16 if torch.is_autocast_cpu_enabled() else torch.float32
        cache = [(torch.empty(B, self.H, max_len, hs, dtype=dt), torch.empty(B, self.H, max_len, hs, dtype=dt))
                 for _ in range(self.L)]
        out = torch.empty(B, new_tokens, dtype=torch.long)
        logp = torch.zeros(B, dtype=torch.float64)
        with torch.no_grad():
            logits = self.forward(prompt_ids, 0, cache, last_only=True)
            for j in range(new_tokens):
                lp = torch.log_softmax(logits.float(), -1)
                out[:, j] = torch.multinomial(lp.exp(), 1, generator=generator)[:, 0]
                logp += lp.gather(-1, out[:, j:j + 1])[:, 0]
                if j + 1 < new_tokens:
                    logits = self.forward(out[:, j:j + 1], P + j, cache, last_only=True)
        return out, logp


def words_reward(comp):
    """The `length:words` reward of fdpo: whitespace-separated words of each completion's bytes."""
    import torch
    return torch.tensor([float(len(bytes(t for t in row.tolist() if t < 256).split())) for row in comp],
                        dtype=torch.float64)


def completion_logp(model, seqs, P):
    """Summed log-probs of the completion tokens seqs[:, P:] (seqs [B, T]) -> [B]."""
    import torch
    lp = torch.log_softmax(model.forward(seqs[:, :-1]).float(), -1)   # fp32 log-softmax under autocast too
    return lp[:, P - 1:].gather(-1, seqs[:, P:].unsqueeze(-1)).squeeze(-1).sum(-1)


def autocast(bf16):
    """The PyTorch side's bf16 variant: the forward passes (sampling, scoring, the training
    forward) under torch.autocast("cpu", dtype=torch.bfloat16), the backward and the
    optimizer outside it -- what TRL's bf16=True (accelerate's autocast) runs on a CPU.
    Master weights, AdamW state and the log-softmax stay fp32. bf16=False: a no-op context."""
    import torch
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


def torch_online_round(policy, ref, opt, prompt_ids, n, new_tokens, beta, generator, n_pairs=None, bf16=False):
    """One round; returns the seconds of each phase. n_pairs: a list of pair counts (the fdpo
    sides' counts, so that each fdpo side's training phase is compared with PyTorch training
    on as many pairs, whatever the ties): the round trains once per count, one DPO step each
    on that many pairs (the prompts with a reward gap first, then tied ones), each step timed
    apart ("training_at": {count: seconds}; "training" and "pairs": the first count's);
    None: one step on the pairs of fdpo's rule alone. bf16: the forwards under bf16
    autocast (autocast())."""
    import torch
    import torch.nn.functional as F
    P, Pt = prompt_ids.shape
    t0 = time.perf_counter()
    with autocast(bf16):
        comp, lpol = policy.sample(prompt_ids.repeat_interleave(n, 0), new_tokens, generator)
    t1 = time.perf_counter()
    seqs = torch.cat([prompt_ids.repeat_interleave(n, 0), comp], 1)
    with torch.no_grad(), autocast(bf16):
        reward = words_reward(comp)
        lref = completion_logp(ref, seqs, Pt)
        kl = (lpol - lref).mean()  # the round's KL metric, as fdpo logs it
    r = reward.view(P, n)
    best, worst = r.argmax(1) + torch.arange(P) * n, r.argmin(1) + torch.arange(P) * n
    # fdpo's rule: a prompt whose completions all score the same (or whose best and worst are
    # the same tokens) gives no pair -- so both sides train on the pairs the round's rule keeps
    keep = (r.max(1).values > r.min(1).values) & (seqs[best] != seqs[worst]).any(1)
    t2 = time.perf_counter()
    training_at = {}
    for count in (n_pairs if n_pairs is not None else [None]):
        t_start = time.perf_counter()
        if count is None:
            b, w = best[keep], worst[keep]
        else:
            order = torch.cat([torch.nonzero(keep)[:, 0], torch.nonzero(~keep)[:, 0]])[:count]
            b, w = best[order], worst[order]
        npairs = len(b)
        if npairs:
            pairs = torch.cat([seqs[b], seqs[w]], 0)
            with autocast(bf16):
                logp = completion_logp(policy, pairs, Pt)
            margin = (logp[:npairs] - lref[b]) - (logp[npairs:] - lref[w])
            loss = -F.logsigmoid(beta * margin).mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            opt.step()
        training_at[npairs] = time.perf_counter() - t_start
    _ = kl
    first = next(iter(training_at))
    return {"sampling": t1 - t0, "scoring": t2 - t1, "training": training_at[first], "pairs": first,
            "training_at": {str(k): v for k, v in training_at.items()}}


def prompt_texts(n, tokens):
    return [f"Prompt {i:02d}: once upon a time"[:tokens].ljust(tokens, ".") for i in range(n)]


def torch_worker(a):
    import torch
    torch.set_num_threads(a.threads)
    policy, ref = TorchGPT2(a.worker, True), TorchGPT2(a.worker, False)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    ids = torch.tensor([list(p.encode()) for p in prompt_texts(a.prompts, a.prompt_tokens)])
    g = torch.Generator().manual_seed(1)
    times = [torch_online_round(policy, ref, opt, ids, a.n, a.new_tokens, 0.1, g, a.pairs, a.worker_bf16)
             for _ in range(2)]
    print(json.dumps(times[-1]))


# fdpo-only phases (bench_online: the round's checkpoint wait and the rest of its wall time)
EXTRA = ["checkpoint", "other"]


def fdpo_online(d, tmp, a, precision, binary=FDPO):
    out = os.path.join(tmp, "run")
    r = subprocess.run([binary, "online", "--model", d, "--data", os.path.join(tmp, "prompts.txt"), "--reward", "length:words",
                        "--out", out, "--rounds", "3", "--prompts-per-round", str(a.prompts),
                        "--n", str(a.n), "--max-new-tokens", str(a.new_tokens), "--batch-size", str(a.prompts),
                        "--epochs", "1", "--beta", "0.1", "--lr", "1e-4", "--threads", str(a.threads),
                        "--precision", precision, "--quiet"],
                       capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"fdpo online failed: {r.stderr}")
    m = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))][-1]
    subprocess.run(["rm", "-rf", out])
    t = {p: m[f"time/{p}"] for p in PHASES + ["checkpoint"]}
    t["other"] = max(0.0, m["time/round"] - sum(t.values()))
    t["pairs"] = m["pairs"]
    return t


def bench_sides(a):
    """The sides of one invocation, in their first round's order: fdpo at each --precision,
    the --baseline binary at each (base-P), then PyTorch fp32 and/or bf16 autocast (--torch)."""
    return ([f"fdpo-{p}" for p in a.precision] + ([f"base-{p}" for p in a.precision] if a.baseline else [])
            + [f"torch-{t}" for t in a.torch])


def show_run(r, side, t):
    """One line per run as it ends (a run at 124M takes minutes under load: what was measured
    stays on screen if the bench is stopped)."""
    print(f"  run {r + 1} {side:10s} " + " ".join(f"{p} {v:.4f}" for p, v in t.items()), flush=True)


def run_bench(a, title, fdpo_side, worker_args, extra=()):
    """Interleaved runs of the fdpo sides (fdpo_side(model_dir, tmp, a, precision) -> phase
    seconds) and the torch worker (fp32, or its forwards under bf16 autocast); prints the
    per-phase medians and every fdpo side's ratios against every PyTorch side. extra: phases
    only the fdpo side has (absent from torch's results: 0 there), shown after the shared
    ones with a second total and ratio. Returns {side: [phase seconds of each run]}."""
    blas_note = interleave.fair_blas_env()   # PyTorch gets OpenBLAS's right kernels too
    if blas_note:
        print(blas_note)
    sides = bench_sides(a)
    runs = max(a.runs, 5)
    print(f"{title}; {a.threads} threads, sides {', '.join(sides)}, >= {runs} interleaved runs per side; "
          f"load average {os.getloadavg()[0]:.1f}")
    peaks = interleave.machine_peaks(a.threads, triad_mib=a.triad_mib)
    interleave.print_peaks(peaks)
    cfg = CONFIGS[a.config]
    C, L, V, Pn = cfg["n_embd"], cfg["n_layer"], cfg["vocab_size"], cfg["n_positions"]
    n_params = V * C + Pn * C + L * (12 * C * C + 13 * C) + 2 * C
    res = {s: [] for s in sides}
    fdpo_sides = [s for s in sides if not s.startswith("torch")]   # this build's and the baseline's
    torch_sides = [s for s in sides if s.startswith("torch")]
    with tempfile.TemporaryDirectory() as tmp:
        d = os.path.join(tmp, "model")
        make_checkpoint(cfg, d)
        open(os.path.join(tmp, "prompts.txt"), "w").write("\n".join(prompt_texts(a.prompts, a.prompt_tokens)) + "\n")
        for r in range(runs):
            k = r % len(sides)   # the order rotates every run: no side always follows another
            # (run 1 starts with the fdpo sides, so every torch run knows their pair counts)
            for side in sides[k:] + sides[:k]:
                kind, prec = side.split("-")
                if kind in ("fdpo", "base"):
                    res[side].append(fdpo_side(d, tmp, a, prec, a.baseline if kind == "base" else FDPO))
                    show_run(r, side, res[side][-1])
                    continue
                # the torch round trains once on as many pairs as each fdpo side kept (its
                # latest run; ties vary with the precision), each step timed apart, so every
                # fdpo side's training phase is compared with the same work
                counts = sorted({int(res[f][-1]["pairs"]) for f in fdpo_sides if res[f] and "pairs" in res[f][-1]},
                                reverse=True)
                same_pairs = ["--pairs", ",".join(map(str, counts))] if counts else []
                w = subprocess.run(interleave.torch_cmd([sys.executable, sys.argv[0], "--worker", d, "--threads", str(a.threads),
                                    "--prompts", str(a.prompts), "--prompt-tokens", str(a.prompt_tokens),
                                    "--new-tokens", str(a.new_tokens), "--n", str(a.n)]
                                   + same_pairs + (["--worker-bf16"] if prec == "bf16" else []) + worker_args),
                                   capture_output=True, text=True)
                if w.returncode:
                    sys.exit(f"torch worker ({side}) failed: {w.stderr}")
                res[side].append(json.loads(w.stdout.strip().splitlines()[-1]))
                show_run(r, side, {p: v for p, v in res[side][-1].items() if p != "training_at"})
    extra = list(extra)
    for s in torch_sides:
        for x in res[s]:
            x.update({p: 0.0 for p in extra})

    def like(t, f):
        """torch side t's runs with the training phase of the step on fdpo side f's pair count
        of the same run (all of t's runs when nothing counts pairs: the RL step)"""
        out = []
        for i, x in enumerate(res[t]):
            if "training_at" not in x:
                out.append(x)
                continue
            n = str(int(res[f][i]["pairs"]))
            if n not in x["training_at"]:   # (fdpo's count changed after this torch run: left out)
                continue
            out.append(dict(x, training=x["training_at"][n], pairs=int(n)))
        return out

    # the rows: each fdpo side, and each torch side once per distinct fdpo pair count
    rows = {f: res[f] for f in fdpo_sides}
    like_row = {}   # (t, f) -> row name
    has_pairs = any("training_at" in x for t in torch_sides for x in res[t])
    for t in torch_sides:
        for f in fdpo_sides:
            runs_tf = like(t, f)
            counts = sorted({x["pairs"] for x in runs_tf}, reverse=True) if has_pairs else []
            name = f"{t} ({'/'.join(map(str, counts))} pairs)" if has_pairs else t
            rows.setdefault(name, runs_tf)   # two fdpo sides with the same count share the row
            like_row[t, f] = name
    print(f"{a.config} ({n_params / 1e6:.1f}M params), seconds (median of {runs}; best in brackets):")
    med = {s: {p: statistics.median(x[p] for x in rows[s]) for p in PHASES + extra} for s in rows}
    tot = {s: statistics.median(sum(x[p] for p in PHASES) for x in rows[s]) for s in rows}
    tot_all = {s: statistics.median(sum(x[p] for p in PHASES + extra) for x in rows[s]) for s in rows}
    cell = lambda s, ps: f"{statistics.median(sum(x[p] for p in ps) for x in rows[s]):10.4f} ({min(sum(x[p] for p in ps) for x in rows[s]):8.4f})"
    head = "".join(f"{p:>22s}" for p in PHASES) + f"{'total':>22s}"
    if extra:
        head += "".join(f"{p:>22s}" for p in extra) + f"{'round':>22s}"
    width = max(22, max(len(s) for s in rows) + 1)
    print("  " + " " * width + head)
    for s in rows:
        row = "".join(f"{cell(s, [p]):>22s}" for p in PHASES) + f"{cell(s, PHASES):>22s}"
        if extra:
            row += "".join(f"{cell(s, [p]):>22s}" for p in extra) + f"{cell(s, PHASES + extra):>22s}"
        print(f"  {s:{width}s}" + row)
    ratios = {}
    for f in fdpo_sides:
        for t in torch_sides:
            tr_ = like_row[t, f]
            r_ = {p: med[tr_][p] / med[f][p] if med[f][p] > 0 else float("nan") for p in PHASES}
            r_["total"] = tot[tr_] / tot[f]
            if extra:
                r_["round"] = tot_all[tr_] / tot_all[f]
            ratios[f"{t}/{f}"] = r_
            line = f"  {t + '/' + f:{width}s}" + "".join(f"{r_[p]:21.2f}x" for p in PHASES) + f"{r_['total']:21.2f}x"
            if extra:
                line += " " * 22 * len(extra) + f"{r_['round']:21.2f}x"
            print(line)
    for p in a.precision if a.baseline else []:
        f, b = f"fdpo-{p}", f"base-{p}"
        r_ = {ph: med[b][ph] / med[f][ph] if med[f][ph] > 0 else float("nan") for ph in PHASES}
        r_["total"] = tot[b] / tot[f]
        if extra:
            r_["round"] = tot_all[b] / tot_all[f]
        ratios[f"{b}/{f}"] = r_
        line = f"  {b + '/' + f:{width}s}" + "".join(f"{r_[ph]:21.2f}x" for ph in PHASES) + f"{r_['total']:21.2f}x"
        if extra:
            line += " " * 22 * len(extra) + f"{r_['round']:21.2f}x"
        print(line + "   (this build against --baseline: > 1 faster)")
    print("  (ratios of medians; > 1: fdpo faster" + ("; each fdpo side against PyTorch's training on as many pairs"
                                                       if any("pairs" in x for x in res[fdpo_sides[0]]) else "") + ")")
    for f in fdpo_sides:
        if extra:
            secs = " + ".join(f"{med[f][p]:.4f}" for p in extra)
            print(f"  {f}'s {' + '.join(extra)}: {secs} s (PyTorch has no such phase): the total ratios are the "
                  f"same work, the round ratios the round as fdpo runs it")
    share = {s: ", ".join(f"{p} {100 * med[s][p] / max(1e-12, sum(med[s].values())):.0f}%" for p in PHASES + extra
                          if not s.startswith("torch") or p in PHASES) for s in rows}
    print("  split: " + "; ".join(f"{s} {share[s]}" for s in rows))
    if all("pairs" in x for s in rows for x in rows[s]):
        # ties give no pair on either side: each ratio above pairs an fdpo side with PyTorch's
        # step on the same number of pairs
        counts = {s: " ".join(format(x["pairs"], "g") for x in rows[s]) for s in rows}
        print("  pairs trained on per round: " + "; ".join(f"{s} {counts[s]}" for s in rows))
    print(f"  load average after: {os.getloadavg()[0]:.1f}")
    interleave.write_json(a.json, {"bench": os.path.basename(sys.argv[0]), "config": a.config, "threads": a.threads,
                                   "runs": runs, "median_seconds": med, "median_total": tot, "ratios": ratios,
                                   "pairs": {s: [x["pairs"] for x in rows[s]] for s in rows if all("pairs" in x for x in rows[s])},
                                   "peaks": {k: peaks[k] for k in ("sgemm_gflops", "bf16_gflops", "triad_gbs")}})
    return res


def parse_args(doc, n_default, prompts_default, new_tokens_default, own_flags=None, own_checks=None):
    """The flags of bench_online.py and bench_rl.py; own_flags(ap) adds a script's own ones
    and own_checks(ap, a) checks them, before anything is measured."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="small", choices=sorted(CONFIGS), help="model shape (124M: GPT-2 small)")
    ap.add_argument("--threads", type=interleave.count, default=2)
    ap.add_argument("--prompts", type=interleave.count, default=prompts_default)
    ap.add_argument("--n", type=interleave.count, default=n_default, help="completions per prompt")
    ap.add_argument("--prompt-tokens", type=interleave.count, default=16)
    ap.add_argument("--new-tokens", type=interleave.count, default=new_tokens_default)
    ap.add_argument("--runs", type=interleave.count, default=5, help="interleaved runs per side (at least 5)")
    interleave.add_triad_arg(ap)  # default: STREAM's rule (bench/bandwidth.py), the same in every bench
    ap.add_argument("--precision", default="fp32",
                    help="the fdpo side's --precision: fp32, bf16, or fp32,bf16 (a side each)")
    ap.add_argument("--torch", choices=["fp32", "bf16", "both"],
                    help="PyTorch sides: fp32, bf16 (the forwards under bf16 autocast) or both "
                         "(default: fp32 when --precision is fp32, else both)")
    ap.add_argument("--json", help="append one JSON line of medians and ratios to this file")
    ap.add_argument("--baseline", metavar="BIN",
                    help="a second fdpo binary (e.g. main's build): its sides base-P run interleaved with the others "
                         "at each --precision P, with a base-P/fdpo-P ratio line (> 1: this build faster)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-bf16", action="store_true", help=argparse.SUPPRESS)   # worker: under bf16 autocast
    ap.add_argument("--pairs", type=lambda v: [int(x) for x in v.split(",")],
                    help=argparse.SUPPRESS)   # worker: train on each of these pair counts (comma-separated)
    if own_flags:
        own_flags(ap)
    a = ap.parse_args()
    a.precision = a.precision.split(",")
    if not a.precision or any(p not in ("fp32", "bf16") for p in a.precision) or len(set(a.precision)) < len(a.precision):
        ap.error(f"--precision: expected fp32, bf16 or fp32,bf16 (got {','.join(a.precision)})")
    if a.torch is None:
        a.torch = "fp32" if a.precision == ["fp32"] else "both"
    a.torch = ["fp32", "bf16"] if a.torch == "both" else [a.torch]
    if own_checks:
        own_checks(ap, a)
    if a.baseline and not interleave.is_executable(a.baseline):
        sys.exit(f"--baseline: {a.baseline} is not an executable file")
    return a


def main():
    a = parse_args(__doc__, n_default=4, prompts_default=4, new_tokens_default=64)
    if a.worker:
        torch_worker(a)
        return
    run_bench(a, f"online round: {a.prompts} prompts x {a.n} samples x {a.new_tokens} new tokens, "
                 f"prompt {a.prompt_tokens} tokens, best-worst pairs, one f-DPO step", fdpo_online, [], EXTRA)


if __name__ == "__main__":
    main()
