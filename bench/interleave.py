"""Shared machinery of the benches: interleaved timing of several step servers and the
machine's measured peaks.

Every side of a bench (fdpo through `fdpo-harness ... --serve`, PyTorch through the bench
script's own `--worker` mode) is a long-lived subprocess that sets itself up, prints one
JSON "ready" line, then runs ONE step for each "step" line on stdin and answers one JSON
line with its "seconds". The driver steps the sides in turn (fdpo, torch, fdpo, torch, ...;
the order rotates every round so no side always runs right after another), so a change in
machine load hits every side alike. After the warm-up steps (two by default: see
interleave()) it repeats until every side
has `steps` timed steps (>= 5) and reports median and best per side and the ratio of
medians.
"""
import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bandwidth  # noqa: E402  (bench/bandwidth.py: the triad's size and the decode step's bytes)
HARNESS = os.environ.get("FDPO_HARNESS", os.path.join(HERE, "../build/fdpo-harness"))
MIN_TIMED_STEPS = 5


TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
TORCH_PRELOAD = None   # set by fair_blas_env: the allocator the PyTorch sides run on


def torch_cmd(argv):
    """argv of a PyTorch side, run on the allocator fair_blas_env chose for it (tcmalloc: with
    TCMALLOC_RELEASE_RATE=0 unless the environment sets one, see fair_blas_env)."""
    if not TORCH_PRELOAD:
        return list(argv)
    rate = [] if "TCMALLOC_RELEASE_RATE" in os.environ else ["TCMALLOC_RELEASE_RATE=0"]
    return ["env", f"LD_PRELOAD={TORCH_PRELOAD}"] + rate + list(argv)


def fair_blas_env():
    """PyTorch's fp32 matmuls (Debian torch 1.13) go to OpenBLAS 0.3.21, which does not
    recognise some AVX-512 CPUs (Zen 4 here) and then runs generic SSE3 kernels, 3-5x
    slower; fdpo's fp32 GEMMs go to oneDNN, which picks its kernels at run time. So that
    the ratios compare both sides at their best, the benches set OPENBLAS_CORETYPE=SkylakeX
    (inherited by every side) on AVX-512 CPUs, replacing any other value the environment
    holds (a machine set up with OPENBLAS_CORETYPE=Haswell for its tests gave PyTorch 204
    GFLOP/s on 1024x768x3072 against 357 with SkylakeX, and the benches' ratios 1.7x too
    high), and GOMP_SPINCOUNT=1000 (the fdpo programs' own choice) when no OpenMP wait
    setting is; FDPO_BENCH_KEEP_BLAS=1 keeps the environment as it is. Returns a note to
    print.

    The allocator too: PyTorch allocates and frees its activations every step, and glibc's
    malloc serves blocks over its mmap threshold with mmap and gives them back at free, so
    each step faults every page of them in again. On wave 9's VM that doubled PyTorch's
    124M train step (default 8.2 s; tcmalloc 3.4 s; jemalloc, which also hands pages back,
    16 s). PyTorch's CPU tuning guide recommends tcmalloc or jemalloc; the benches preload
    tcmalloc (Debian libtcmalloc-minimal4, scripts/deps.sh) into the PyTorch sides
    (torch_cmd) when LD_PRELOAD is unset. Not into fdpo's: its calloc'd buffers, which
    glibc leaves to the kernel's zero pages until touched, tcmalloc memsets whole, and an
    online round (124M) spent 2.5 s instead of 0.6 in scoring under it.

    tcmalloc still hands free pages back to the kernel a little at a time
    (TCMALLOC_RELEASE_RATE, default 1), and a later step faults them in again: wave 20 saw a
    PyTorch bf16 DPO step at 4.06 s with 40k page faults between steps at 3.46-3.53 s with
    ~2.5k. TCMALLOC_RELEASE_RATE=0 (never release; fdpo keeps its buffers too) made its
    steady steps 3.43-3.48 s with no faults, so torch_cmd sets it unless the environment
    does."""
    if os.environ.get("FDPO_BENCH_KEEP_BLAS") == "1":
        return ""
    notes = []
    global TORCH_PRELOAD
    if "LD_PRELOAD" not in os.environ:
        if os.path.exists(TCMALLOC):
            TORCH_PRELOAD = TCMALLOC
            notes.append("LD_PRELOAD=tcmalloc for the PyTorch sides (its recommended CPU allocator"
                         + (", TCMALLOC_RELEASE_RATE=0)" if "TCMALLOC_RELEASE_RATE" not in os.environ else ")"))
        else:
            notes.append(f"{TCMALLOC} not found (Debian libtcmalloc-minimal4): PyTorch runs on glibc malloc, "
                         "which refaults its freed activations every step, so its times are worse than its best")
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        # the fdpo programs set this themselves (src/cli/omp_spin.h): libgomp's default spin
        # of milliseconds per barrier wastes the partner thread's time slice on a shared
        # machine; PyTorch (GOMP too) gets the same setting
        os.environ["GOMP_SPINCOUNT"] = "1000"
        notes.append("GOMP_SPINCOUNT=1000 set for every side (what the fdpo programs use)")
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        flags = ""
    if os.environ.get("OPENBLAS_CORETYPE") != "SkylakeX" and " avx512f" in flags:
        was = os.environ.get("OPENBLAS_CORETYPE")
        os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"
        notes.append("OPENBLAS_CORETYPE=SkylakeX set for every side (OpenBLAS's AVX-512 kernels; "
                     + (f"the environment's {was} replaced" if was else "OpenBLAS misdetects this AVX-512 CPU") + ")")
    return "; ".join(notes) + ("; FDPO_BENCH_KEEP_BLAS=1 to keep the environment as it is" if notes else "")


