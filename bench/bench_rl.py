#!/usr/bin/python3
"""One RL step (RLOO with the reverse-KL-shaped reward), fdpo vs PyTorch, split into phases.

A step: P prompts (byte-level text, every prompt exactly --prompt-tokens tokens), k samples
each from the current policy (temperature 1, --new-tokens new tokens; defaults: 4 prompts,
k = 4, 64 new tokens), scored (the `length:words` reward and the log-probs under the
reference), the shaped reward r - beta f'(pi/pi_ref) (reverse KL: f'(u) = log u + 1,
beta 0.05), leave-one-out advantages over each prompt's k samples, loss
-mean(adv * log pi(y)), backward, grad clip 1, AdamW.

fdpo side: `fdpo rl --steps 2`, a process per run; the step timed is step 2 (step 1 is the
warm-up), its split read from fdpo's own metrics.jsonl (time/sampling, time/scoring,
time/training). PyTorch side (this script's --worker mode, a process per run): the same
step written here (bench_online.py's GPT-2: sampling with a preallocated key/value cache,
batched full forwards for scoring and training), two steps in the process, the second timed.
What fdpo does that the PyTorch step does not (docs/rl.md "Where the time goes"): scoring and
training pack each prompt's k samples as one sequence with the prompt computed once, and the
LM head runs on the completion rows only (PyTorch: every row of its [B, T] batch).

--ranks N runs the fdpo side as `mpirun -np N fdpo rl ... --threads THREADS/N` (each rank
samples, scores and computes the gradient of its block of prompts; the times are rank 0's)
against PyTorch on THREADS threads: the same cores, split into processes (N must divide THREADS).

Sides run INTERLEAVED for >= 5 runs each; medians per phase and of the total, the ratio of
medians (torch / fdpo: > 1 means fdpo is faster), the machine peaks measured at the start.
Do not quote numbers from a loaded machine: the load average is printed before and after.
After the table: the work of each phase on each side in GFLOP (matmuls and attention,
counted from the shapes: `step_gflop`), and the rate fdpo's median phase times give, to
compare with the sgemm peak printed at the start (docs/rl.md "What each phase computes").

    /usr/bin/python3 bench/bench_rl.py                          # small config, 2 threads
    /usr/bin/python3 bench/bench_rl.py --config 124M --runs 5 --threads 2
    /usr/bin/python3 bench/bench_rl.py --ranks 2                # fdpo: 2 ranks x 1 thread
    /usr/bin/python3 bench/bench_rl.py --config 124M --baseline OLD/fdpo   # + base-P sides: another build, A/B
"""
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_online import (FDPO, PHASES, TorchGPT2, autocast, completion_logp, parse_args, prompt_texts,  # noqa: E402
                          run_bench, words_reward)
from bench_sample import CONFIGS  # noqa: E402
import interleave  # noqa: E402

BETA = 0.05


def torch_rl_step(policy, ref, opt, prompt_ids, k, new_tokens, generator, bf16=False):
    """One RLOO step; returns the seconds of each phase. bf16: the forwards (sampling,
    scoring, the training forward) under bf16 autocast, backward and AdamW outside it
    (bench_online.autocast: TRL's bf16=True on a CPU)."""
    import torch
    P, Pt = prompt_ids.shape
    t0 = time.perf_counter()
    prompts = prompt_ids.repeat_interleave(k, 0)
    with autocast(bf16):
        comp, _ = policy.sample(prompts, new_tokens, generator)   # (fdpo rl recomputes log pi in training too)
    t1 = time.perf_counter()
    seqs = torch.cat([prompts, comp], 1)
    with torch.no_grad(), autocast(bf16):
        reward = words_reward(comp)
        lref = completion_logp(ref, seqs, Pt)
    t2 = time.perf_counter()
    with autocast(bf16):
        logp = completion_logp(policy, seqs, Pt)
    shaped = (reward - BETA * ((logp.detach().double() - lref.double()) + 1)).view(P, k)
    adv = (shaped - (shaped.sum(1, keepdim=True) - shaped) / (k - 1)).reshape(-1)  # TRL RLOO baseline
    loss = -(adv.float() * logp).mean()
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
    opt.step()
    t3 = time.perf_counter()
    return {"sampling": t1 - t0, "scoring": t2 - t1, "training": t3 - t2}


