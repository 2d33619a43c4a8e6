"""bench/bandwidth.py: STREAM's array-size rule for the memory-bandwidth limit and the bytes
one GPT-2 decoding step reads, against values computed by hand (the arithmetic is in the
comments); the sysfs cache reader on a fake sysfs tree; `fdpo-harness triad`'s output and
its errors; bench_dpo_step.py's step phases (dpo-bench --serve's answers, the phase line's
arithmetic); and the benches' argument checks (an unknown --configs name, a count below 1:
errors before anything is measured). No timing assertions: bandwidth figures are only checked to be ordered and > 0,
phases to partition their step."""
import json
import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "../../bench"))
import bandwidth  # noqa: E402

HARNESS = os.environ.get("FDPO_HARNESS", os.path.join(HERE, "../../build/fdpo-harness"))
MIB = 1 << 20
GPT2_124M = dict(n_embd=768, n_layer=12, vocab_size=50257)


def test_parse_size():
    assert bandwidth.parse_size("48K") == 48 * 1024
    assert bandwidth.parse_size("266240K\n") == 272629760   # this VM's L3: 260 MiB
    assert bandwidth.parse_size("2M") == 2097152
    assert bandwidth.parse_size("4096") == 4096


def cache(level, type_, size, shared):
    return dict(level=level, type=type_, size=size, shared=shared)


def test_llc_one_shared_l3():
    # this VM: per-core L1d 48K, L1i 32K, L2 2M; one 260 MiB L3 shared by CPUs 0-1, listed
    # under both CPUs: it counts once
    caches = []
    for cpu in ("0", "1"):
        caches += [cache(1, "Data", 48 << 10, cpu), cache(1, "Instruction", 32 << 10, cpu),
                   cache(2, "Unified", 2 << 20, cpu), cache(3, "Unified", 260 * MIB, "0-1")]
    assert bandwidth.llc_from_caches(caches) == (3, 260 * MIB, 1)


def test_llc_two_sockets_sum():
    # STREAM sums every last-level cache of the run: two sockets of 32 MiB = 64 MiB
    caches = [cache(3, "Unified", 32 * MIB, "0-1"), cache(3, "Unified", 32 * MIB, "0-1"),
              cache(3, "Unified", 32 * MIB, "2-3"), cache(3, "Unified", 32 * MIB, "2-3"),
              cache(2, "Unified", 1 * MIB, "0")]
    assert bandwidth.llc_from_caches(caches) == (3, 64 * MIB, 2)


def test_llc_without_l3_and_instruction_only():
    # no L3: the private L2s are the last level, one per core: 2 x 2 MiB
    caches = [cache(2, "Unified", 2 * MIB, "0"), cache(2, "Unified", 2 * MIB, "1"),
              cache(1, "Data", 48 << 10, "0")]
    assert bandwidth.llc_from_caches(caches) == (2, 4 * MIB, 2)
    # an instruction cache is never the data's last level, even listed at a higher level
    assert bandwidth.llc_from_caches([cache(1, "Data", 32 << 10, "0"), cache(2, "Instruction", MIB, "0")]) == \
        (1, 32 << 10, 1)
    assert bandwidth.llc_from_caches([cache(1, "Instruction", 32 << 10, "0")]) is None


def test_read_caches_fake_sysfs(tmp_path):
    # the sysfs layout: cpuN/cache/indexK/{level,type,size,shared_cpu_list}
    for cpu in (0, 1):
        for k, (level, type_, size, shared) in enumerate(
                [(1, "Data", "48K", str(cpu)), (1, "Instruction", "32K", str(cpu)),
                 (2, "Unified", "2048K", str(cpu)), (3, "Unified", "266240K", "0-1")]):
            d = tmp_path / f"cpu{cpu}" / "cache" / f"index{k}"
            d.mkdir(parents=True)
            for name, value in (("level", level), ("type", type_), ("size", size), ("shared_cpu_list", shared)):
                (d / name).write_text(f"{value}\n")
    caches = bandwidth.read_caches([0, 1], root=str(tmp_path))
    assert len(caches) == 8
    assert bandwidth.llc_from_caches(caches) == (3, 266240 * 1024, 1)
    assert bandwidth.read_caches([5], root=str(tmp_path)) == []   # a CPU without a cache directory


def test_parse_meminfo():
    text = "MemTotal:       24684084 kB\nMemFree:        14000000 kB\nMemAvailable:   24062996 kB\n"
    assert bandwidth.parse_meminfo(text) == 24062996 * 1024
    assert bandwidth.parse_meminfo("MemTotal: 1 kB\n") is None