# the environment a bench's header names when set (the BLAS, OpenMP and bf16 overrides)
ENV_KEYS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "FDPO_FORCE_BF16_FALLBACK",
            "LD_PRELOAD", "TCMALLOC_RELEASE_RATE")   # LD_PRELOAD: only when the environment sets it (then for every side)


def set_fair_env():
    """fair_blas_env(), its note printed; returns {key: value} of the ENV_KEYS set, for the header."""
    note = fair_blas_env()
    if note:
        print(note)
    return {k: os.environ[k] for k in ENV_KEYS if k in os.environ}


def count(value):
    """argparse type of the benches' counts (threads, steps, pairs, tokens, runs, repeats):
    an integer >= 1, else argparse's one-line error naming the flag, before anything runs
    (0 used to fail a minute in, after the peaks, or to print an empty goal table)."""
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1 (got {value!r})")
    return n


def is_executable(path):
    """a file this process may run (os.access alone also passes a directory)"""
    return os.path.isfile(path) and os.access(path, os.X_OK)


def names_in(value, known, flag, what, hint=""):
    """The comma list `value` of a flag (--configs, --sides, --only), each name one of
    `known`; any other name (or an empty one) exits with a message naming the flag, the
    bad name and the known ones (then `hint`), and so does a name given twice, before the
    bench measures anything."""
    names = value.split(",")
    for i, n in enumerate(names):
        if n not in known:
            sys.exit(f"{flag}: unknown {what} '{n}' (known: {', '.join(known)}{hint})")
        if n in names[:i]:   # it would run twice and, in a table, fill two rows or columns
            sys.exit(f"{flag}: {what} '{n}' named twice")
    return names


@contextlib.contextmanager
def gpt2_config_file(cfg):
    """The path of a temporary config.json of the GPT-2 shape cfg (what the harness's servers
    read), removed on leaving."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "config.json")
        with open(path, "w") as f:
            json.dump(dict(cfg, model_type="gpt2"), f)
        yield path


class StepServer:
    """One side of a bench: a subprocess speaking the ready/step/quit line protocol."""

    def __init__(self, name, argv, env=None):
        self.name = name
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, bufsize=1, env=env)
        self.ready = self._read()
        self.times = []
        self.cpu_times = []  # each step's process CPU seconds, when the server reports them
        self.phases = []     # each step's {phase: wall seconds}, when the server reports them

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read()
            sys.exit(f"{self.name}: the step server stopped: {err.strip()}")
        return json.loads(line)

    def step(self):
        try:
            self.proc.stdin.write("step\n")
            self.proc.stdin.flush()
        except BrokenPipeError:   # the server died: say why, as _read does
            sys.exit(f"{self.name}: the step server stopped (exit {self.proc.wait()}): {self.proc.stderr.read().strip()}")
        return self._read()

    def close(self):
        """Ends the server; returns its summary line (a dict) if it printed one."""
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        out, err = self.proc.communicate()
        if self.proc.returncode != 0:
            sys.exit(f"{self.name}: exit {self.proc.returncode}: {err.strip()}")
        lines = [l for l in out.splitlines() if l.startswith("{")]
        return json.loads(lines[-1]) if lines else {}


WARMUP_STEPS = 2   # why two: interleave()'s docstring


def interleave(servers, steps, warmup=WARMUP_STEPS, min_seconds=0.0, warmup_seconds=0.0):
    """Warm-up, then timed rounds. Each round steps every server once, starting one further
    along the list than the last round. Warm-up rounds run until every server has done
    `warmup` steps and spent `warmup_seconds` stepping (first-touch page faults, oneDNN's
    JIT, caches and the CPU clock settle there, not in the timed steps); timed rounds run
    until every server has `steps` (>= 5) timed steps summing to at least `min_seconds`, so
    a fast side gets enough samples for a stable median on a machine whose load moves.

    Two warm-up steps by default, not one: a training step's second iteration is the first
    in which the gradients and the optimizer's state (created by the first AdamW step) are
    alive together, so an allocator reaches its high-water mark there. Measured in wave 20
    (PyTorch 124M DPO step on tcmalloc, run alone): step 1 10.8-11.1 s, step 2 7.6-8.0 s
    with 245k page faults, then 5.35-5.65 s with < 10k; its bf16 step 2 took 4.6-4.9 s
    against 3.4-3.6. With one warm-up step that slow second step was the first timed one of
    five, which put PyTorch's IQR at 20-24 %."""
    steps = max(steps, MIN_TIMED_STEPS)
    spent = {id(s): 0.0 for s in servers}
    done = 0
    while done < warmup or min(spent.values()) < warmup_seconds:
        for s in servers:
            spent[id(s)] += s.step()["seconds"]
        done += 1
    r = 0
    while r < steps or min(sum(s.times) for s in servers) < min_seconds:
        k = r % len(servers)
        for s in servers[k:] + servers[:k]:
            r_ = s.step()
            s.times.append(r_["seconds"])
            if "cpu_seconds" in r_:
                s.cpu_times.append(r_["cpu_seconds"])
            if "phases" in r_:
                s.phases.append(r_["phases"])
        r += 1
    return servers