def step_gflop(cfg, P, Pt, k, T):
    """GFLOP of each phase of one step, counted from the shapes (a multiply-add = 2 FLOP):
    the trunk's matmuls (12 C^2 per token and layer), attention (QK^T and AV: 4 C per query
    token, layer and key in its context), the tied LM head (2 C V per row), x3 for a
    forward + backward. fdpo: each prompt's k samples packed with the prompt once (Pt - 1
    prompt rows, k branches of T rows), the head on the T completion rows of each sample only;
    sampling decodes the prompt once per prompt. PyTorch (this script): [P k, Pt + T - 1]
    batches, the head on every row; sampling prefills each of the P k rows."""
    C, L, V = cfg["n_embd"], cfg["n_layer"], cfg["vocab_size"]
    trunk, head = 2 * 12 * C * C * L, 2 * C * V

    def attn(contexts):  # one forward over query tokens whose contexts (keys seen) are listed
        return sum(4 * C * L * c for c in contexts)

    comp_ctx = [Pt + j for j in range(T)]              # completion row j sees the prompt + j earlier tokens
    prompt_ctx = list(range(1, Pt))                      # the prompt's first Pt - 1 rows
    f = {}
    # fdpo: scoring = one reference forward, training = the policy's forward + backward
    fwd = P * ((Pt - 1 + k * T) * trunk + k * T * head + attn(prompt_ctx) + k * attn(comp_ctx))
    f["fdpo"] = {"sampling": P * (Pt * trunk + head + attn(range(1, Pt + 1)))
                 + P * k * (T - 1) * (trunk + head) + P * k * attn(comp_ctx[1:]),
                 "scoring": fwd, "training": 3 * fwd}
    rows = Pt + T - 1
    fwd_t = P * k * (rows * (trunk + head) + attn(range(1, rows + 1)))
    f["torch"] = {"sampling": P * k * (Pt * trunk + head + attn(range(1, Pt + 1)) + (T - 1) * (trunk + head)
                                       + attn(comp_ctx[1:])),
                  "scoring": fwd_t, "training": 3 * fwd_t}
    return {s: {p: v / 1e9 for p, v in d.items()} for s, d in f.items()}


def print_work(a, res):
    """Each side's GFLOP per phase and each fdpo side's rate at its median phase times."""
    import statistics
    g = step_gflop(CONFIGS[a.config], a.prompts, a.prompt_tokens, a.n, a.new_tokens)
    for s in ("fdpo", "torch"):
        print(f"  work {s:6s}" + "".join(f"{g[s][p]:13.1f} GFLOP {p}" for p in PHASES)
              + f"{sum(g[s].values()):13.1f} GFLOP total")
    for side in (s for s in res if not s.startswith("torch")):
        med = {p: statistics.median(x[p] for x in res[side]) for p in PHASES}
        print(f"  {side} rate" + "".join(f"{g['fdpo'][p] / med[p]:13.1f} GFLOP/s {p}" if med[p] > 0 else "" for p in PHASES)
              + "   (compare with the sgemm peak above)")


def torch_worker(a):
    import torch
    torch.set_num_threads(a.threads)
    policy, ref = TorchGPT2(a.worker, True), TorchGPT2(a.worker, False)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    ids = torch.tensor([list(p.encode()) for p in prompt_texts(a.prompts, a.prompt_tokens)])
    g = torch.Generator().manual_seed(1)
    times = [torch_rl_step(policy, ref, opt, ids, a.n, a.new_tokens, g, a.worker_bf16) for _ in range(2)]
    print(json.dumps(times[-1]))


def rl_flags(ap):
    ap.add_argument("--ranks", type=interleave.count, default=1,
                    help="run the fdpo side as `mpirun -np N fdpo rl` on --threads / N threads each (N must divide "
                         "--threads)")


def rl_checks(ap, a):
    """RLOO's leave-one-out baseline needs k >= 2 (PyTorch's side divides by k - 1), and
    --ranks splits --threads into equal parts: the same cores as PyTorch's side."""
    if a.n < 2:
        ap.error(f"--n: RLOO needs at least 2 samples per prompt (got {a.n})")
    if a.threads % a.ranks:
        ap.error(f"--ranks: {a.ranks} ranks do not divide --threads {a.threads} (each rank runs --threads / --ranks "
                 "threads, the same cores as PyTorch's side in all)")


def fdpo_rl(d, tmp, a, precision, binary=FDPO):
    out = os.path.join(tmp, "run")
    launch, threads, ranks = [binary], a.threads, getattr(a, "ranks", 1)   # (ab_binaries: no --ranks)
    if ranks > 1:
        launch = [shutil.which("mpirun") or "mpirun", "--oversubscribe", "--allow-run-as-root", "-np", str(ranks), binary]
        threads = a.threads // ranks
    r = subprocess.run([*launch, "rl", "--model", d, "--data", os.path.join(tmp, "prompts.txt"), "--reward", "length:words",
                        "--out", out, "--algo", "rloo", "--divergence", "rkl", "--beta", str(BETA), "--steps", "2",
                        "--prompts-per-step", str(a.prompts), "--n", str(a.n), "--max-new-tokens", str(a.new_tokens),
                        "--lr", "1e-5", "--threads", str(threads), "--precision", precision, "--quiet"], capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"fdpo rl failed: {r.stderr}")
    m = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))][-1]
    subprocess.run(["rm", "-rf", out])
    return {p: m[f"time/{p}"] for p in PHASES}


def main():
    a = parse_args(__doc__, n_default=4, prompts_default=4, new_tokens_default=64, own_flags=rl_flags,
                   own_checks=rl_checks)
    if a.worker:
        torch_worker(a)
        return
    ranks = f"; fdpo on {a.ranks} MPI ranks x {a.threads // a.ranks} threads" if a.ranks > 1 else ""
    res = run_bench(a, f"RL step (RLOO): {a.prompts} prompts x k={a.n} samples x {a.new_tokens} new tokens, "
                 f"prompt {a.prompt_tokens} tokens{ranks}", fdpo_rl, [])
    print_work(a, res)


if __name__ == "__main__":
    main()
