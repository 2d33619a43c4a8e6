"""The small-model speed work (docs/model.md#threads): fdpo_k_expf and the OpenMP spin setting.

fdpo_k_expf (src/model/gpt2_internal.h) is fdpo's one vectorised exp: GELU, the attention
softmax (forward and backward, GPT-2 and Llama), the log-softmax and SwiGLU. `fdpo-harness
kernel-expf` maps floats through it in a vectorised loop and fails if the scalar call gives
other bits; the reference is numpy's float64 exp rounded to float32. Stated accuracy: <= 1 ulp
where exp(x) is a normal float below FLT_MAX (x in [-86.9, 88.72]; every float was checked
once, docs/model.md#exp), exactly 0 for x < -87.5 and -inf, and between 0 and 1.7e-38 in
between (a flush to zero, never a subnormal), +inf above log(FLT_MAX), NaN stays NaN. The fused kernels it feeds (bias+GELU, bias+residual+LayerNorm,
GELU backward with the bias gradient) are checked end to end against PyTorch by
test_model_parity.py / test_lora.py at the unchanged fp32 tolerances.

The fdpo programs set GOMP_SPINCOUNT=1000 before libgomp starts unless the user set an OpenMP
wait setting (src/cli/omp_spin.h); libgomp's OMP_DISPLAY_ENV report of the running process
shows what it read.
"""
import os
import subprocess

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
HARNESS = os.environ.get("FDPO_HARNESS", os.path.join(HERE, "../../build/fdpo-harness"))
FDPO = os.environ.get("FDPO_BIN", os.path.join(HERE, "../../build/fdpo"))


def fdpo_expf(x):
    x = np.asarray(x, dtype=np.float32)
    inp = "\n".join(float(v).hex() if np.isfinite(v) else str(float(v)) for v in x)
    out = subprocess.run([HARNESS, "kernel-expf"], input=inp, capture_output=True, text=True, check=True).stdout
    return np.array([float.fromhex(w) if "n" not in w else float(w.replace("-nan", "nan")) for w in out.split()],
                    dtype=np.float32)


def ulps(a, b):
    ia = a.view(np.int32).astype(np.int64)
    ib = b.view(np.int32).astype(np.int64)
    return np.abs(ia - ib)


def test_expf_within_1_ulp_of_float64_exp():
    rng = np.random.default_rng(3)
    x = np.concatenate([
        np.linspace(-86.9, 88.72, 40001, dtype=np.float32),          # the whole normal range, dense
        rng.uniform(-10, 10, 20000).astype(np.float32),               # where softmax and GELU live
        rng.uniform(-1e-3, 1e-3, 2000).astype(np.float32),            # around exp(0) = 1
        np.float32([0.0, -0.0, 0.5 * np.log(2), -0.5 * np.log(2), 1.0, -1.0, 88.72283]),
    ]).astype(np.float32)
    got = fdpo_expf(x)
    ref = np.exp(x.astype(np.float64)).astype(np.float32)
    u = ulps(got, ref)
    assert u.max() <= 1, f"max {u.max()} ulp at x = {x[u.argmax()]!r}: {got[u.argmax()]!r} vs {ref[u.argmax()]!r}"


def test_expf_special_values():
    x = np.float32([-np.inf, -1e30, -1000.0, -87.6, 88.7229, 89.0, 1e30, np.inf, np.nan])
    got = fdpo_expf(x)
    assert np.all(got[:4] == 0.0), got[:4]                          # exp(-inf) = 0: masked softmax entries
    assert np.all(np.isposinf(got[4:8])), got[4:8]
    assert np.isnan(got[8])
    # the largest float below log(FLT_MAX) stays finite (within 1 ulp of FLT_MAX)
    top = np.nextafter(np.float32(np.log(np.finfo(np.float32).max)), np.float32(0))
    assert np.isfinite(fdpo_expf([top])[0])
    # where exp(x) is subnormal or near FLT_MIN: flushed to 0 or the normal value, never more than 1.7e-38 off
    low = np.linspace(-87.5, -86.9, 2001, dtype=np.float32)
    g = fdpo_expf(low).astype(np.float64)
    assert np.all(g >= 0) and np.all(np.abs(g - np.exp(low.astype(np.float64))) <= 1.7e-38)
    assert np.all((g == 0) | (g >= np.finfo(np.float32).tiny)), "no subnormal results"