def test_triad_sizes_stream_rule():
    # 260 MiB L3, 24 GiB free: each array 4 x 260 = 1040 MiB (three: 3120 MiB, under half of
    # 24 GiB); the in-cache triad's arrays 260 / 8 = 32.5 -> 32 MiB
    s = bandwidth.triad_sizes(260 * MIB, 24 << 30)
    assert (s["dram_mib"], s["capped"], s["cache_mib"]) == (1040, False, 32)
    assert "4 x LLC (260 MiB)" in s["rule"]
    # unknown free memory: never capped
    assert bandwidth.triad_sizes(260 * MIB, None)["dram_mib"] == 1040
    # two 32 MiB sockets: 4 x 64 = 256 MiB
    assert bandwidth.triad_sizes(64 * MIB, 24 << 30)["dram_mib"] == 256
    # an LLC not a whole MiB rounds up: 4 x 1.5 MiB = 6 MiB... below 8 MB, so 1 million
    # 8-byte elements: 8,000,000 bytes = 7.63 MiB -> 8 MiB
    s = bandwidth.triad_sizes(3 * MIB // 2, 24 << 30)
    assert (s["dram_mib"], s["cache_mib"]) == (8, 1)
    assert "1 million" in s["rule"]
    # 4 x 2.5 MiB = 10 MiB exactly; 4 x (2.5 MiB + 1 byte) rounds up to 11
    assert bandwidth.triad_sizes(5 * MIB // 2, None)["dram_mib"] == 10
    assert bandwidth.triad_sizes(5 * MIB // 2 + 1, None)["dram_mib"] == 11


def test_triad_sizes_capped_by_free_memory():
    # 4 GiB free: the three arrays get at most 2 GiB = 2048 MiB -> 682 MiB each (3 x 682 =
    # 2046), below the rule's 1040: capped, and the rule line says so
    s = bandwidth.triad_sizes(260 * MIB, 4 << 30)
    assert (s["dram_mib"], s["capped"]) == (682, True)
    assert "CAPPED" in s["rule"] and "682 MiB" in s["rule"]
    # exactly enough: 3 x 1040 MiB = 3120 MiB = half of 6240 MiB
    assert bandwidth.triad_sizes(260 * MIB, 6240 * MIB)["capped"] is False
    assert bandwidth.triad_sizes(260 * MIB, 6240 * MIB - 1)["capped"] is True


def test_decode_step_bytes_gpt2_124m():
    # 8 rows, prompts of 16 tokens, 128 new tokens (the goal's sampling row)
    # matrices: 12 layers x 12 x 768^2 = 84,934,656, plus the head 50257 x 768 = 38,597,376:
    # 123,532,032 weights. bf16: x 2 = 247,064,064 bytes. fp32 vectors: 12 x 13 x 768 +
    # 2 x 768 = 121,344 floats = 485,376 bytes; wte + wpe rows: 8 x 2 x 768 x 4 = 49,152.
    b = bandwidth.decode_step_bytes(GPT2_124M, "bf16", 8, 16, 128)
    assert b["weights"] == 247064064 + 485376 + 49152
    # mean cached length 16 + 128 / 2 = 80; KV: 8 rows x 12 layers x 2 x 768 x 80 x 4 bytes
    # = 47,185,920
    assert b["mean_len"] == 80
    assert b["kv"] == 47185920
    # logits: 8 x 50257 x 4 = 1,608,224
    assert b["logits"] == 1608224
    assert b["total"] == 247598592 + 47185920 + 1608224
    # fp32: the matrices at 4 bytes: 494,128,128; the rest is the same
    f = bandwidth.decode_step_bytes(GPT2_124M, "fp32", 8, 16, 128)
    assert f["weights"] == 494128128 + 485376 + 49152
    assert f["total"] - f["weights"] == b["total"] - b["weights"]
    # one row, no prompt beyond one token, 2 new tokens: mean length 1 + 1 = 2
    one = bandwidth.decode_step_bytes(dict(n_embd=4, n_layer=1, vocab_size=10), "fp32", 1, 1, 2)
    # matrices 12 x 16 + 40 = 232 floats; vectors 13 x 4 + 8 = 60; rows 2 x 4 = 8 -> 300 x 4
    assert one == dict(weights=1200, kv=1 * 1 * 8 * 2 * 4, logits=40, total=1200 + 64 + 40, mean_len=2)
    with pytest.raises(KeyError):
        bandwidth.decode_step_bytes(GPT2_124M, "fp16", 8, 16, 128)


def test_decode_pct():
    # 367 tok/s over 8 rows = 45.875 steps/s x 296,392,736 bytes = 13.5970 GB/s; of a 25 GB/s
    # triad: 54.39 %
    gbs, pct = bandwidth.decode_pct(367.0, 8, 296392736, 25.0)
    assert gbs == pytest.approx(13.597016764, rel=1e-9)
    assert pct == pytest.approx(54.388067, rel=1e-6)


def run_triad(*args):
    return subprocess.run([HARNESS, "triad", *args], capture_output=True, text=True, timeout=120)


def test_harness_triad_output():
    r = run_triad("--mib", "2,3", "--threads", "1", "--repeats", "3")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(l) for l in r.stdout.splitlines()]
    assert [l["array_mib"] for l in lines] == [2, 3]
    for l in lines:
        assert l["threads"] == 1 and l["repeats"] == 3
        assert l["best_gbs"] >= l["median_gbs"] >= l["worst_gbs"] > 0


@pytest.mark.parametrize("args,msg", [
    (["--mib", "0"], "--mib"),
    (["--mib", "4,x"], "--mib"),
    (["--mib", "4", "--repeats", "0"], "--repeats"),
    (["--mib", "4", "--bogus", "1"], "--bogus"),
    ([], "usage"),
])
def test_harness_triad_errors(args, msg):
    r = run_triad(*args)
    assert r.returncode != 0
    assert msg in r.stderr and r.stdout == ""


def test_measure_triad_override():
    # --triad-mib N replaces the rule's size and the rule line says so; the in-cache triad
    # still runs at LLC / 8
    p = bandwidth.measure_triad(HARNESS, 1, dram_mib=3, repeats=2)
    assert p["triad_mib"] == 3 and p["capped"] is False
    assert p["rule"].startswith("--triad-mib 3 (STREAM's rule would take")
    assert "below STREAM's 4 x: may include cache" in p["rule"]   # 3 MiB < 4 x any LLC assumed here
    assert p["triad_cache_mib"] == bandwidth.triad_sizes(p["llc"]["bytes"])["cache_mib"]
    assert p["triad_gbs"] > 0 and p["triad_cache_gbs"] > 0
    line = bandwidth.triad_line(dict(p, threads=1))
    assert "3 x 3 MiB" in line and "last-level cache" in line


def test_goals_sample_pct():
    # the goal table's sampling row from a bench_sample record: 367 tok/s bf16 at 124M, 8 rows
    # x (16 + 128): 296,392,736 bytes per step (above) -> 54.39 % of a 25 GB/s DRAM triad,
    # 27.19 % of a 50 GB/s in-cache one; fp32 (494,662,656 + 47,185,920 + 1,608,224 =
    # 543,456,800 bytes per step) at 200 tok/s: 25 steps/s x 543,456,800 = 13.5864 GB/s = 54.35 %
    sys.path.insert(0, os.path.join(HERE, "../../bench"))
    import goals
    rec = dict(cfg=GPT2_124M, prompts=8, prompt_tokens=16, new_tokens=128,
               median_tokens_per_sec={"fdpo-bf16": 367.0, "fdpo-fp32": 200.0},
               peaks=dict(triad_gbs=25.0, triad_cache_gbs=50.0))
    assert goals.sample_pct(rec, "fdpo-bf16") == pytest.approx(54.388067, rel=1e-6)
    assert goals.sample_pct(rec, "fdpo-bf16", "triad_cache_gbs") == pytest.approx(27.194034, rel=1e-6)
    assert goals.sample_pct(rec, "fdpo-fp32") == pytest.approx(54.34568, rel=1e-6)
    assert goals.sample_pct(rec, "torch-bf16") is None
    # the goal row takes the decoding steps' rate when the record has it: twice the rate,
    # twice the figure; a side that did not say (a baseline binary: None) and a record from
    # before the split give no figure
    dec = dict(rec, median_decode_tokens_per_sec={"fdpo-bf16": 734.0, "base-bf16": None})
    assert goals.sample_pct(dec, "fdpo-bf16", rate="median_decode_tokens_per_sec") == pytest.approx(108.776134, rel=1e-6)
    assert goals.sample_pct(dec, "base-bf16", rate="median_decode_tokens_per_sec") is None
    assert goals.sample_pct(rec, "fdpo-bf16", rate="median_decode_tokens_per_sec") is None
    old = dict(rec)
    del old["cfg"]   # a record from before the bytes-per-step formula: no figure, not a wrong one
    assert goals.sample_pct(old, "fdpo-bf16") is None


def test_triad_pages_follow_fdpo_buffers():
    # the limit is measured on the pages fdpo's streamed buffers get (fdpo_alloc_large:
    # FDPO_HUGEPAGES unset or 1 MADV_HUGEPAGE, =0 MADV_NOHUGEPAGE, =system no advice), in
    # bandwidth.py and in the harness's default alike
    assert bandwidth.triad_huge({}) == 1
    assert bandwidth.triad_huge({"FDPO_HUGEPAGES": ""}) == 1
    assert bandwidth.triad_huge({"FDPO_HUGEPAGES": "1"}) == 1
    assert bandwidth.triad_huge({"FDPO_HUGEPAGES": "0"}) == 0
    assert bandwidth.triad_huge({"FDPO_HUGEPAGES": "system"}) == -1
    for env_value, want in [(None, 1), ("0", 0), ("1", 1), ("system", -1)]:
        env = {k: v for k, v in os.environ.items() if k != "FDPO_HUGEPAGES"}
        if env_value is not None:
            env["FDPO_HUGEPAGES"] = env_value
        r = subprocess.run([HARNESS, "triad", "--mib", "2", "--threads", "1", "--repeats", "1"],
                           capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["huge"] == want
    r = run_triad("--mib", "2", "--huge", "2")
    assert r.returncode != 0 and "--huge" in r.stderr
    for huge in (-1, 0, 1):
        p = bandwidth.measure_triad(HARNESS, 1, dram_mib=2, repeats=1, cache=False, huge=huge)
        assert p["triad_huge"] == huge and p["triad_init_seconds"] >= 0
    assert bandwidth.pages_label(1) == "2 MiB pages (FDPO_HUGEPAGES unset or 1), as fdpo's buffers"
    assert bandwidth.pages_label(0) == "4 KiB pages (FDPO_HUGEPAGES=0), as fdpo's buffers"
    assert bandwidth.pages_label(-1, "madvise") == "the system's THP policy (madvise: 4 KiB pages), as fdpo's buffers"
    assert bandwidth.pages_label(-1, "always") == "the system's THP policy (always: 2 MiB pages), as fdpo's buffers"


def test_thp_mode(tmp_path):
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert bandwidth.thp_mode(str(f)) == "madvise"
    f.write_text("[always] madvise never\n")
    assert bandwidth.thp_mode(str(f)) == "always"
    assert bandwidth.thp_mode(str(tmp_path / "missing")) is None


def test_dpo_bench_serve_reports_its_phases(tmp_path):
    """dpo-bench --serve answers each step with its four phases, which partition the step's
    wall time (each one is the interval between two clock reads of that step)"""
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(dict(model_type="gpt2", vocab_size=64, n_positions=64, n_embd=32, n_layer=2, n_head=2)))
    p = subprocess.run([HARNESS, "dpo-bench", "--config", str(cfg), "--pairs", "2", "--prompt", "8", "--chosen", "4",
                        "--rejected", "5", "--threads", "1", "--serve"], input="step\nstep\nquit\n",
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    lines = [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]
    assert lines[0]["ready"] == 1 and lines[0]["n_params"] > 0
    for step in lines[1:3]:
        ph = step["phases"]
        assert sorted(ph) == ["adamw", "forward_backward", "grad_norm", "zero_grad"]
        assert all(v >= 0 for v in ph.values())
        assert abs(sum(ph.values()) - step["seconds"]) < 1e-5   # printed to 1e-6 each


def test_dpo_phases_line_arithmetic():
    """bench_dpo_step's phase line, against figures worked by hand: 2e11 FLOPs in 0.8 s =
    250 GFLOP/s = 50 % of a 500 bf16 peak; AdamW on 1e8 params in bf16 moves 30 B each
    (28 + the bf16 copy): 3e9 B / 0.06 s = 50 GB/s = 100 % of a 50 GB/s triad; the norm 4 B
    each: 4e8 / 0.01 = 40 GB/s = 80 %; zeroing 4e8 / 0.02 = 20 GB/s = 40 %; the median step
    1.0 s less the phases' 0.89 s = +110 ms"""
    import bench_dpo_step

    class Side:
        name = "fdpo-shared-cached-bf16"
        ready = {"n_params": 100_000_000}
        times = [1.0]
        phases = [{"zero_grad": 0.02, "forward_backward": 0.8, "grad_norm": 0.01, "adamw": 0.06}]

    line = bench_dpo_step.phases_line(Side(), 2e11, {"bf16_gflops": 500.0, "sgemm_gflops": 250.0, "triad_gbs": 50.0})
    assert "forward+backward 0.800s (250 GFLOP/s = 50% of the bf16 peak)" in line
    assert "adamw 60.0 ms (50 GB/s = 100% of the triad)" in line
    assert "grad_norm 10.0 ms (40 GB/s = 80% of the triad)" in line
    assert "zero_grad 20.0 ms (20 GB/s = 40% of the triad)" in line
    assert line.endswith("median step less these +110.0 ms")
    # the plain-live side (TRL's layout and a live reference: about twice the shared-cached
    # work) used to be given the shared-cached FLOPs, a rate about half the truth: now its
    # forward+backward time alone, its optimizer passes as before
    Side.name = "fdpo-plain-live-fp32"
    line = bench_dpo_step.phases_line(Side(), 2e11, {"bf16_gflops": 500.0, "sgemm_gflops": 250.0, "triad_gbs": 50.0})
    # fp32: 28 B each, 2.8e9 B / 0.06 s = 46.7 GB/s = 93 % of 50
    assert "forward+backward 0.800s, adamw 60.0 ms (47 GB/s = 93% of the triad)" in line
    assert "GFLOP/s" not in line


class FakeServer:
    """A step server that answers the given step times in order (interleave()'s protocol)."""

    def __init__(self, name, seconds):
        self.name, self.seconds = name, list(seconds)
        self.times, self.cpu_times, self.phases = [], [], []

    def step(self):
        return {"seconds": self.seconds.pop(0)}


def test_interleave_times_only_steps_after_two_warmup_steps():
    """A training loop's first two steps are warm-up (the optimizer's state first lives beside
    the gradients in step 2: PyTorch's allocator grows there), so with the default warm-up
    neither lands in the timed steps: sides whose steps 1 and 2 take 11 s and 8 s and then
    5 s each must come out with five 5 s steps and a 5 s median."""
    import interleave
    slow_start = [FakeServer(n, [11.0, 8.0] + [5.0] * 5) for n in ("torch", "fdpo")]
    interleave.interleave(slow_start, 5)
    for s in slow_start:
        assert s.times == [5.0] * 5
        assert interleave.stats(s.times)["median"] == 5.0


def test_torch_cmd_keeps_tcmalloc_pages(monkeypatch):
    """The PyTorch sides run on tcmalloc with TCMALLOC_RELEASE_RATE=0 (freed pages stay
    mapped, as fdpo's buffers do) unless the environment sets a rate; no preload, no env."""
    import interleave
    monkeypatch.setattr(interleave, "TORCH_PRELOAD", "/lib/libtcmalloc_minimal.so.4")
    monkeypatch.delenv("TCMALLOC_RELEASE_RATE", raising=False)
    assert interleave.torch_cmd(["py", "w"]) == ["env", "LD_PRELOAD=/lib/libtcmalloc_minimal.so.4",
                                                 "TCMALLOC_RELEASE_RATE=0", "py", "w"]
    monkeypatch.setenv("TCMALLOC_RELEASE_RATE", "4")
    assert interleave.torch_cmd(["py", "w"]) == ["env", "LD_PRELOAD=/lib/libtcmalloc_minimal.so.4", "py", "w"]
    monkeypatch.setattr(interleave, "TORCH_PRELOAD", None)
    assert interleave.torch_cmd(["py", "w"]) == ["py", "w"]


def test_gpt2_train_flops_causal_pairs():
    """Worked by hand for C 4, L 2, V 10 and sequences of 3 and 2 tokens (N = 5): linear and
    head 2 N (L 12 C^2 + C V) = 10 (384 + 40) = 4240 per forward; full tiles 4 C L (9 + 4) =
    32 x 13 = 416, causal pairs 32 x (6 + 3) = 288; forward + backward 3x: 13968 and 13584"""
    import interleave
    cfg = dict(n_embd=4, n_layer=2, vocab_size=10)
    assert interleave.gpt2_train_flops(cfg, [3, 2]) == 3 * (4240 + 416) == 13968
    assert interleave.gpt2_train_flops(cfg, [3, 2], causal=True) == 3 * (4240 + 288) == 13584


def test_step_floor_and_its_line():
    """The floor, worked by hand: 8e11 FLOPs at an 800 GFLOP/s bf16 peak = 1.0 s; an fp32 side
    runs against the 400 sgemm peak: 2.0 s. Against torch medians of 3.0 s (fp32) and 2.1 s
    (bf16) the bf16 floor gives 3.00x and 2.10x; a 1.25 s median runs at 80 % of the floor's
    speed. The triad plays no part (AdamW beats it: step_floor's docstring)."""
    import interleave
    peaks = {"bf16_gflops": 800.0, "sgemm_gflops": 400.0, "triad_gbs": 1.0}
    assert interleave.step_floor(8e11, 800.0) == pytest.approx(1.0, rel=1e-12)

    class Side:
        def __init__(self, name, t):
            self.name, self.times = name, [t]

    sides = [Side("fdpo-bf16", 1.25), Side("fdpo-fp32", 4.1), Side("torch-fp32", 3.0), Side("torch-bf16", 2.1)]
    f = interleave.floors(sides, 8e11, peaks)
    assert sorted(f) == ["fdpo-bf16", "fdpo-fp32"]          # torch sides get no floor
    assert f["fdpo-bf16"] == pytest.approx(1.0) and f["fdpo-fp32"] == pytest.approx(2.0)
    line = interleave.floor_line({"fdpo-bf16": f["fdpo-bf16"]}, sides)
    assert "fdpo-bf16 1.0000s (its median runs at 80% of that speed): 3.00x torch-fp32, 2.10x torch-bf16" in line


def test_goals_table_floor_column():
    """goals.table: the DPO row against torch bf16 from three runs' records. Ratios 3.4, 3.5,
    3.3 (torch 3.4 / 3.5 / 3.3 s over fdpo's 1.0 s): median 3.40x, spread 0.2 / 3.4 = 6 %, not
    met; at the floors (0.85, 1.0, 0.825 s) torch / floor = 4.0, 3.5, 4.0: median 4.00x, the
    goal (3.5x) reachable. A record without floor_seconds (a bench from before) gives none,
    and a row whose every record lacks them shows '-'."""
    sys.path.insert(0, os.path.join(HERE, "../../bench"))
    import goals
    recs = [{"median_seconds": {"fdpo-shared-cached-bf16": 1.0, "torch-bf16": t, "torch-fp32": 5.0},
             "floor_seconds": {"fdpo-shared-cached-bf16": f}} for t, f in ((3.4, 0.85), (3.5, 1.0), (3.3, 0.825))]
    rows = {l.split(" | ")[0][2:]: l for l in goals.table({"dpo": recs}, 3)[2:]}
    assert rows["DPO 124M bf16 vs torch bf16"] == ("| DPO 124M bf16 vs torch bf16 | >= 3.5x | 3.40x | 3.50x | 3.30x | "
                                                   "6% ok | no | 4.00x (goal reachable) |")
    # torch fp32 5.0 s over floors 0.85 / 1.0 / 0.825: 5.88, 5.0, 6.06 -> median 5.88x
    assert rows["DPO 124M bf16 vs torch fp32"].endswith("| yes | 5.88x (goal reachable) |")
    old = [{k: v for k, v in r.items() if k != "floor_seconds"} for r in recs]
    assert goals.table({"dpo": old}, 3)[3].endswith("| no | - |")
    beyond = [dict(r, floor_seconds={"fdpo-shared-cached-bf16": 1.2}) for r in recs]   # 3.3 / 1.2 = 2.75 ...
    assert goals.table({"dpo": beyond}, 3)[3].endswith("| 2.83x (goal beyond it) |")   # median 3.4 / 1.2


def test_names_in():
    """--configs of the GPT-2 benches: a comma list of known names, kept in order; anything
    else exits naming the flag, the bad name and the known ones"""
    import interleave
    known = {"124M": 1, "small": 2}
    assert interleave.names_in("small", known, "--configs", "config") == ["small"]
    assert interleave.names_in("124M,small", known, "--configs", "config") == ["124M", "small"]
    for bad, name in (("bogus", "bogus"), ("small,,124M", ""), ("124m", "124m")):
        with pytest.raises(SystemExit) as e:
            interleave.names_in(bad, known, "--configs", "config")
        assert str(e.value) == f"--configs: unknown config '{name}' (known: 124M, small)"


@pytest.mark.parametrize("script", ["bench_train_step.py", "bench_sample.py"])
def test_bench_unknown_config_is_an_error_before_any_measurement(script):
    """an unknown --configs name used to end in a KeyError traceback after the peaks had been
    measured; now it exits 1 at once with the message and nothing measured"""
    r = subprocess.run([sys.executable, os.path.join(HERE, "../../bench", script), "--configs", "small,bogus"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "--configs: unknown config 'bogus' (known: 124M, small)" in r.stderr
    assert "Traceback" not in r.stderr and "machine peaks" not in r.stdout


@pytest.mark.parametrize("argv,message", [
    (["ab_binaries.py", "--baseline-dir", "BUILD", "--what", "dpo,bogus"],
     "--what: unknown run 'bogus' (known: dpo, online, rl)"),
    (["bench_tokenizer.py", "--modes", "file"], "--modes: unknown mode 'file' (known: files, lines)"),
])
def test_bench_unknown_run_or_mode_is_an_error_before_any_work(argv, message):
    """ab_binaries used to run the DPO A/B (minutes) before it reached an unknown --what, and
    bench_tokenizer ran an unknown --modes name as 'files'; both now exit 1 at once"""
    build = os.path.join(HERE, "../../build")
    argv = [a.replace("BUILD", build) for a in argv]
    r = subprocess.run([sys.executable, os.path.join(HERE, "../../bench", argv[0]), *argv[1:]],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert message in r.stderr
    assert "Traceback" not in r.stderr and "fdpo new" not in r.stdout and "Brown corpus" not in r.stdout

def test_count():
    """the benches' counts: integers >= 1; anything else is argparse's error"""
    import argparse
    import interleave
    assert interleave.count("1") == 1 and interleave.count("12") == 12 and interleave.count(" 5") == 5
    for bad in ("0", "-3", "1.5", "x", ""):
        with pytest.raises(argparse.ArgumentTypeError) as e:
            interleave.count(bad)
        assert str(e.value) == f"must be an integer >= 1 (got {bad!r})"


@pytest.mark.parametrize("script,flag", [("goals.py", "--repeats"), ("bench_train_step.py", "--threads"),
                                         ("bench_dpo_step.py", "--pairs"), ("bench_sample.py", "--new-tokens"),
                                         ("bench_llama.py", "--steps"), ("bench_online.py", "--n"),
                                         ("bench_mpi.py", "--steps-per-run"), ("bench_tokenizer.py", "--reps")])
def test_bench_zero_count_is_an_error_before_any_measurement(script, flag):
    """0 of a count used to end in a traceback after the peaks (--threads 0: torch's
    set_num_threads), in the harness's error a minute in (--pairs 0), or in an empty goal
    table with exit status 0 (goals.py --repeats 0); now argparse's error at once"""
    r = subprocess.run([sys.executable, os.path.join(HERE, "../../bench", script), flag, "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert f"error: argument {flag}: must be an integer >= 1 (got '0')" in r.stderr
    assert "Traceback" not in r.stderr and "machine peaks" not in r.stdout


def test_ab_decode_matmul_names_a_missing_binary(tmp_path):
    """--old / --new that is not an executable: a one-line error naming the flag (it used to
    be a FileNotFoundError traceback from the first run)"""
    script = os.path.join(HERE, "../../bench/ab_decode_matmul.py")
    for old, new, flag in ((HARNESS, str(tmp_path / "none"), "--new"), (str(tmp_path), HARNESS, "--old")):
        r = subprocess.run([sys.executable, script, "--old", old, "--new", new], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().startswith(f"{flag}: ") and "is not an executable fdpo-harness" in r.stderr


# bench_online / bench_rl at their smallest: where a check is missing, what runs stays tiny
TINY_RUN = ["--threads", "1", "--triad-mib", "8", "--runs", "1", "--prompts", "1", "--n", "2", "--new-tokens", "2",
            "--prompt-tokens", "2", "--torch", "fp32"]


@pytest.mark.parametrize("script,flag", [("bench_train_step.py", "--baseline"), ("bench_sample.py", "--baseline"),
                                         ("bench_online.py", "--baseline"), ("bench_rl.py", "--baseline")])
def test_bench_baseline_must_be_an_executable_file(tmp_path, script, flag):
    """--baseline naming a directory (executable as a path, not runnable) or a missing file:
    the one-line error before anything is measured (bench_online / bench_rl used to measure
    the peaks and run a side first, then die in a FileNotFoundError traceback)"""
    # (tiny sizes: where the check is missing the bench must not measure at full size)
    tiny = TINY_RUN if script in ("bench_online.py", "bench_rl.py") else []
    for bad in (str(tmp_path), str(tmp_path / "none")):
        r = subprocess.run([sys.executable, os.path.join(HERE, "../../bench", script), *tiny, flag, bad],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and "Traceback" not in r.stderr and "machine peaks" not in r.stdout, r.stderr
        assert f"{flag}: {bad} is not an executable file" in r.stderr


@pytest.mark.parametrize("argv,message", [
    (["--ranks", "0"], "argument --ranks: must be an integer >= 1 (got '0')"),
    (["--ranks", "-3"], "argument --ranks: must be an integer >= 1 (got '-3')"),
    (["--ranks", "x"], "argument --ranks: must be an integer >= 1 (got 'x')"),
    (["--ranks"], "argument --ranks: expected one argument"),
    (["--ranks", "3", "--threads", "2"], "--ranks: 3 ranks do not divide --threads 2"),
    (["--n", "1"], "--n: RLOO needs at least 2 samples per prompt (got 1)"),
])
def test_bench_rl_ranks_and_n_are_checked_before_any_measurement(argv, message):
    """bench_rl's --ranks used to be read by a bare int() at import: 0 / -3 ran fdpo as one
    process without a word, 'x' or a missing value was a traceback, and 3 ranks on 2 threads
    ran 3 threads against PyTorch's 2; --n 1 (RLOO divides by k - 1) failed in fdpo rl after
    the peaks. Now each is argparse's one-line error, exit 2, nothing measured."""
    r = subprocess.run([sys.executable, os.path.join(HERE, "../../bench/bench_rl.py"), *TINY_RUN, *argv],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr and "machine peaks" not in r.stdout


@pytest.mark.parametrize("what", ["online", "rl"])
def test_ab_binaries_phases_run_each_build(tmp_path, what):
    """ab_binaries --what online / rl: each build's own fdpo runs (wrappers that log their
    name, then run the real binary). It used to set the module's FDPO, which the already-bound
    default `binary=FDPO` of fdpo_online / fdpo_rl ignored: the old build never ran and the
    old/new ratios compared the new binary with itself. A tiny round: 2 prompts x 2 samples
    x 4 tokens, one run per build."""
    import argparse
    import ab_binaries
    fdpo = os.environ.get("FDPO_BIN", os.path.join(HERE, "../../build/fdpo"))
    log = tmp_path / "calls.log"
    builds = {}
    for name in ("new", "old"):
        (tmp_path / name).mkdir()
        w = tmp_path / name / "fdpo"
        w.write_text(f'#!/bin/sh\necho {name} >> "{log}"\nexec "{os.path.abspath(fdpo)}" "$@"\n')
        w.chmod(0o755)
        builds[name] = {"fdpo": str(w), "harness": HARNESS}
    a = argparse.Namespace(config="small", precision="fp32", threads=1, runs=1, prompts=2, n=2, new_tokens=4,
                           prompt_tokens=4)
    ab_binaries.ab_phases(a, builds, what)
    assert sorted(log.read_text().split()) == ["new", "old"]


def test_bench_summary_without_a_timed_step_is_json(tmp_path):
    """model-bench --steps 0 and a model-bench / dpo-bench server closed before its first step
    printed "inf" and the 1e30 sentinel (not JSON: Python's json, as StepServer.close reads
    the summary, refused it); now their rates are null, and a server with one step gives
    numbers"""
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(dict(model_type="gpt2", vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2)))
    dpo = [HARNESS, "dpo-bench", "--config", str(cfg), "--pairs", "1", "--prompt", "4", "--chosen", "2",
           "--rejected", "2", "--threads", "1", "--serve"]
    model = [HARNESS, "model-bench", "--config", str(cfg), "--batch", "1", "--seq", "8", "--threads", "1"]
    for argv, stdin, rates in ((model + ["--steps", "0"], "", "tokens_per_sec"),
                               (model + ["--serve"], "quit\n", "tokens_per_sec"),
                               (dpo, "quit\n", "pairs_per_sec")):
        p = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        summary = json.loads(p.stdout.splitlines()[-1])
        assert summary[rates] is None and summary["step_seconds"] is None and summary["best_step_seconds"] is None
        assert summary["n_params"] > 0
    p = subprocess.run(dpo, input="step\nquit\n", capture_output=True, text=True, timeout=60)
    summary = json.loads(p.stdout.splitlines()[-1])
    assert summary["pairs_per_sec"] > 0 and summary["best_step_seconds"] < 1e3


@pytest.mark.parametrize("flag,value,message", [
    ("--threads", "0", "'0' is not an integer >= 1 (in '0')"),
    ("--threads", "1,x", "'x' is not an integer >= 1 (in '1,x')"),
    ("--precision", "fp16", "'fp16' is neither fp32 nor bf16 (in 'fp16')"),
    ("--rows", "1,,2", "'' is not an integer >= 1 (in '1,,2')"),
    ("--shapes", "768x", "'768x' is not KxN (two integers >= 1) (in '768x')"),
    ("--min-seconds", "0", "must be a number of seconds > 0 (got '0')"),
])
def test_ab_decode_matmul_checks_its_lists_before_any_run(tmp_path, flag, value, message):
    """The list flags were passed to the harness unchecked: a bad one ended in a
    CalledProcessError traceback that hid the harness's message (--precision fp16 only after
    the peaks' full-size triad). Now argparse's one-line error, exit 2, before the --old check
    (--old names a missing file here, so the old script stopped at once too)."""
    r = subprocess.run([sys.executable, os.path.join(HERE, "../../bench/ab_decode_matmul.py"), "--old",
                        str(tmp_path / "none"), "--new", HARNESS, flag, value], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2, r.stderr
    assert f"error: argument {flag}: {message}" in r.stderr


def test_ab_decode_matmul_shows_the_harness_message(tmp_path):
    """a harness run that fails: its own message in a one-line exit, not a traceback"""
    import ab_decode_matmul
    fake = tmp_path / "harness"
    fake.write_text("#!/bin/sh\necho 'decode-matmul: --rows: too many' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(SystemExit) as e:
        ab_decode_matmul.run(str(fake), ["--rows", "99999"])
    assert str(e.value) == f"{fake} decode-matmul failed (exit 1): decode-matmul: --rows: too many"


def test_goals_table_keeps_a_failed_run_in_its_column():
    """A failed run used to be dropped: the later runs' figures moved left under the wrong
    "run N", the spread was declared "ok" from fewer runs than asked, and a row without any
    run read "(one run)". Now a failed run (None) shows "failed" in its own column and the
    spread is judged only over every run; the rss row (measured once) stays "(one run)"."""
    import goals
    r = {"median_seconds": {"fdpo-shared-cached-bf16": 1.0, "torch-bf16": 3.5, "torch-fp32": 5.0}}
    rows = goals.table({"dpo": [None, r, r]}, 3)
    assert rows[2] == "| DPO 124M bf16 vs torch fp32 | >= 5x | failed | 5.00x | 5.00x | 0% over 2 of 3 runs: not judged | yes | - |"
    assert goals.table({"dpo": [None] * 3}, 3)[2] == \
        "| DPO 124M bf16 vs torch fp32 | >= 5x | failed | failed | failed | (no run) | - | - |"
    assert goals.table({"dpo": [r, None, None]}, 3)[2].endswith("| 5.00x | failed | failed | (one run of 3) | yes | - |")
    assert goals.table({"dpo": [r] * 3}, 3)[2].endswith("| 5.00x | 5.00x | 5.00x | 0% ok | yes | - |")
    # a row that successful runs give no figure for (the other page size's triad, never asked
    # for by goals.py) is "(no figure)", not "(no run)" as if they had failed (a review's find)
    other = [line for line in goals.table({"sample": [{"median_tokens_per_sec": {}, "peaks": {"triad_gbs": 60.0}}]}, 1) if "other page size" in line]
    assert other and other[0].split(" | ")[-3] == "(no figure)", other
    rss = {"rss_mib": {"fdpo-shared-cached-bf16": 500.0, "fdpo-shared-cached-fp32": 700.0, "torch-fp32": 1000.0}}
    assert goals.table({"rss": [rss]}, 3)[2].endswith("| 50% | - | - | (one run) | yes | - |")


def test_names_in_refuses_a_name_given_twice():
    """--only dpo,dpo ran the DPO bench twice per repeat into one row: 6 cells under a
    3-run header and a spread mixing runs; a name given twice is now refused"""
    import interleave
    with pytest.raises(SystemExit) as e:
        interleave.names_in("dpo,sample,dpo", {"dpo": 1, "sample": 2}, "--only", "row key")
    assert str(e.value) == "--only: row key 'dpo' named twice"


def test_goals_exits_non_zero_when_a_bench_fails():
    """Every bench failing at once (the binaries are /bin/false: nothing is measured) used to
    print a table of "-" and exit 0; now the failed runs show, and the exit status is 1"""
    env = dict(os.environ, FDPO_BIN="/bin/false", FDPO_HARNESS="/bin/false")
    r = subprocess.run([sys.executable, os.path.join(HERE, "../../bench/goals.py"), "--repeats", "2", "--threads", "1",
                        "--quick", "--only", "dpo,sample"], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 1, r.stdout
    assert "goals: 4 of 4 bench runs failed" in r.stderr
    assert "| DPO 124M bf16 vs torch fp32 | >= 5x | failed | failed | (no run) | - | - |" in r.stdout


def run_bench_stub_tree(tmp_path, failing="bench_dpo_step"):
    """scripts/run-bench.sh copied into a tree whose bench/*.py are stubs printing their argv
    and FDPO_BIN (the `failing` one exits 1): nothing is measured"""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "bench").mkdir()
    src = open(os.path.join(HERE, "../../scripts/run-bench.sh")).read()
    (tmp_path / "scripts" / "run-bench.sh").write_text(src)
    for b in ("bench_train_step", "bench_dpo_step", "bench_sample", "bench_online", "bench_rl", "bench_tokenizer",
              "bench_mpi", "goals"):
        (tmp_path / "bench" / f"{b}.py").write_text(
            f"import os, sys\nprint('ran {b}', sys.argv[1:], os.environ['FDPO_BIN'])\n"
            + ("sys.exit(1)\n" if b == failing else ""))
    (tmp_path / "bench" / "bench_lab.sh").write_text("echo ran bench_lab.sh\n")
    return str(tmp_path / "scripts" / "run-bench.sh")


def test_run_bench_refuses_arguments_without_goals_and_reports_a_failed_bench(tmp_path):
    """run-bench.sh used to drop every argument unless the first was --goals (running the
    whole default suite instead), to exit 0 when a bench failed, and to override FDPO_BIN"""
    script = run_bench_stub_tree(tmp_path)
    r = subprocess.run(["bash", script, "--quick", "--only", "dpo"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "ran " not in r.stdout
    assert r.stderr.startswith("run-bench.sh: --quick: unknown without --goals")
    # --goals anywhere: goals.py gets the rest
    r = subprocess.run(["bash", script, "--only", "dpo", "--goals"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith("ran goals ['--threads', '2', '--only', 'dpo']")
    assert len(r.stdout.splitlines()) == 1
    # the default suite: every bench runs, the failed one is named, the exit status is 1;
    # FDPO_BIN from the environment is the binary measured
    env = dict(os.environ, FDPO_BIN="/elsewhere/fdpo")
    r = subprocess.run(["bash", script], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 1
    ran = [l.split()[1] for l in r.stdout.splitlines()]
    assert ran == ["bench_train_step", "bench_dpo_step", "bench_sample", "bench_online", "bench_rl",
                   "bench_tokenizer", "bench_lab.sh"] + (["bench_mpi"] if shutil.which("mpirun") else [])
    assert all(l.endswith("/elsewhere/fdpo") for l in r.stdout.splitlines() if "bench_lab" not in l)
    assert "run-bench.sh: failed: /usr/bin/python3 bench/bench_dpo_step.py --threads 2 (exit 1)" in r.stderr


def test_bench_flags_are_as_docs_model_md_says():
    """docs/model.md#benchmarks said every bench takes --quick and --json; bench_online /
    bench_rl have no --quick and bench_llama neither (and its --steps help said one warm-up
    where its servers take interleave.WARMUP_STEPS = 2). The docs now name who takes what:
    --triad-mib every bench, --json all but bench_llama, --quick the goal benches."""
    import re
    doc = open(os.path.join(HERE, "../../docs/model.md")).read()
    assert "all but `bench_llama.py` take `--json FILE`" in doc and "the goal benches (`bench_train_step.py`," in doc
    for script, quick, json_flag in (("bench_train_step.py", 1, 1), ("bench_dpo_step.py", 1, 1),
                                     ("bench_sample.py", 1, 1), ("bench_online.py", 0, 1), ("bench_rl.py", 0, 1),
                                     ("bench_llama.py", 0, 0)):
        r = subprocess.run([sys.executable, os.path.join(HERE, "../../bench", script), "--help"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        flags = set(re.findall(r"^\s+(--[a-z-]+)", r.stdout, re.M))
        assert "--triad-mib" in flags, script
        assert ("--quick" in flags) == bool(quick) and ("--json" in flags) == bool(json_flag), script
        if script == "bench_llama.py":
            assert "warm-up is interleave.WARMUP_STEPS = 2" in " ".join(r.stdout.split())


def test_bench_checkpoint_never_samples_eos(tmp_path):
    """bench_sample's checkpoint (also bench_online's and bench_rl's): the byte tokenizer's
    EOS (256) could be drawn by the random model (p ~ 1/512 per draw), so 3 of the default 8
    rows of 128 stopped early on fdpo's side only (863 of 1024 tokens, 6.7 rows per decoding
    step where the bandwidth figure assumed 8) while PyTorch's loop always draws 128. Now
    EOS's logit is -1024 at every position: checked with the PyTorch float64 reference on
    the patched weights (its float32 softmax probability is exactly 0), and fdpo generate,
    run as bench_sample.run_side runs it, draws all 8 x 128 tokens."""
    import torch
    import bench_sample
    from fdpo_ref import safetensors as st
    from fdpo_ref.gpt2 import GPT2
    cfg = bench_sample.CONFIGS["small"]
    d = str(tmp_path / "model")
    bench_sample.make_checkpoint(cfg, d)
    weights, _ = st.load(os.path.join(d, "model.safetensors"))
    ref = GPT2(cfg["vocab_size"], cfg["n_positions"], cfg["n_embd"], cfg["n_layer"], cfg["n_head"]).double()
    with torch.no_grad():
        for name, p in ref.named().items():
            p.copy_(torch.from_numpy(weights[name]).double())
        prompt = torch.tensor(list(b"Prompt 00: once upon a time"[:16]) + [7, 300, 511, 12, 99])
        logits = ref(prompt)
    assert logits[:, 256].max().item() < -1000
    assert torch.softmax(logits.float(), dim=-1)[:, 256].max().item() == 0.0
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"Prompt {i:02d}: once upon a time"[:16].ljust(16, ".") for i in range(8)) + "\n")
    fdpo = os.environ.get("FDPO_BIN", os.path.join(HERE, "../../build/fdpo"))
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"o-{precision}.jsonl"
        r = subprocess.run([fdpo, "generate", "--model", d, "--data", str(prompts), "--out", str(out),
                            "--max-new-tokens", "128", "--batch-size", "8", "--threads", "1", "--seed", "1",
                            "--precision", precision], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        rows = [json.loads(l) for l in out.read_text().splitlines()]
        assert [x["n_tokens"] for x in rows] == [128] * 8 and {x["finish"] for x in rows} == {"length"}
        assert "127 decoding steps of 1016 tokens" in r.stderr


def test_bench_sample_refuses_a_run_whose_rows_stopped_early(tmp_path):
    """run_side counts the tokens fdpo says it drew: fewer than prompts x new tokens (a row
    stopped) is an error naming the side, not a rate and a % of bandwidth over rows that
    were no longer decoding"""
    import argparse
    import bench_sample
    fake = tmp_path / "fdpo"
    fake.write_text("#!/bin/sh\necho 'fdpo generate: generated 8 samples, 863 new tokens in 0.50s (1726.0 tokens/s): "
                    "decoder set-up 0.00s, prefill 0.01s, 127 decoding steps of 855 tokens in 0.45s (1900.0 tokens/s)' >&2\n")
    fake.chmod(0o755)
    a = argparse.Namespace(baseline=str(fake), new_tokens=128, prompts=8, threads=1)
    with pytest.raises(SystemExit) as e:
        bench_sample.run_side("base-fp32", str(tmp_path), str(tmp_path), a)
    assert str(e.value) == ("base-fp32: fdpo generate drew 863 new tokens, not 8 x 128: a row stopped early, so it did "
                            "not do PyTorch's work")


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="Open MPI is not installed (scripts/deps.sh installs it)")
@pytest.mark.skipif(os.environ.get("FDPO_SANITIZED") == "1",   # as test_mpi.py's
                    reason="Open MPI's own allocations are reported by LeakSanitizer; the MPI path runs in the plain build")
def test_bench_mpi_dpo_counts_a_steps_tokens_from_the_pairs(tmp_path):
    """bench_mpi.py --dpo divides a step's tokens by each side's tokens_per_sec. It took the
    count from a 2-rank row, where fdpo counted the tokens once per rank (twice the step's),
    so every 1-rank step came out at twice its time (docs/scaling.md's "1.63x faster with 2
    ranks"). The count now comes from the pairs: at the small shapes 2 x 4 pairs of
    (24 - 1) + (40 + 1) + (40 + 1) tokens (docs/dpo.md's shared layout, byte tokens, each
    completion with <|endoftext|>) = 840, and a 2-rank step's own count must agree."""
    import bench_mpi   # its fdpo: FDPO_BIN, else build/fdpo, as the tests'
    cfg, text, _ = bench_mpi.write_inputs(str(tmp_path), "small")
    dpo = bench_mpi.write_dpo_inputs(str(tmp_path), cfg, text)
    assert dpo[3] == 2 * 4 * ((24 - 1) + (40 + 1) + (40 + 1)) == 840
    rows = bench_mpi.run(2, 1, cfg, text, 2, str(tmp_path / "out"), False, dpo)
    assert len(rows) == 2
    bench_mpi.check_dpo_tokens(rows, dpo[3])   # sys.exit (a test failure) when they differ
