"""Data parallelism on one box: 2 ranks x 1 thread (mpirun -np 2) vs 1 rank x 2 threads, and
2 ranks with --allreduce-overlap.

One step = a `fdpo pretrain` optimizer step (default) or, with --dpo, a `fdpo dpo` step (the
issue's "124M DPO step": policy forward + backward of chosen and rejected, the reference
log-probs from the cache computed before the first step): forward + backward of grad_accum
micro-batches, the gradient allreduce (2 ranks only), AdamW. The same global batch on every
side, so all compute the same numbers (docs/scaling.md). The third side, "2 ranks x 1 thread,
overlap", passes --allreduce-overlap: each layer's gradient is summed (MPI_Iallreduce) while
backward computes the layers below; its dist/allreduce_seconds is then the collective time
left exposed (launches, progress calls, the final wait and the non-layer tensors). The shapes go through
`--config FILE` (an INI file this script writes): --small (default, < 2 minutes) or --124m
(GPT-2 124M: n_layer 12, n_embd 768, n_head 12, with the BYTE-LEVEL vocabulary of 257
tokens, not 50257: pretrain's vocabulary is its tokenizer's, and a 50257-token BPE cannot be
trained from the text at hand; the 38.4M parameters of the larger embedding are added back
analytically in docs/scaling.md).

Per-step numbers come from each run's metrics.jsonl (--log-every 1): step seconds = global
tokens / tokens_per_sec, and with 2 ranks dist/allreduce_seconds (all collectives of the
step, including waiting for the slower rank) and dist/comm_fraction. Interleaving: the two
configurations run in turn (1x2, 2x1, 2x1, 1x2, ...: the order flips every round), each run
one warm-up step (dropped) plus --steps-per-run timed steps, until both have >= --steps
timed steps; report median and best per configuration, the ratio of medians, the allreduce
seconds and share per 2-rank side, and the gradient bytes (n_params * 4). For --dpo the
tokens of a step are not in metrics.jsonl: every pair has the same lengths, so a step's tokens
are counted from the pairs (dpo_step_tokens: batch x grad-accum pairs of (P - 1) + Cw + Cl
tokens, the shared layout), the same on every side whatever the rank count. A 2-rank row must
agree (tokens_per_sec x allreduce_seconds / comm_fraction is the step's tokens as fdpo counted
them): fdpo before wave 43 counted a dpo step's tokens once per rank, so its 2-rank
tokens_per_sec was twice the job's, and this bench, which then took the count from that row,
gave every 1-rank DPO step twice its time (docs/scaling.md).

    /usr/bin/python3 bench/bench_mpi.py                 # small shapes, < 2 minutes
    /usr/bin/python3 bench/bench_mpi.py --124m --steps 6
    /usr/bin/python3 bench/bench_mpi.py --124m --dpo --steps 6   # the issue's measurement
    /usr/bin/python3 bench/bench_mpi.py --no-overlap     # without the third side
    /usr/bin/python3 bench/bench_mpi.py --llama          # the same shapes as --arch llama (GQA: n_head / 2
                                                         # key/value heads), e.g. the Llama overlap hook
    /usr/bin/python3 bench/bench_mpi.py --json out.json

The machine is shared (other engineers, a sanitizer run): medians of interleaved runs
spread a load change over both sides, but absolute times carry that caveat.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import interleave  # noqa: E402  (interleave.count: the --steps checks)
FDPO = os.environ.get("FDPO_BIN", os.path.join(HERE, "../build/fdpo"))
HARNESS = os.environ.get("FDPO_HARNESS", os.path.join(HERE, "../build/fdpo-harness"))
MIN_TIMED_STEPS = 5

# name: (INI shapes, batch_size, grad_accum); seq_len = n_positions
SHAPES = {
    "small": (dict(n_layer=4, n_embd=128, n_head=4, n_positions=128), 2, 4),
    "124m": (dict(n_layer=12, n_embd=768, n_head=12, n_positions=128), 1, 2),
}


def n_params(s, vocab=257):
    """GPT-2 parameter count (tied LM head): wte, wpe, per layer 12C^2 + 13C, final LN.
    --arch llama (tied head, no biases): embedding, per layer two RMSNorms, q/k/v/o and the
    SwiGLU's three matrices, final RMSNorm."""
    C, L, P = s["n_embd"], s["n_layer"], s["n_positions"]
    if s.get("arch") == "llama":
        return vocab * C + L * (2 * C + llama_layer_matmul_params(s)) + C
    return vocab * C + P * C + L * (12 * C * C + 13 * C) + 2 * C