OMP_THREAD_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_PROC_BIND", "OMP_PLACES", "GOMP_CPU_AFFINITY")


def omp_env_report(prog, args, extra_env, key="GOMP_SPINCOUNT"):
    env = {k: v for k, v in os.environ.items() if k not in OMP_THREAD_ENV}
    env.update(extra_env, OMP_DISPLAY_ENV="verbose")
    r = subprocess.run([prog] + args, env=env, capture_output=True, text=True)
    values = [ln.split("=", 1)[1].strip().strip("'") for ln in (r.stdout + r.stderr).splitlines()
              if ln.strip().startswith(key + " ")]
    assert values, r.stderr[-2000:]
    return values[-1], r   # the last report is the process that ran the command


def test_programs_set_a_short_spin_unless_the_user_chose():
    for prog, args in ((FDPO, ["--help"]), (HARNESS, ["kernel-expf"])):
        spin, r = omp_env_report(prog, args, {})
        assert spin == "1000", (prog, spin)
        assert r.returncode == 0, r.stderr[-2000:]
        assert omp_env_report(prog, args, {"GOMP_SPINCOUNT": "7"})[0] == "7"
        # OMP_WAIT_POLICY chosen: libgomp's own spin for that policy, not fdpo's
        assert omp_env_report(prog, args, {"OMP_WAIT_POLICY": "passive"})[0] != "1000"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to tell one place from all")
def test_programs_keep_every_cpu_when_the_user_binds_threads():
    """With OMP_PROC_BIND or OMP_PLACES set, libgomp binds the initial thread to its first
    place before main(); the spin re-exec kept that one-CPU mask, so the program saw a single
    place and ran all its threads on one CPU. Now no re-exec then: the process that runs the
    command reports every CPU this test may use as a place (and libgomp's own spin); with
    OMP_PROC_BIND=false nothing is bound and the short spin is still set."""
    n_cpus = len(os.sched_getaffinity(0))
    for prog, args in ((FDPO, ["--help"]), (HARNESS, ["kernel-expf"])):
        for bind in ({"OMP_PROC_BIND": "true"}, {"OMP_PROC_BIND": "close"}, {"OMP_PLACES": "threads"}):
            places, r = omp_env_report(prog, args, bind, key="OMP_PLACES")
            assert r.returncode == 0, r.stderr[-2000:]
            assert places.count("{") == n_cpus, (prog, bind, places)
            assert omp_env_report(prog, args, bind)[0] != "1000"
        assert omp_env_report(prog, args, {"OMP_PROC_BIND": "false"})[0] == "1000"


def test_model_ops_times_every_kernel_of_a_step(tmp_path):
    """`fdpo-harness model-ops` (the per-op timer of docs/model.md's wave-5 profile): one
    JSON line per op of an fp32 training step with its calls per step and CPU / wall ms,
    then a total that is their sum; bad arguments are refused with the flag named."""
    import json
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "gpt2", "vocab_size": 67, "n_positions": 32, "n_embd": 32,
                               "n_layer": 2, "n_head": 2}))
    r = subprocess.run([HARNESS, "model-ops", "--config", str(cfg), "--batch", "2", "--seq", "24", "--reps", "1",
                        "--threads", "1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(ln) for ln in r.stdout.splitlines()]
    ops, total = lines[:-1], lines[-1]
    names = {o["op"] for o in ops}
    for must in ("attention_forward", "attention_backward", "matmul_backward qkv", "lmhead_logsoftmax_forward",
                 "gelu_backward_bias", "adamw_step"):
        assert must in names
    assert all(o["cpu_ms_per_step"] >= 0 and o["calls_per_step"] >= 1 for o in ops)
    assert {o["op"]: o["calls_per_step"] for o in ops}["layernorm_backward"] == 2 * 2 + 1
    assert total["op"] == "total" and abs(total["cpu_ms_per_step"] - sum(o["cpu_ms_per_step"] for o in ops)) < 5e-3
    bad = subprocess.run([HARNESS, "model-ops", "--config", str(cfg), "--batch", "2", "--seq", "99"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "--seq" in bad.stderr
