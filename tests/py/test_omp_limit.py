"""Results under an OpenMP team smaller than --threads.

oneDNN's GEMMs (and OpenBLAS's OpenMP build) split a product into omp_get_max_threads()
parts and open one region for them; when OpenMP gives a smaller team (OMP_THREAD_LIMIT below
--threads, or OMP_DYNAMIC shrinking teams on a loaded machine) the parts of the missing
threads were never computed: with OMP_THREAD_LIMIT=1 --threads 2, token log-probs were off
by 3e-2..7e-2 and gradients by up to 7e2 (relative to max|ref|), and FDPO_SGEMM=openblas hung.
fdpo_set_threads (src/core/runtime.c) now caps the count at the thread limit and turns
dynamic teams off. Checked against float64 PyTorch at the parity tolerances (1e-5 log-probs,
1e-4 gradients) and bit for bit against the run with the thread count really used."""
import json
import os
import subprocess

import numpy as np
import pytest
import torch

import test_llama as llama
import test_model_parity as parity
from test_generate import completion_logp
from fdpo_ref import safetensors as st
from fdpo_ref.llama import Llama

HERE = os.path.dirname(os.path.abspath(__file__))
HARNESS = os.environ.get("FDPO_HARNESS", os.path.join(HERE, "../../build/fdpo-harness"))
FDPO = os.environ.get("FDPO_BIN", os.path.join(HERE, "../../build/fdpo"))
LIMIT1 = {"OMP_THREAD_LIMIT": "1"}


def model_fb(tmp_path, mdir, batch, tag, env, threads, extra=()):
    bp, out = tmp_path / f"{tag}.json", tmp_path / f"{tag}.safetensors"
    bp.write_text(json.dumps(batch))
    e = {k: v for k, v in os.environ.items() if k not in ("OMP_THREAD_LIMIT", "OMP_DYNAMIC", "OMP_NUM_THREADS")}
    flags = ["--threads", str(threads)] if threads else []  # None: the library's default count
    r = subprocess.run([HARNESS, "model-fb", "--model", str(mdir), "--batch", str(bp), "--out", str(out), *flags, *extra],
                       capture_output=True, text=True, timeout=300, env={**e, **env})
    assert r.returncode == 0, r.stderr
    return st.load(str(out))[0]


def llama_batch(rng, V, lengths=(40, 25, 33)):
    """test_llama's three short sequences (shifted positions, the shared-prompt branch layout)
    and longer plain ones: with only those 21 tokens the GEMMs were too small for oneDNN to
    split them and the unfixed code already passed"""
    seqs = llama.batch(rng, V)
    for T in lengths:
        targets = list(map(int, rng.integers(0, V, size=T)))
        targets[-1] = -1
        seqs.append({"tokens": list(map(int, rng.integers(0, V, size=T))), "targets": targets,
                     "pos": list(range(T)), "branch": [0] * T})
    return seqs


def assert_matches_pytorch(got, model, seqs, d):
    """token log-probs (1e-5) and every gradient (1e-4) against float64 PyTorch for upstream d"""
    ref = parity.Reference(model)
    off, ref_tlp = 0, []
    for s in seqs:
        n = len(s["tokens"])
        _, tlp = ref.run(s["tokens"], s["targets"], s.get("pos"), None, d[off:off + n])
        ref_tlp.append(tlp)
        off += n
    assert parity.rel_err(got["token_logp"], np.concatenate(ref_tlp)) <= 1e-5
    for k, g in ref.grads().items():
        assert parity.rel_err(got[k], g) <= 1e-4, k


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


@pytest.mark.parametrize("layout", ["materialised", "fused", "sliced"])
def test_gpt2_gradients_under_thread_limit_match_pytorch(tmp_path, layout):
    """GPT-2 ("odd": V 257, C 48, 3 layers, 3 heads) forward + backward with OMP_THREAD_LIMIT=1
    and --threads 2: log-probs and every gradient against float64 PyTorch, and bit for bit
    the --threads 1 run (one thread is what ran). "sliced": the batch the 2-thread slice
    plan would split (8 sequences, 242 tokens); under the limit it runs unsliced."""
    cfg = parity.CONFIGS["odd"]
    rng = np.random.default_rng(5)
    model, mdir = parity.make_model(tmp_path, cfg, seed=6)
    lengths = [40, 7, 33, 25, 50, 12, 30, 45] if layout == "sliced" else [59, 9, 22]
    seqs = parity.random_batch(rng, cfg["vocab_size"], cfg["n_positions"], lengths, all_targets=True)
    d = rng.normal(size=sum(lengths))
    batch = {"sequences": seqs, "d_token_logp": [float(x) for x in d], "fused_head": layout != "materialised"}
    limited = model_fb(tmp_path, mdir, batch, "limited", LIMIT1, 2)
    one = model_fb(tmp_path, mdir, batch, "one", {}, 1)
    assert_same(limited, one)
    assert_matches_pytorch(limited, model, seqs, d)


