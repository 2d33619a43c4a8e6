"""The memory-bandwidth limit every bench reports, and what a decoding step reads.

The limit is DRAM bandwidth, measured as STREAM measures it (McCalpin's stream.c): the
triad a = b + s c with each array at least 4 x the size of the sum of all the last-level
caches used in the run (or 1 million of STREAM's 8-byte elements, whichever is larger), so
the arrays cannot stay in cache between passes; the best of 10 timed runs after an untimed
one. This machine's L3 is 260 MiB, so each array is 1040 MiB and the three 3.05 GiB; a
triad over 3 x 64 MiB (192 MiB) partly runs from that L3 and read 33-38 GB/s idle against
22-27 GB/s at 3 x 256 MiB (2.95 x LLC: short of STREAM's 4 x): two sizes, two answers.

The sizes come from pure functions (`llc_from_caches`, `triad_sizes`) that the tests check
against hand-computed values; `machine_llc` and `mem_available_bytes` read them from
sysfs and /proc/meminfo. `measure_triad` runs `fdpo-harness triad` (tests/harness/
h_triad.c, the one triad every bench and the goal table use). `decode_step_bytes` is the
sampling row's numerator: the bytes one decoding step must read.
"""
import json
import os
import subprocess
import sys

MIB = 1 << 20
STREAM_LLC_MULTIPLE = 4          # stream.c: each array >= 4 x the sum of the last-level caches
STREAM_MIN_ARRAY = 1000000 * 8   # ... or 1 million elements (stream.c's 8-byte doubles)
MEM_FRACTION = 0.5               # the three arrays take at most half of MemAvailable
DEFAULT_LLC = 256 * MIB          # assumed when neither sysfs nor sysconf knows the caches
CACHE_FRACTION = 8               # the in-cache triad's arrays: LLC / 8 each (3/8 of the LLC)


def parse_size(text):
    """A sysfs cache size ("48K", "266240K", "2M") or plain byte count -> bytes."""
    t = text.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    return int(t[:-1] if mult > 1 else t) * mult


def llc_from_caches(caches):
    """The last-level cache of a set of CPUs. caches: one dict per (cpu, cache index) with
    level (int), type ("Data", "Instruction", "Unified"), size (bytes) and shared (the
    cache's shared_cpu_list: which CPUs share that one instance). Instruction caches do not
    count. Returns (level, total bytes of the distinct instances at the highest level,
    number of instances): STREAM's rule sums all the last-level caches of the run, so two
    sockets of 32 MiB are 64 MiB, while one L3 that every CPU shares counts once."""
    data = [c for c in caches if c["type"] != "Instruction"]
    if not data:
        return None
    level = max(c["level"] for c in data)
    seen = {}
    for c in data:
        if c["level"] == level:
            seen[c["shared"]] = c["size"]
    return level, sum(seen.values()), len(seen)


def read_caches(cpus=None, root="/sys/devices/system/cpu"):
    """The caches sysfs lists for these CPUs (default: the ones this process may run on)."""
    if cpus is None:
        cpus = sorted(os.sched_getaffinity(0))
    out = []
    for cpu in cpus:
        d = os.path.join(root, f"cpu{cpu}", "cache")
        try:
            names = sorted(n for n in os.listdir(d) if n.startswith("index"))
        except OSError:
            continue
        for n in names:
            try:
                rd = lambda f: open(os.path.join(d, n, f)).read().strip()
                out.append(dict(level=int(rd("level")), type=rd("type"), size=parse_size(rd("size")),
                                shared=rd("shared_cpu_list")))
            except (OSError, ValueError):
                continue
    return out


def machine_llc():
    """This machine's last-level cache: {"level", "bytes", "instances", "source"}: sysfs's
    cache directories; else glibc's sysconf (getconf LEVEL3_CACHE_SIZE, then LEVEL2); else
    DEFAULT_LLC, and source says which."""
    llc = llc_from_caches(read_caches())
    if llc and llc[1] > 0:
        return dict(level=llc[0], bytes=llc[1], instances=llc[2], source="sysfs")
    for level in (3, 2):
        try:
            r = subprocess.run(["getconf", f"LEVEL{level}_CACHE_SIZE"], capture_output=True, text=True)
            size = int(r.stdout.strip() or 0)
        except (OSError, ValueError):
            size = 0
        if size > 0:
            return dict(level=level, bytes=size, instances=1, source="getconf")
    return dict(level=None, bytes=DEFAULT_LLC, instances=1, source=f"default ({DEFAULT_LLC // MIB} MiB assumed)")