def stats(times):
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return dict(median=statistics.median(times), best=min(times), n=len(times), iqr=q[2] - q[0])


def machine_peaks(threads, gemm=None, triad_mib=None):
    """fp32 sgemm (oneDNN, fdpo's; and OpenBLAS) and bf16 GEMM (as fdpo calls it) GFLOP/s,
    measured now by `fdpo-harness model-peaks`; the memory-bandwidth limit: the DRAM STREAM
    triad with arrays sized by STREAM's rule (bench/bandwidth.py; triad_mib overrides the
    size: --triad-mib) under triad_gbs, the in-cache one under triad_cache_gbs; plus the fp32
    FMA and vdpbf16ps instruction rates (`fdpo-harness isa-peaks`) under "isa"."""
    argv = [HARNESS, "model-peaks", "--threads", str(threads)]
    if gemm:
        argv += ["--gemm", gemm]
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"model-peaks failed: {r.stderr}")
    peaks = json.loads(r.stdout.strip().splitlines()[-1])
    peaks.update(bandwidth.measure_triad(HARNESS, threads, dram_mib=triad_mib))
    # the instruction ceilings (register-resident, per second of CPU time: steady under
    # load): whether vdpbf16ps can beat fp32 FMA here at all (docs/model.md, bf16 on this CPU)
    r = subprocess.run([HARNESS, "isa-peaks", "--threads", str(threads)], capture_output=True, text=True)
    if r.returncode == 0:
        peaks["isa"] = json.loads(r.stdout.strip().splitlines()[-1])
    return peaks


def add_triad_arg(ap):
    """--triad-mib, the same in every bench: default STREAM's rule (bench/bandwidth.py)."""
    ap.add_argument("--triad-mib", type=count, default=None,
                    help="MiB per array of the DRAM bandwidth triad (default: STREAM's rule, each array >= 4 x the "
                         "last-level cache, capped by free memory)")


def print_peaks(p):
    print(f"machine peaks (measured now, {p['threads']} threads): fp32 sgemm {p['sgemm_gflops']:.1f} GFLOP/s "
          f"(oneDNN, fdpo's; OpenBLAS {p.get('openblas_sgemm_gflops', 0):.1f}"
          f"{', OPENBLAS_CORETYPE=' + os.environ['OPENBLAS_CORETYPE'] if 'OPENBLAS_CORETYPE' in os.environ else ''}), "
          f"bf16 GEMM {p['bf16_gflops']:.1f} GFLOP/s (as fdpo runs it; "
          f"{'oneDNN vdpbf16ps ' + format(p.get('dpbf16_gemm_gflops', 0), '.1f') if p['bf16_native'] else 'no AVX512-BF16: fp32 route'})"
          f"  [GEMM {'x'.join(map(str, p['gemm']))}]")
    print(bandwidth.triad_line(p))
    isa = p.get("isa")
    if isa:
        print(f"instruction ceilings ({isa['threads']} threads, register-resident, per CPU second): fp32 FMA "
              f"{isa['fma_fp32_cpu_gflops']:.0f} GFLOP/s, vdpbf16ps {isa['dpbf16_cpu_gflops']:.0f} "
              f"({isa['bf16_over_fp32']:.2f}x fp32)")