@pytest.mark.parametrize("fused", [False, True])
def test_default_thread_count_under_thread_limit(tmp_path, fused):
    """A program that never sets a thread count (the harness without --threads: the default
    is the machine's cores) under OMP_THREAD_LIMIT=1: the GEMM entry points cap the count
    themselves, so the result is the 1-thread run bit for bit (fused: the sliced batch)."""
    cfg = parity.CONFIGS["odd"]
    rng = np.random.default_rng(3)
    _, mdir = parity.make_model(tmp_path, cfg, seed=5)
    lengths = [40, 7, 33, 25, 50, 12, 30, 45] if fused else [59, 9, 22]
    seqs = parity.random_batch(rng, cfg["vocab_size"], cfg["n_positions"], lengths, all_targets=True)
    batch = {"sequences": seqs, "d_token_logp": [float(x) for x in rng.normal(size=sum(lengths))], "fused_head": fused}
    default = model_fb(tmp_path, mdir, batch, "default", LIMIT1, None)
    one = model_fb(tmp_path, mdir, batch, "one", {}, 1)
    assert_same(default, one)


def test_bf16_under_thread_limit_is_the_one_thread_run(tmp_path):
    """--precision bf16 (oneDNN's bf16 GEMM on CPUs that have it, else widened to fp32) with
    OMP_THREAD_LIMIT=1 --threads 2: bit for bit the --threads 1 bf16 run (the 1-thread bf16
    path itself is checked against PyTorch in test_model_bf16)."""
    rng = np.random.default_rng(12)
    cfg = parity.CONFIGS["odd"]
    _, mdir = parity.make_model(tmp_path, cfg, seed=7)
    seqs = parity.random_batch(rng, cfg["vocab_size"], cfg["n_positions"], [59, 9, 22], all_targets=True)
    batch = {"sequences": seqs, "d_token_logp": [float(x) for x in rng.normal(size=90)]}
    limited = model_fb(tmp_path, mdir, batch, "limited", LIMIT1, 2, ("--precision", "bf16"))
    one = model_fb(tmp_path, mdir, batch, "one", {}, 1, ("--precision", "bf16"))
    assert_same(limited, one)


def test_gpt2_thread_limit_caps_three_threads_at_two(tmp_path):
    """OMP_THREAD_LIMIT=2 with --threads 3: the run is the 2-thread run, bit for bit (the
    sliced batch, so the slice count follows the capped count too)."""
    cfg = parity.CONFIGS["odd"]
    rng = np.random.default_rng(9)
    _, mdir = parity.make_model(tmp_path, cfg, seed=2)
    lengths = [40, 7, 33, 25, 50, 12, 30, 45]
    seqs = parity.random_batch(rng, cfg["vocab_size"], cfg["n_positions"], lengths, all_targets=True)
    batch = {"sequences": seqs, "d_token_logp": [float(x) for x in rng.normal(size=sum(lengths))], "fused_head": True}
    capped = model_fb(tmp_path, mdir, batch, "capped", {"OMP_THREAD_LIMIT": "2"}, 3)
    two = model_fb(tmp_path, mdir, batch, "two", {}, 2)
    assert_same(capped, two)


# libgomp sizes a dynamic team as the online CPUs minus the 15-minute load average (from
# getloadavg), one thread at the least; this stand-in reports a load of 64, so a dynamic team
# is one thread on an idle machine too (preloaded: libgomp calls getloadavg through the PLT)
LOADED_SHIM = """
int getloadavg(double loadavg[], int nelem) {
    for (int i = 0; i < nelem && i < 3; i++) loadavg[i] = 64.0;
    return nelem < 3 ? nelem : 3;
}
"""


def loaded_machine_env(tmp_path):
    """env making getloadavg() report a load of 64 (LD_PRELOAD of LOADED_SHIM, built here with cc)"""
    src, so = tmp_path / "loaded.c", tmp_path / "libloaded.so"
    src.write_text(LOADED_SHIM)
    subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-o", str(so), str(src)], check=True, capture_output=True)
    # an ASan build checks that its runtime is loaded first; the shim only replaces getloadavg
    asan = os.environ.get("ASAN_OPTIONS", "")
    return {"LD_PRELOAD": str(so), "ASAN_OPTIONS": (asan + ":" if asan else "") + "verify_asan_link_order=0"}