def parse_meminfo(text):
    """MemAvailable from /proc/meminfo's text, in bytes (None when absent)."""
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def mem_available_bytes():
    try:
        with open("/proc/meminfo") as f:
            return parse_meminfo(f.read())
    except OSError:
        return None


def triad_sizes(llc_bytes, mem_available=None):
    """STREAM's rule for this LLC, capped by free memory. Returns a dict:
      dram_mib   MiB per array of the DRAM triad: max(4 x LLC, 8 MB) rounded up to a MiB,
                 cut to what keeps the three arrays within MEM_FRACTION of mem_available
      capped     True when free memory cut it (the arrays are then < 4 x LLC and the triad
                 may partly run from cache: the output says so)
      cache_mib  MiB per array of the in-cache triad (for information): LLC / 8, >= 1
      rule       one line saying which rule chose dram_mib"""
    want = max(STREAM_LLC_MULTIPLE * llc_bytes, STREAM_MIN_ARRAY)
    dram = -(-want // MIB)
    capped = False
    if mem_available is not None:
        room = int(mem_available * MEM_FRACTION) // (3 * MIB)
        if room < dram:
            dram, capped = max(room, 1), True
    rule = (f"STREAM's rule: each array >= {STREAM_LLC_MULTIPLE} x LLC ({llc_bytes / MIB:g} MiB)"
            if STREAM_LLC_MULTIPLE * llc_bytes >= STREAM_MIN_ARRAY else
            "STREAM's rule: each array >= 1 million 8-byte elements")
    if capped:
        rule += (f"; CAPPED to {dram} MiB by free memory (3 arrays <= {MEM_FRACTION:g} x MemAvailable "
                 f"{mem_available / MIB:.0f} MiB): {dram * MIB / llc_bytes:.1f} x LLC, may include cache")
    return dict(dram_mib=dram, capped=capped, cache_mib=max(llc_bytes // CACHE_FRACTION // MIB, 1), rule=rule)


def decode_step_bytes(cfg, precision, rows, prompt_tokens, new_tokens, kv_bytes=4):
    """Bytes one decoding step of GPT-2 must read, for `rows` sequences decoded together
    (each step emits one token per row), with prompts of prompt_tokens and new_tokens
    generated. cfg: n_embd C, n_layer L, vocab_size V. Returns a dict of the parts and
    their "total":
      weights  the matrices every step streams: L x 12 C^2 (c_attn 3C^2, attn.c_proj C^2,
               c_fc 4C^2, mlp.c_proj 4C^2) + the tied LM head V x C, at 2 bytes (bf16) or
               4 (fp32); plus the fp32 vectors (biases and LayerNorms: 13 C per layer, 2 C
               for ln_f) and each row's wte and wpe rows (2 C, fp32)
      kv       keys and values of every layer over the cached positions, at the mean
               length: the step that emits new token k attends over prompt_tokens + k
               positions, so over k = 1 .. new_tokens - 1 the mean is prompt_tokens +
               new_tokens / 2: rows x L x 2 C x mean x kv_bytes (fdpo's cache is fp32)
      logits   each row's fp32 logits row [V], which the sampler reads
    Activations ([rows, 4C] at most) and the keys/values written are left out (< 0.1 %)."""
    C, L, V = cfg["n_embd"], cfg["n_layer"], cfg["vocab_size"]
    wb = {"bf16": 2, "fp32": 4}[precision]
    weights = (L * 12 * C * C + V * C) * wb + (L * 13 * C + 2 * C) * 4 + rows * 2 * C * 4
    mean_len = prompt_tokens + new_tokens / 2
    kv = rows * L * 2 * C * mean_len * kv_bytes
    logits = rows * V * 4
    return dict(weights=weights, kv=kv, logits=logits, total=weights + kv + logits, mean_len=mean_len)


def decode_pct(tokens_per_sec, rows, step_bytes, triad_gbs):
    """(GB/s the decoder reads at tokens_per_sec, that as a % of triad_gbs): one step emits
    one token per row, so steps/s = tokens_per_sec / rows."""
    gbs = tokens_per_sec / rows * step_bytes * 1e-9
    return gbs, 100 * gbs / triad_gbs


def triad_huge(env=None):
    """The pages the triad's arrays get: the pages fdpo's streamed buffers get. Model
    parameters and the decoder's packed weights and key/value cache come from
    fdpo_alloc_large (src/core/alloc_large.c: 2 MiB aligned; FDPO_HUGEPAGES unset or 1
    advises MADV_HUGEPAGE, =0 MADV_NOHUGEPAGE, =system no advice: the system's THP policy),
    so the limit they are compared with is measured on the same pages: 1, 0 or -1 (system)
    from FDPO_HUGEPAGES in env (default os.environ), as `fdpo-harness triad --huge` takes it."""
    env = os.environ if env is None else env
    v = env.get("FDPO_HUGEPAGES")
    return -1 if v == "system" else 0 if v == "0" else 1


def thp_mode(path="/sys/kernel/mm/transparent_hugepage/enabled"):
    """The system's THP policy ("always", "madvise", "never"; None when unknown): the
    bracketed word of sysfs's enabled file."""
    try:
        text = open(path).read()
    except OSError:
        return None
    i, j = text.find("["), text.find("]")
    return text[i + 1:j] if 0 <= i < j else None


def pages_label(huge, mode=None):
    """How the header names the triad's pages (those fdpo's buffers get too)."""
    if huge == 1:
        return "2 MiB pages (FDPO_HUGEPAGES unset or 1), as fdpo's buffers"
    if huge == 0:
        return "4 KiB pages (FDPO_HUGEPAGES=0), as fdpo's buffers"
    what = {"always": "2 MiB pages", "madvise": "4 KiB pages", "never": "4 KiB pages"}.get(mode, "pages unknown")
    return f"the system's THP policy ({mode or '?'}: {what}), as fdpo's buffers"


def measure_triad(harness, threads, dram_mib=None, repeats=10, cache=True, huge=None):
    """Runs the DRAM triad (STREAM's rule, or dram_mib MiB per array when given: --triad-mib)
    and, with cache=True, the in-cache one on `threads` threads, on huge pages when huge
    is 1 (0: 4 KiB pages, -1: no advice; None: triad_huge(), the pages fdpo's buffers
    get). Returns a dict: triad_gbs
    (DRAM, best of repeats), triad_median_gbs, triad_mib, triad_cache_gbs, triad_cache_mib
    (with cache=True), triad_huge, triad_init_seconds (first touch of the DRAM arrays),
    llc (machine_llc), mem_available, capped, rule."""
    huge = triad_huge() if huge is None else int(huge)
    llc = machine_llc()
    avail = mem_available_bytes()
    sizes = triad_sizes(llc["bytes"], avail)
    rule = sizes["rule"] + (f" (LLC from {llc['source']})" if llc["source"] != "sysfs" else "")
    capped = sizes["capped"]
    if dram_mib:
        rule, capped = f"--triad-mib {dram_mib} (STREAM's rule would take {sizes['dram_mib']} MiB)", False
        if dram_mib * MIB < STREAM_LLC_MULTIPLE * llc["bytes"]:
            rule += f"; {dram_mib * MIB / llc['bytes']:.2f} x LLC, below STREAM's {STREAM_LLC_MULTIPLE} x: may include cache"
        sizes["dram_mib"] = dram_mib
    mibs = f"{sizes['dram_mib']},{sizes['cache_mib']}" if cache else str(sizes["dram_mib"])
    argv = [harness, "triad", "--mib", mibs, "--threads", str(threads), "--repeats", str(repeats), "--huge", str(huge)]
    # not pinned (OMP_PROC_BIND / OMP_PLACES as the caller has them): pinned one thread per
    # core, the median pass read 11-22 % less under load (4 interleaved pairs at load 8; a
    # pinned thread waits for its busy core instead of moving), and on an idle machine the
    # scheduler keeps the two threads apart anyway
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"triad failed: {r.stderr.strip()}")
    lines = [json.loads(l) for l in r.stdout.strip().splitlines()]
    dram = lines[0]
    out = dict(triad_gbs=dram["best_gbs"], triad_median_gbs=dram["median_gbs"], triad_mib=sizes["dram_mib"], llc=llc,
               mem_available=avail, capped=capped, rule=rule, triad_huge=huge, triad_init_seconds=dram["init_seconds"])
    if cache:
        out.update(triad_cache_gbs=lines[1]["best_gbs"], triad_cache_mib=sizes["cache_mib"])
    return out


def triad_line(p):
    """The bench header's bandwidth line: the limit, its array size and the rule."""
    llc = p["llc"]
    where = f"L{llc['level']}" if llc["level"] else "LLC"
    pages = pages_label(p.get("triad_huge"), thp_mode())
    return (f"memory bandwidth limit (DRAM, STREAM triad, {p.get('threads', '?')} threads, best of 10, {pages}): "
            f"{p['triad_gbs']:.2f} GB/s (median {p['triad_median_gbs']:.2f}) over 3 x {p['triad_mib']} MiB; "
            f"last-level cache {where} {llc['bytes'] / MIB:g} MiB x {llc['instances']}; {p['rule']}. "
            f"In-cache triad (3 x {p['triad_cache_mib']} MiB, for information): {p['triad_cache_gbs']:.2f} GB/s")