def llama_layer_matmul_params(s):
    """q, k, v, o and gate, up, down of one Llama layer; the SwiGLU width is fdpo's default
    (fdpo_train_opts_intermediate_size: 8/3 C rounded up to a multiple of 32)"""
    C, KD = s["n_embd"], s["n_embd"] // s["n_head"] * s["n_kv_head"]
    F = (8 * C + 3 * 32 - 1) // (3 * 32) * 32   # ceil(8 C / 3 / 32) * 32
    return C * (C + 2 * KD) + C * C + 3 * C * F


def shapes_of(name, llama):
    shapes, B, A = SHAPES[name]
    if llama:
        shapes = dict(shapes, arch="llama", n_kv_head=shapes["n_head"] // 2)
    return shapes, B, A


def write_inputs(tmp, name, llama=False):
    shapes, B, A = shapes_of(name, llama)
    cfg = os.path.join(tmp, f"{name}.ini")
    with open(cfg, "w") as f:
        f.write(f"[model]\n")
        for k, v in shapes.items():
            f.write(f"{k.replace('_', '-')} = {v}\n")
        f.write(f"[train]\nseq-len = {shapes['n_positions']}\nbatch-size = {B}\ngrad-accum = {A}\n"
                f"lr = 1e-4\nseed = 1\nlog-every = 1\neval-every = 0\n")
    text = os.path.join(tmp, "text.txt")
    readme = open(os.path.join(HERE, "../README.md")).read()
    with open(text, "w") as f:
        f.write(readme * 20)
    return cfg, text, B * A * shapes["n_positions"]


DPO_PROMPT_BYTES, DPO_COMPLETION_BYTES = 24, 40


def dpo_step_tokens(pairs, batch_size, grad_accum):
    """the positions one fdpo dpo step runs through the policy, counted from the pairs (rows of
    the pairs file, all of one length) with docs/dpo.md's shared layout (dpo's default): per
    pair (P - 1) + Cw + Cl, byte-level tokens, each completion ending with <|endoftext|>"""
    per_pair = {(len(r["prompt"]) - 1) + (len(r["chosen"]) + 1) + (len(r["rejected"]) + 1) for r in pairs}
    assert len(per_pair) == 1 and all(r[k].isascii() for r in pairs for k in ("prompt", "chosen", "rejected"))
    return batch_size * grad_accum * per_pair.pop()


def check_dpo_tokens(rows, tokens):
    """fdpo's own count of a 2-rank step (tokens_per_sec x the step's seconds) against the
    count of the pairs: a binary that counts otherwise gives rates this bench cannot use"""
    m = next(m for m in rows if m["dist/comm_fraction"] > 0)
    counted = m["tokens_per_sec"] * m["dist/allreduce_seconds"] / m["dist/comm_fraction"]
    if abs(counted - tokens) > 1e-6 * tokens:
        sys.exit(f"{FDPO}: a 2-rank dpo step logged {counted:.1f} tokens, the pairs hold {tokens}: its tokens_per_sec "
                 f"is not the job's (fdpo before wave 43 counted a step's tokens once per rank); use a newer build")


def write_dpo_inputs(tmp, cfg, text):
    """a starting checkpoint of the bench's shapes (one pretrain step) and 64 pairs with fixed
    lengths (prompt 24, chosen and rejected 40 bytes: byte-level tokens), so every step has
    the same tokens; returns (checkpoint, pairs file, dpo config, tokens per step)"""
    init = os.path.join(tmp, "init")
    r = subprocess.run([FDPO, "pretrain", "--config", cfg, "--steps", "1", "--out", init, "--quiet", text],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"pretrain (starting checkpoint): exit {r.returncode}\n{r.stderr}")
    # dpo takes the model's shapes from the checkpoint: its config has the batch keys only
    _, B, A = SHAPES[os.path.basename(cfg)[:-len(".ini")]]
    dpo_cfg = os.path.join(tmp, "dpo.ini")
    with open(dpo_cfg, "w") as f:
        f.write(f"[train]\nbatch-size = {B}\ngrad-accum = {A}\nlr = 1e-4\nseed = 1\nlog-every = 1\neval-every = 0\n")
    pairs = os.path.join(tmp, "pairs.jsonl")
    rows = [{"prompt": f"question {i:04d}: which is it?"[:DPO_PROMPT_BYTES],
             "chosen": ("yes, it is the first one " * 2)[:DPO_COMPLETION_BYTES],
             "rejected": (f"no {i:04d} it is another one " * 2)[:DPO_COMPLETION_BYTES]} for i in range(64)]
    with open(pairs, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return init, pairs, dpo_cfg, dpo_step_tokens(rows, B, A)


def run(ranks, threads, cfg, text, steps, out, overlap=False, dpo=None):
    if dpo:
        init, pairs, dpo_cfg = dpo[:3]
        argv = [FDPO, "dpo", "--config", dpo_cfg, "--model", init, "--data", pairs, "--eval-fraction", "0",
                "--ref-cache-dir", os.path.join(os.path.dirname(out), "cache"), "--threads", str(threads),
                "--steps", str(steps), "--out", out, "--quiet"]
    else:
        argv = [FDPO, "pretrain", "--config", cfg, "--threads", str(threads), "--steps", str(steps),
                "--out", out, "--quiet", text]
    if overlap:
        argv.append("--allreduce-overlap")
    if ranks > 1:
        argv = [shutil.which("mpirun") or sys.exit("mpirun not found (scripts/deps.sh installs Open MPI)"),
                "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", str(ranks)] + argv
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    r = subprocess.run(argv, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"{' '.join(argv)}: exit {r.returncode}\n{r.stdout}{r.stderr}")
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(l) for l in f if l.strip()]
    shutil.rmtree(out)
    return [m for m in rows if "tokens_per_sec" in m]


# ---- the scaling model of docs/scaling.md ----
# Projected models: GPT-2 layout, vocab 50257, 1024 positions, tied LM head.
PROJECTED = {"124M": dict(n_layer=12, n_embd=768, vocab=50257, n_positions=1024),
             "1.1B": dict(n_layer=20, n_embd=2048, vocab=50257, n_positions=1024)}
# link bandwidth in Gbit/s -> per-message latency alpha in seconds (TCP on 10 GbE; RDMA-class 100 Gbit/s)
NETWORKS = {10: 30e-6, 100: 3e-6}
NODES = [2, 4, 8, 16, 32, 64]


def flops_per_token(n_layer, n_embd, vocab, seq, layer_matmul_params=None):
    """forward + backward: 6 x (matmul weights incl. the LM head) + 12 L T C for attention (Kaplan et al.);
    a layer's matmul weights are GPT-2's 12 C^2 unless given"""
    per_layer = 12 * n_embd ** 2 if layer_matmul_params is None else layer_matmul_params
    return 6 * (n_layer * per_layer + vocab * n_embd) + 12 * n_layer * seq * n_embd


def ring_allreduce_seconds(nodes, grad_bytes, gbit, alpha):
    """ring allreduce: reduce-scatter + all-gather move 2(N-1)/N of the buffer through each
    link; fdpo sends FDPO_DIST_BUCKET (4M floats) per call, each call 2(N-1) latency hops"""
    buckets = -(-grad_bytes // (4 * (4 << 20)))
    return 2 * (nodes - 1) / nodes * grad_bytes / (gbit * 1e9 / 8) + 2 * (nodes - 1) * buckets * alpha


def projection(sec_per_flop, tokens_per_node=(1024, 16384)):
    """rows for the doc's table: per model, network and N: allreduce seconds, the global batch
    (tokens) at which efficiency T_c/N / T(N) falls to 50% (T_c/N = T_ar), and the speed-up
    T_c / T(N) when each node keeps tokens_per_node tokens per step (weak scaling)"""
    rows = []
    for name, m in PROJECTED.items():
        P = n_params(dict(m, n_head=1), m["vocab"])
        t_tok = sec_per_flop * flops_per_token(m["n_layer"], m["n_embd"], m["vocab"], m["n_positions"])
        for gbit, alpha in NETWORKS.items():
            for N in NODES:
                t_ar = ring_allreduce_seconds(N, 4 * P, gbit, alpha)
                row = dict(model=name, params=P, gbit=gbit, nodes=N, allreduce_s=t_ar,
                           batch50_tokens=N * t_ar / t_tok, node_seconds_per_token=t_tok)
                for b in tokens_per_node:
                    t_c = N * b * t_tok   # the global batch on one node
                    row[f"speedup_{b}"] = t_c / (t_c / N + t_ar)
                rows.append(row)
    return rows


def print_projection(rows):
    print("| model | link | N | allreduce s | global batch for 50% efficiency (tokens) "
          "| speed-up, 1024 tok/node (1 sequence) | speed-up, 16384 tok/node |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['gbit']} Gbit/s | {r['nodes']} | {r['allreduce_s']:.3f} | "
              f"{r['batch50_tokens']:,.0f} | {r['speedup_1024']:.1f} | {r['speedup_16384']:.1f} |")


def copy_bandwidth(nbytes):
    """bytes/s of one large memory copy (numpy, one thread): the shared-memory transport's ceiling"""
    import numpy as np
    a = np.ones(nbytes // 4, dtype=np.float32)
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t0)
    return nbytes / best


def derive(res):
    """Adds the node's compute rate and the 2-rank allreduce model to a bench result."""
    one, two = res["sides"]["1 rank x 2 threads"], res["sides"]["2 ranks x 1 thread"]
    c = res["config"]
    # one node (this 2-core box) computes a step in the faster configuration's compute time
    compute = min(one["median"], two["median"] - res["allreduce_seconds"]["median"])
    res["node_seconds_per_flop"] = compute / (res["global_tokens_per_step"] * flops_per_token(
        c["n_layer"], c["n_embd"], res["vocab"], c["n_positions"],
        llama_layer_matmul_params(c) if c.get("arch") == "llama" else None))
    res["copy_bytes_per_second"] = copy_bandwidth(res["gradient_bytes"])
    # the model for 2 ranks over shared memory: 2(N-1)/N * bytes / copy bandwidth, N = 2
    res["model_allreduce_seconds"] = res["gradient_bytes"] / res["copy_bytes_per_second"]
    return res


def allreduce_alone(n_floats, reps):
    """the gradient allreduce without the training around it (fdpo-harness dist-allreduce under
    mpirun -np 2; a barrier before each, so no waiting for a slower rank is counted)"""
    r = subprocess.run([shutil.which("mpirun"), "--allow-run-as-root", "--oversubscribe", "--bind-to", "none",
                        "-np", "2", HARNESS, "dist-allreduce", str(n_floats), str(reps)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"dist-allreduce: exit {r.returncode}\n{r.stdout}{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])["seconds"][1:]   # the first one warms up


def stats(xs):
    return dict(median=statistics.median(xs), best=min(xs), n=len(xs))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", action="store_const", dest="shape", const="small", default="small",
                    help="small shapes (default, < 2 minutes)")
    ap.add_argument("--124m", action="store_const", dest="shape", const="124m",
                    help="GPT-2 124M shapes with the byte-level vocabulary")
    ap.add_argument("--steps", type=interleave.count, default=6, help="timed steps per configuration (>= 5)")
    ap.add_argument("--steps-per-run", type=interleave.count, default=3, help="timed steps per run (plus 1 warm-up)")
    ap.add_argument("--dpo", action="store_true", help="time fdpo dpo steps instead of pretrain steps")
    ap.add_argument("--llama", action="store_true", help="the same shapes as a Llama (--arch llama, n_head / 2 key/value heads)")
    ap.add_argument("--no-overlap", action="store_true", help="leave out the --allreduce-overlap side")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--project", metavar="JSON", help="print the N-node projection table from a saved --json result and exit")
    a = ap.parse_args()
    if a.project:
        res = derive(json.load(open(a.project)))
        print(f"node compute: {res['node_seconds_per_flop'] * 1e9:.4f} s per GFLOP (from {a.project}); "
              f"2-rank allreduce model {res['model_allreduce_seconds']:.4f} s "
              f"(copy bandwidth {res['copy_bytes_per_second'] / 1e9:.1f} GB/s now) vs measured median "
              f"{res['allreduce_seconds']['median']:.4f} s, best {res['allreduce_seconds']['best']:.4f} s")
        if "allreduce_alone_seconds" not in res:   # a result saved before the harness timing existed
            res["allreduce_alone_seconds"] = stats(allreduce_alone(res["n_params"], 7))
        print(f"gradient allreduce alone now: median {res['allreduce_alone_seconds']['median']:.4f} s, "
              f"best {res['allreduce_alone_seconds']['best']:.4f} s")
        print_projection(projection(res["node_seconds_per_flop"]))
        return
    steps = max(a.steps, MIN_TIMED_STEPS)
    t_start = time.time()
    tmp = tempfile.mkdtemp(prefix="bench_mpi_")
    try:
        cfg, text, global_tokens = write_inputs(tmp, a.shape, a.llama)
        dpo = write_dpo_inputs(tmp, cfg, text) if a.dpo else None
        sides = {"1 rank x 2 threads": (1, 2, False), "2 ranks x 1 thread": (2, 1, False)}
        if not a.no_overlap:
            sides["2 ranks x 1 thread, overlap"] = (2, 1, True)
        rows_of = {k: [] for k in sides}
        rnd = 0
        while min(len(v) for v in rows_of.values()) < steps:
            order = list(sides) if rnd % 2 == 0 else list(reversed(sides))
            for name in order:
                ranks, threads, overlap = sides[name]
                rows = run(ranks, threads, cfg, text, a.steps_per_run + 1, os.path.join(tmp, f"out{rnd}"),
                           overlap, dpo)
                rows_of[name] += rows[1:]   # the first step is the warm-up
            rnd += 1
        if dpo:   # the step's tokens, counted from the pairs (the same on every side)
            global_tokens = dpo[3]
            check_dpo_tokens(rows_of["2 ranks x 1 thread"], global_tokens)
        times = {k: [global_tokens / m["tokens_per_sec"] for m in v] for k, v in rows_of.items()}
        comm = {k: [m["dist/allreduce_seconds"] for m in v] for k, v in rows_of.items() if sides[k][0] > 1}
        frac = {k: [m["dist/comm_fraction"] for m in v] for k, v in rows_of.items() if sides[k][0] > 1}
        overlapped = [m["dist/overlapped_layers"] for m in rows_of.get("2 ranks x 1 thread, overlap", [])]
        pure = allreduce_alone(n_params(shapes_of(a.shape, a.llama)[0]), 7)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shapes = shapes_of(a.shape, a.llama)[0]
    res = dict(shape=a.shape, command="dpo" if a.dpo else "pretrain", config=shapes, batch_size=SHAPES[a.shape][1], grad_accum=SHAPES[a.shape][2],
               vocab=257, global_tokens_per_step=global_tokens, n_params=n_params(shapes),
               gradient_bytes=4 * n_params(shapes),
               sides={k: stats(v) for k, v in times.items()},
               allreduce_seconds=stats(comm["2 ranks x 1 thread"]), comm_fraction=stats(frac["2 ranks x 1 thread"]),
               collectives={k: dict(seconds=stats(comm[k]), share=stats(frac[k])) for k in comm},
               allreduce_alone_seconds=stats(pure), overlapped_layers=overlapped,
               load_average=os.getloadavg(), wall_seconds=time.time() - t_start)
    derive(res)
    one, two = res["sides"]["1 rank x 2 threads"], res["sides"]["2 ranks x 1 thread"]
    print(f"fdpo {res['command']}, shape {a.shape}: {shapes}, vocab 257 (byte-level), {res['n_params']:,} parameters, "
          f"gradient {res['gradient_bytes'] / 2**20:.1f} MiB, {global_tokens} tokens per step")
    for k, s in res["sides"].items():
        print(f"  {k:20s} median {s['median']:.4f} s  best {s['best']:.4f} s  ({s['n']} steps)")
    print(f"  2 ranks / 1 rank (median step): {two['median'] / one['median']:.3f}")
    ov = res["sides"].get("2 ranks x 1 thread, overlap")
    if ov:
        print(f"  overlap / no overlap, 2 ranks (median step): {ov['median'] / two['median']:.3f} "
              f"(< 1: --allreduce-overlap pays on this machine); layers summed during backward: "
              f"{min(overlapped)}-{max(overlapped)} of {shapes['n_layer']}")
    for k, c in res["collectives"].items():
        print(f"  collectives per step, {k}: median {c['seconds']['median']:.4f} s, share {c['share']['median']:.3f}")
    print(f"  collectives per step (2 ranks): median {res['allreduce_seconds']['median']:.4f} s, "
          f"share {res['comm_fraction']['median']:.3f}; "
          f"effective allreduce bandwidth {res['gradient_bytes'] / res['allreduce_seconds']['median'] / 1e9:.2f} GB/s "
          f"(gradient bytes / collective seconds)")
    print(f"  gradient allreduce alone (fdpo-harness dist-allreduce, 2 ranks): median "
          f"{res['allreduce_alone_seconds']['median']:.4f} s, best {res['allreduce_alone_seconds']['best']:.4f} s")
    print(f"  model 2(N-1)/N * bytes / copy bandwidth ({res['copy_bytes_per_second'] / 1e9:.1f} GB/s, N=2): "
          f"{res['model_allreduce_seconds']:.4f} s vs measured median {res['allreduce_seconds']['median']:.4f} s, "
          f"best {res['allreduce_seconds']['best']:.4f} s")
    print(f"  node compute {res['node_seconds_per_flop'] * 1e9:.4f} s per GFLOP "
          f"({1e-9 / res['node_seconds_per_flop']:.1f} GFLOP/s); projection to N nodes (docs/scaling.md):")
    print_projection(projection(res["node_seconds_per_flop"]))
    print(f"  load average {res['load_average'][0]:.2f} (shared machine); wall {res['wall_seconds']:.0f} s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