def test_dynamic_teams_are_turned_off(tmp_path):
    """OMP_DYNAMIC=true lets OpenMP shrink a team by the load average (on a busy machine to
    one thread); fdpo turns it off, so --threads 2 is the 2-thread run bit for bit. The load
    is forced (getloadavg reports 64: loaded_machine_env), so that the unfixed code gets
    one-thread teams under oneDNN's 2-part GEMMs, and fails, on an idle machine too."""
    cfg = parity.CONFIGS["odd"]
    rng = np.random.default_rng(4)
    model, mdir = parity.make_model(tmp_path, cfg, seed=1)
    lengths = [59, 9, 22]
    seqs = parity.random_batch(rng, cfg["vocab_size"], cfg["n_positions"], lengths, all_targets=True)
    d = rng.normal(size=sum(lengths))
    batch = {"sequences": seqs, "d_token_logp": [float(x) for x in d]}
    dyn = model_fb(tmp_path, mdir, batch, "dyn", {"OMP_DYNAMIC": "true", **loaded_machine_env(tmp_path)}, 2)
    two = model_fb(tmp_path, mdir, batch, "two", {}, 2)
    assert_same(dyn, two)
    assert_matches_pytorch(dyn, model, seqs, d)


@pytest.mark.parametrize("name", ["gqa-llama3", "qwen2"])
def test_llama_gradients_under_thread_limit_match_pytorch(tmp_path, name):
    """Llama-family forward + backward with OMP_THREAD_LIMIT=1 and --threads 2 against float64
    PyTorch (1e-5 logits, 1e-4 gradients) and bit for bit the --threads 1 run."""
    rng = np.random.default_rng(8)
    model = Llama(**llama.CONFIGS[name], seed=4)
    d = tmp_path / "ck"
    model.save_hf(str(d))
    seqs = llama_batch(rng, llama.CONFIGS[name]["vocab_size"])
    dtl = rng.normal(size=sum(len(s["tokens"]) for s in seqs))
    batch = {"sequences": seqs, "d_token_logp": [float(x) for x in dtl]}
    limited = model_fb(tmp_path, d, batch, "limited", LIMIT1, 2)
    one = model_fb(tmp_path, d, batch, "one", {}, 1)
    assert_same(limited, one)
    ref_logits, _, ref_grads = llama.reference(model, seqs, dtl)
    assert parity.rel_err(limited["logits"], ref_logits) <= 1e-5
    for k, g in ref_grads.items():
        assert parity.rel_err(limited[k], g) <= 1e-4, k