def gpt2_train_flops(cfg, seq_lens, causal=False):
    """FLOPs of one forward + backward (3x forward) of GPT-2 on sequences of these
    lengths: every linear layer and the LM head (2 N in out), plus the two attention
    products computed over full T x T tiles (Q K^T and P V: 4 T^2 C per layer), or with
    causal over the T (T + 1) / 2 query-key pairs the causal mask leaves (the least any
    implementation must compute: step_floor)."""
    C, L, V = cfg["n_embd"], cfg["n_layer"], cfg["vocab_size"]
    N = sum(seq_lens)
    pairs = sum(T * (T + 1) // 2 if causal else T * T for T in seq_lens)
    fwd = 2 * N * (L * 12 * C * C + C * V) + L * 4 * pairs * C
    return 3 * fwd


def gemm_peak(peaks, side):
    """The measured GEMM peak (GFLOP/s) a side's matmuls run against: bf16 for *bf16 sides."""
    return peaks["bf16_gflops"] if "bf16" in side else peaks["sgemm_gflops"]


def step_floor(flops, gemm_gflops):
    """The seconds a training step cannot beat on this machine: its FLOPs at the GEMM peak of
    its precision measured in the same run. Everything else a step does (AdamW, LayerNorm,
    GELU, softmax, the gradient norm, GEMMs too small for the peak) only adds, so a goal
    whose ratio at the floor (the competitor's median / floor) is below it cannot be met by
    removing overhead. AdamW is left out on purpose although it cannot overlap the GEMMs
    (it needs the whole gradient): it updates in place, so it moves its bytes faster than
    the STREAM triad reports (wave 21: 40 ms for 124M parameters x 30 B = 92-94 GB/s against
    triads of 59-77 GB/s, which count 24 B per element and move 32 with the write-allocate),
    and a term at the triad would put the floor above a step that beats it."""
    return flops / (gemm_gflops * 1e9)


def floors(servers, flops, peaks):
    """{side: step_floor} for the fdpo sides."""
    return {s.name: step_floor(flops, gemm_peak(peaks, s.name)) for s in servers if s.name.startswith("fdpo")}


def floor_line(floor_s, servers, against=("torch-fp32", "torch-bf16")):
    """One line: each fdpo side's floor, its median as a % of it, and the ratio to each torch
    side's median that a step at the floor would give (the most that side could reach here)."""
    med = medians(servers)
    parts = []
    for name, f in floor_s.items():
        vs = [f"{med[t] / f:.2f}x {t}" for t in against if t in med]
        parts.append(f"{name} {f:.4f}s (its median runs at {100 * f / med[name]:.0f}% of that speed)"
                     + (": " + ", ".join(vs) if vs else ""))
    return "  floor (the FLOPs at the GEMM peak measured above): " + "; ".join(parts)


def write_json(path, record):
    """Append one JSON line (a bench's medians, for scripts/run-bench.sh --goals)."""
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def medians(servers):
    return {s.name: stats(s.times)["median"] for s in servers}


def report(servers, flops_per_step=None, peaks=None, baseline=None, unit_per_step=None, unit=None):
    """One line per side: median/best step, optional throughput in `unit`, achieved
    GFLOP/s and % of the relevant peak (bf16 sides against the bf16 GEMM peak), and the
    ratio of medians against `baseline` (a server name)."""
    base = next((s for s in servers if s.name == baseline), None)
    for s in servers:
        st = stats(s.times)
        line = (f"  {s.name:24s} median {st['median']:.4f}s  best {st['best']:.4f}s  (n={st['n']}, "
                f"IQR {100 * st['iqr'] / st['median']:.0f}%)")
        if unit_per_step:
            line += f"  {unit_per_step / st['median']:10.1f} {unit}"
        if flops_per_step:
            g = flops_per_step / st["median"] * 1e-9
            line += f"  {g:7.1f} GFLOP/s"
            if peaks:
                bf16 = "bf16" in s.name
                peak = peaks["bf16_gflops"] if bf16 else peaks["sgemm_gflops"]
                line += f" = {100 * g / peak:5.1f}% of {'bf16' if bf16 else 'sgemm'} peak"
        if base is not None and s is not base:
            line += f"  ratio of medians {stats(base.times)['median'] / st['median']:.2f}x vs {base.name}"
        print(line)
    sys.stdout.flush()


def serve_torch_steps(step, bf16):
    """The PyTorch side of an interleaved bench, in its server process: after warm-up the
    caller built step(); answer each "step" line on stdin with its wall and CPU seconds
    (under bf16 autocast, what TRL's bf16=True does on a CPU), then the peak RSS."""
    import resource
    import time
    import torch
    print(json.dumps({"ready": 1, "torch": torch.__version__}), flush=True)
    for line in sys.stdin:
        if not line.startswith("step"):
            break
        t0, c0 = time.perf_counter(), time.process_time()
        if bf16:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                step()
        else:
            step()
        print(json.dumps({"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}), flush=True)
    print(json.dumps({"max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}), flush=True)


def torch_dpo_batch(V, pairs, Tp, Tc):
    """The PyTorch DPO sides' batch: 2 * pairs random sequences (chosen rows first) of a
    Tp-token prompt and a Tc-token completion. Returns (ids [B, T], the causal mask [T, T],
    loss_mask [B, T-1]: 1 where the target is a completion token)."""
    import torch
    T = Tp + Tc
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, V, (2 * pairs, T), generator=g)
    loss_mask = torch.zeros(2 * pairs, T - 1)
    loss_mask[:, Tp - 1:] = 1
    return ids, mask, loss_mask


def serve_torch_dpo_steps(policy_logps, ref_logps, pairs, params, opt, bf16):
    """serve_torch_steps of the sigmoid DPO step the benches time (beta 0.1, gradient norm
    clipped to 1): policy_logps() and ref_logps() give the sequence log-probs of the batch's
    2 * pairs rows, chosen first; the reference's under no_grad."""
    import torch
    import torch.nn.functional as F

    def step():
        logps = policy_logps()
        with torch.no_grad():
            ref = ref_logps()
        lw, ll = (logps - ref)[:pairs], (logps - ref)[pairs:]
        loss = -F.logsigmoid(0.1 * (lw - ll)).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    serve_torch_steps(step, bf16)


def torch_gpt2_params(cfg, requires_grad=True):
    """GPT-2's parameters in the TRL layout the PyTorch sides time (weights [in, out]; GPT-2's
    init: N(0, 0.02), the residual projections 0.02 / sqrt(2 L)), drawn from torch's global
    generator: dict(wte, wpe, lnfw, lnfb, layers=[dict(ln1w, ..., fcprojb)])."""
    import math
    import torch
    V, C, L = cfg["vocab_size"], cfg["n_embd"], cfg["n_layer"]

    def w(*shape, std=0.02):
        return torch.nn.Parameter(torch.randn(*shape) * std, requires_grad=requires_grad)

    def z(*shape):
        return torch.nn.Parameter(torch.zeros(*shape), requires_grad=requires_grad)

    def o(*shape):
        return torch.nn.Parameter(torch.ones(*shape), requires_grad=requires_grad)

    return dict(wte=w(V, C), wpe=w(cfg["n_positions"], C), lnfw=o(C), lnfb=z(C), layers=[
        dict(ln1w=o(C), ln1b=z(C), qkvw=w(C, 3 * C), qkvb=z(3 * C), projw=w(C, C, std=0.02 / math.sqrt(2 * L)),
             projb=z(C), ln2w=o(C), ln2b=z(C), fcw=w(C, 4 * C), fcb=z(4 * C),
             fcprojw=w(4 * C, C, std=0.02 / math.sqrt(2 * L)), fcprojb=z(C)) for _ in range(L)])


def torch_gpt2_blocks(x, layers, mask, n_head):
    """x [B, T, C] through GPT-2's transformer blocks (torch_gpt2_params' layers; mask [T, T]
    True where a query may attend), before the final layer norm."""
    import math
    import torch
    import torch.nn.functional as F
    B, T, C = x.shape
    hs = C // n_head
    for l in layers:
        h = F.layer_norm(x, (C,), l["ln1w"], l["ln1b"], 1e-5)
        q, k, v = (h @ l["qkvw"] + l["qkvb"]).split(C, dim=-1)
        q, k, v = (t.view(B, T, n_head, hs).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(hs))
        att = torch.softmax(att.masked_fill(~mask, float("-inf")), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + y @ l["projw"] + l["projb"]
        h = F.layer_norm(x, (C,), l["ln2w"], l["ln2b"], 1e-5)
        h = F.gelu(h @ l["fcw"] + l["fcb"], approximate="tanh")
        x = x + h @ l["fcprojw"] + l["fcprojb"]
    return x