def test_sampler_under_thread_limit(tmp_path):
    """fdpo generate with OMP_THREAD_LIMIT=1 --threads 2: the same tokens as the unlimited
    2-thread run (samples do not depend on the thread count for a seed), each sample's
    log-prob equal to PyTorch's for its tokens, and a warning naming --threads and the limit."""
    d = tmp_path / "model"
    d.mkdir()
    m = parity.GPT2(vocab_size=257, n_positions=64, n_embd=32, n_layer=2, n_head=2, seed=3)
    with torch.no_grad():
        m.param("wte.weight").mul_(3.0)
    m.save_hf(str(d))
    (d / "fdpo_tokenizer.json").write_text(json.dumps({"type": "byte", "vocab_size": 257, "eos_token_id": 256}))
    prompts = ["a", "hello there", "the quick brown fox"]
    pf = tmp_path / "p.txt"
    pf.write_text("\n".join(prompts) + "\n")
    rows = {}
    for tag, env in [("limited", LIMIT1), ("free", {})]:
        out = tmp_path / f"{tag}.jsonl"
        e = {k: v for k, v in os.environ.items() if k not in ("OMP_THREAD_LIMIT", "OMP_DYNAMIC")}
        r = subprocess.run([FDPO, "generate", "--model", str(d), "--data", str(pf), "--out", str(out), "--n", "2",
                            "--max-new-tokens", "16", "--seed", "7", "--batch-size", "6", "--threads", "2"],
                           capture_output=True, text=True, timeout=120, env={**e, **env})
        assert r.returncode == 0, r.stderr
        assert ("--threads 2 exceeds OMP_THREAD_LIMIT=1" in r.stderr) == (tag == "limited"), r.stderr
        rows[tag] = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["tokens"] for x in rows["limited"]] == [x["tokens"] for x in rows["free"]]
    for k, row in enumerate(rows["limited"]):
        ids = list(prompts[k // 2].encode())
        toks = row["tokens"]
        want = completion_logp(m, ids, toks)
        assert abs(row["logp"] - want) < 5e-6, k  # <= 16 float32 log-probs


def test_training_under_thread_limit_is_the_one_thread_run(tmp_path):
    """fdpo pretrain (tiny GPT-2, batch 6 x 24 tokens: sliced on 2 threads, 4 steps of AdamW)
    with OMP_THREAD_LIMIT=1 --threads 2: the final weights, optimizer state and losses are
    bit for bit the --threads 1 run's (before the fix, the first step's gradients were wrong)."""
    words = "the cat sat on a mat while dogs ran far away with a big red ball".split()
    rng = np.random.default_rng(0)
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n<|endoftext|>\n".join(" ".join(rng.choice(words, 30)) for _ in range(6)) + "\n")
    common = ["--n-layer", "2", "--n-embd", "16", "--n-head", "2", "--n-positions", "32", "--seq-len", "24",
              "--batch-size", "6", "--steps", "4", "--lr", "3e-3", "--eval-every", "0", "--quiet", str(corpus)]
    e = {k: v for k, v in os.environ.items() if k not in ("OMP_THREAD_LIMIT", "OMP_DYNAMIC", "OMP_NUM_THREADS")}
    for tag, env, threads in [("limited", LIMIT1, "2"), ("one", {}, "1")]:
        r = subprocess.run([FDPO, "pretrain", "--out", str(tmp_path / tag), "--threads", threads, *common],
                           capture_output=True, text=True, timeout=120, env={**e, **env})
        assert r.returncode == 0, r.stderr
    for f in ["model.safetensors", "training_state.safetensors"]:
        a, _ = st.load(str(tmp_path / "limited" / f))
        b, _ = st.load(str(tmp_path / "one" / f))
        assert_same(a, b)
    la = [json.loads(x)["loss"] for x in (tmp_path / "limited/metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (tmp_path / "one/metrics.jsonl").read_text().splitlines()]
    assert la == lb and len(la) == 4


NARROWED = "but this process may run on only 1 CPU"


@pytest.mark.skipif(not __import__("shutil").which("taskset") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs taskset and two CPUs")
def test_threads_beyond_a_narrowed_affinity_warn():
    """--threads above the CPUs the process was narrowed to (taskset here; Open MPI binds each
    rank to one core by default, and `mpirun -np 1 ... --threads 2` then ran the small
    model's step in 37 ms instead of 19) is said once on stderr, with the way out; not when
    the threads fit, not without narrowing, and not when the user pins OpenMP's threads
    (libgomp narrows each thread to its place itself). The numbers stay those of the
    thread count asked for."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_PROC_BIND", "OMP_PLACES", "GOMP_CPU_AFFINITY",
                                                            "OMP_THREAD_LIMIT")}
    cpu = str(min(os.sched_getaffinity(0)))

    def lab(threads, pin=True, extra=None):
        cmd = (["taskset", "-c", cpu] if pin else []) + [FDPO, "lab", "solve", "--n", "50", "--threads", str(threads)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**env, **(extra or {})})
        assert r.returncode == 0, r.stderr
        return r

    narrowed = lab(2)
    assert narrowed.stderr.count(NARROWED) == 1, narrowed.stderr
    assert "--threads 2," in narrowed.stderr and "--bind-to none" in narrowed.stderr
    assert NARROWED not in lab(1).stderr
    assert NARROWED not in lab(2, extra={"OMP_PROC_BIND": "true"}).stderr
    free = lab(2, pin=False)
    if len(os.sched_getaffinity(0)) == os.cpu_count():   # this test itself not narrowed
        assert NARROWED not in free.stderr
    assert free.stdout == narrowed.stdout   # same thread count, same numbers


def test_the_thread_limit_is_said_once_per_process(tmp_path):
    """fdpo rl with the default thread count under OMP_THREAD_LIMIT=1 said "exceeds
    OMP_THREAD_LIMIT" at every settle of the count (twice; fdpo online once per round): once
    is enough, the count used is the same (a review's find)."""
    d = tmp_path / "model"
    parity.GPT2(vocab_size=257, n_positions=32, n_embd=16, n_layer=1, n_head=2, seed=3).save_hf(str(d))
    (d / "fdpo_tokenizer.json").write_text(json.dumps({"type": "byte", "vocab_size": 257, "eos_token_id": 256}))
    (tmp_path / "p.txt").write_text("a\nb\n")
    e = {k: v for k, v in os.environ.items() if k not in ("OMP_THREAD_LIMIT", "OMP_DYNAMIC")}
    for cmd in (["rl", "--steps", "2", "--prompts-per-step", "2"], ["online", "--rounds", "2", "--prompts-per-round", "2"]):
        r = subprocess.run([FDPO, *cmd, "--model", str(d), "--data", str(tmp_path / "p.txt"), "--reward", "length",
                            "--out", str(tmp_path / cmd[0]), "--n", "2", "--max-new-tokens", "4", "--quiet"],
                           capture_output=True, text=True, timeout=120, env={**e, **LIMIT1})
        assert r.returncode == 0, r.stderr
        assert r.stderr.count("exceeds OMP_THREAD_LIMIT=1") == 1, (cmd, r.stderr)
