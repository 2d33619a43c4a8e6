"""The f-DPO step against PyTorch: every divergence x loss (with and without the SFT term),
both pair layouts, gradient accumulation, and log-ratios past exp's float range. fdpo runs
its trainer step (fdpo_dpo_step) through `fdpo-harness dpo-grad`; the reference computes the
same objective with autograd on the plain-PyTorch GPT-2 in float64, one sequence at a time.

Tolerances: loss within 1e-5 relative; every parameter gradient max|diff|/max|ref| <= 1e-4."""
import json
import math

import numpy as np
import pytest
import torch

from dpo_common import (completion_logps, harness, pair_loss, rel_err, save_byte_tokenizer,
                        tokenize_pair, write_jsonl)
from fdpo_ref import safetensors as st
from fdpo_ref.gpt2 import GPT2

torch.set_num_threads(1)  # tiny models: threads only add contention

CFG = dict(vocab_size=257, n_positions=64, n_embd=32, n_layer=2, n_head=4)
MAX_LEN, MAX_PROMPT = 40, 16

ROWS = [
    {"prompt": "The cat", "chosen": " sat on the mat.", "rejected": " ran."},
    {"prompt": "Q: 2+2?\nA:", "chosen": " 4", "rejected": " five, I think, or maybe 22"},
    {"chosen": "Hello there, friend!", "rejected": "Hello there, enemy."},                # implicit prompt
    {"prompt": "A very long prompt that will surely be cut at the front",                  # truncated
     "chosen": " and a long chosen answer that goes past the limit", "rejected": " short no"},
    {"prompt": [{"role": "user", "content": "Hi"}],                                        # conversational
     "chosen": [{"role": "assistant", "content": "Hello!"}],
     "rejected": [{"role": "assistant", "content": "Go away."}]},
    {"prompt": "Caf\u00e9", "chosen": " \u2615 good", "rejected": " bad"},                 # UTF-8
]

DIVS = ["rkl", "fkl", "js", "alpha:0.3", "alpha:0.5", "alpha:0.7"]
# (loss, beta, label smoothing, simpo gamma)
LOSSES = [("sigmoid", 0.1, 0.0, 0.0), ("sigmoid", 0.5, 0.2, 0.0), ("robust", 0.3, 0.1, 0.0),
          ("hinge", 2.0, 0.0, 0.0), ("ipo", 0.4, 0.0, 0.0)]


def all_cases():
    cases = []
    for d in DIVS:
        for (loss, beta, eps, gamma) in LOSSES:
            for sft in (0.0, 0.7):
                cases.append((d, loss, beta, eps, gamma, sft))
    for sft in (0.0, 0.7):
        cases.append(("rkl", "simpo", 2.0, 0.0, 0.5, sft))
    return cases


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dpo")
    policy, ref = GPT2(**CFG, seed=11), GPT2(**CFG, seed=12)
    for m, name in ((policy, "policy"), (ref, "ref")):
        m.save_hf(str(tmp / name))
        save_byte_tokenizer(str(tmp / name))
    write_jsonl(tmp / "data.jsonl", ROWS)
    pairs = [tokenize_pair(r, MAX_LEN, MAX_PROMPT) for r in ROWS]
    assert any(len(P) + max(len(C), len(R)) == MAX_LEN for P, C, R in pairs)  # one pair was cut
    policy.double()
    ref.double()
    return tmp, policy, ref, pairs


def reference(policy, pairs, cases, ref_logps):
    """-> list of (loss, {param name: grad}, per-pair rows, metrics) per case."""
    params = policy.named()
    policy.zero_grad()
    side = []
    for P, C, R in pairs:
        tw, gw = completion_logps(policy, P, C)
        tl, gl = completion_logps(policy, P, R)
        side.append((tw, tl, gw, gl))
    out = []
    for (div, loss, beta, eps, gamma, sft) in cases:
        mean = loss in ("ipo", "simpo")
        total, rows, lws, lls = 0.0, [], [], []
        nll, n_chosen = 0.0, 0
        for k, (tw, tl, gw, gl) in enumerate(side):
            lpw, lpl = tw.sum(), tl.sum()
            rw, rl = (0.0, 0.0) if loss == "simpo" else ref_logps[k]
            nw, nl = (len(tw), len(tl)) if mean else (1, 1)
            lw, ll = (lpw - rw) / nw, (lpl - rl) / nl
            L = pair_loss(div, loss, beta, eps, gamma, lw, ll)
            total = total + L
            nll = nll - lpw
            n_chosen += len(tw)
            rows.append([lpw.item(), lpl.item(), lw.item(), ll.item(), L.item()])
            lws.append(lw.item())
            lls.append(ll.item())
        objective = total / len(side) + sft * nll / n_chosen
        grads = torch.autograd.grad(objective, list(params.values()), retain_graph=True)
        lw, ll = np.array(lws), np.array(lls)
        metrics = {
            "loss": objective.item(),
            "rewards/chosen": beta * lw.mean(), "rewards/rejected": beta * ll.mean(),
            "rewards/margins": beta * (lw - ll).mean(),
            "rewards/accuracies": float(np.mean((lw > ll) + 0.5 * (lw == ll))),
            "logits/chosen": torch.cat([s[2] for s in side]).mean().item(),
            "logits/rejected": torch.cat([s[3] for s in side]).mean().item(),
        }
        out.append((objective.item(), dict(zip(params.keys(), grads)), rows, metrics))
    return out


def ref_model_logps(ref, pairs):
    with torch.no_grad():
        return [(completion_logps(ref, P, C)[0].sum().item(), completion_logps(ref, P, R)[0].sum().item())
                for P, C, R in pairs]


def run_fdpo(tmp, name, cases, *extra):
    out = tmp / name
    args = ["dpo-grad", "--threads", 1, "--policy", tmp / "policy", "--data", tmp / "data.jsonl", "--out", out,
            "--max-length", MAX_LEN, "--max-prompt-length", MAX_PROMPT, *extra]
    for c in cases:
        args += ["--case", " ".join(map(str, c))]
    harness(*args)
    res = json.load(open(out / "result.json"))["cases"]
    grads = [st.load(str(out / f"grads_{i}.safetensors"))[0] for i in range(len(cases))]
    return res, grads


def assert_matches(res, grads, expect, cases, loss_tol=1e-5, grad_tol=1e-4):
    assert len(res) == len(cases)
    for i, case in enumerate(cases):
        loss, g_ref, rows, _ = expect[i]
        got = res[i]
        assert math.isfinite(got["loss"]), case
        assert abs(got["loss"] - loss) <= loss_tol * max(abs(loss), 1e-3), (case, got["loss"], loss)
        assert rel_err(got["pairs"], rows) < 1e-5, (case, got["pairs"], rows)
        for name, g in g_ref.items():
            gd = grads[i][name]
            assert np.all(np.isfinite(gd)), (case, name)
            assert rel_err(gd, g.detach().numpy()) < grad_tol, (case, name, rel_err(gd, g.detach().numpy()))


def test_parity_every_divergence_and_loss_live_ref(setup):
    """All (divergence, loss, sft) cases in one harness run with a live reference model."""
    tmp, policy, ref, pairs = setup
    cases = all_cases()
    expect = reference(policy, pairs, cases, ref_model_logps(ref, pairs))
    res, grads = run_fdpo(tmp, "live", cases, "--ref", tmp / "ref", "--layout", "shared")
    assert_matches(res, grads, expect, cases)
    # logged metrics of the first case (rkl, sigmoid) against their definitions
    for key, want in expect[0][3].items():
        assert abs(res[0][key] - want) <= 1e-5 * max(1.0, abs(want)), (key, res[0][key], want)


def test_shared_layout_equals_plain_layout(setup):
    """The shared-prompt layout computes the same loss and gradients as two sequences."""
    tmp, policy, ref, pairs = setup
    cases = [("rkl", "sigmoid", 0.1, 0.0, 0.0, 0.7), ("js", "ipo", 0.4, 0.0, 0.0, 0.0),
             ("rkl", "simpo", 2.0, 0.0, 0.5, 0.0)]
    shared, gs = run_fdpo(tmp, "shared", cases, "--ref", tmp / "ref", "--layout", "shared")
    plain, gp = run_fdpo(tmp, "plain", cases, "--ref", tmp / "ref", "--layout", "plain")
    for i in range(len(cases)):
        assert abs(shared[i]["loss"] - plain[i]["loss"]) <= 1e-6 * abs(plain[i]["loss"])
        assert rel_err(shared[i]["pairs"], plain[i]["pairs"]) < 1e-6
        for name in gp[i]:
            assert rel_err(gs[i][name], gp[i][name]) < 1e-5, (cases[i], name)
    # the shared layout processes fewer tokens: the prompt once per pair
    assert shared[0]["tokens"] == sum(len(P) - 1 + len(C) + len(R) for P, C, R in pairs)
    assert plain[0]["tokens"] == sum(2 * len(P) + len(C) + len(R) - 2 for P, C, R in pairs)
    # and both match PyTorch
    expect = reference(policy, pairs, cases, ref_model_logps(ref, pairs))
    assert_matches(plain, gp, expect, cases)


def test_grad_accumulation_is_exact(setup):
    """Micro-batches of 1 and 4 pairs give the full-batch mean gradient (SFT term included)."""
    tmp, policy, ref, pairs = setup
    cases = [("alpha:0.5", "sigmoid", 0.1, 0.0, 0.0, 0.7), ("fkl", "ipo", 0.4, 0.0, 0.0, 0.7)]
    expect = reference(policy, pairs, cases, ref_model_logps(ref, pairs))
    for mb in (1, 4):
        res, grads = run_fdpo(tmp, f"mb{mb}", cases, "--ref", tmp / "ref", "--micro-batch", mb)
        assert_matches(res, grads, expect, cases)


def test_parity_with_log_ratios_past_exp_overflow(setup):
    """Cached reference log-probs that put one pair's rejected side ~400 nats below the
    reference: exp(-l) overflows float (and double for alpha*l) when computed naively; the
    loss and every gradient stay finite and match the capped-exponent reference."""
    tmp, policy, ref, pairs = setup
    with torch.no_grad():
        pol = ref_model_logps(policy, pairs)
    ref_lp = [(w - 0.3 * k, l + 0.2 * k) for k, (w, l) in enumerate(pol)]
    ref_lp[0] = (pol[0][0] + 0.5, pol[0][1] + 400.0)
    # and one pair's chosen side 250 nats below: s'(l) at the gradient's cap e^64 (at 88.72
    # its per-token gradient overflowed to inf in the backward, and the run stopped at step 1)
    ref_lp[1] = (pol[1][0] + 250.0, pol[1][1])
    st.save(str(tmp / "ref_logps.safetensors"), {"logps": np.array(ref_lp, dtype=np.float64)})
    cases = [(d, loss, 0.1, 0.0, 0.0, sft) for d in DIVS for loss in ("sigmoid", "hinge") for sft in (0.0, 0.5)]
    expect = reference(policy, pairs, cases, ref_lp)
    res, grads = run_fdpo(tmp, "extreme", cases, "--ref-logps", tmp / "ref_logps.safetensors")
    l_l = res[0]["pairs"][0][3]
    assert -l_l > 88.73 and -0.3 * l_l > 88.73  # a naive exp(-l) / exp(-0.3 l) would be inf in float
    assert -res[0]["pairs"][1][2] > 64 / 0.3   # past the gradient's cap for fkl and alpha:0.3
    assert_matches(res, grads, expect, cases)


# ---------------------------------------------------------------------------------------
# The `fdpo dpo` command: reference cache, live reference, learning, resume, bad input.
# Tiny models and --threads 1 keep every run well under a second or two.

import os
import random

from dpo_common import fdpo

TINY = dict(vocab_size=257, n_positions=48, n_embd=32, n_layer=2, n_head=4)


def synthetic_pairs(n, seed):
    """Known answer: chosen completions are vowels, rejected ones consonants from xyzqw."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        p = "".join(rng.choice("abcdefgh") for _ in range(4)) + ":"
        rows.append({"prompt": p, "chosen": "".join(rng.choice("aeiou") for _ in range(5)),
                     "rejected": "".join(rng.choice("xyzqw") for _ in range(rng.randint(3, 7)))})
    return rows


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dpo_cli")
    for name, seed in (("pol", 3), ("ref2", 4)):
        GPT2(**TINY, seed=seed).save_hf(str(tmp / name))
        save_byte_tokenizer(str(tmp / name))
    write_jsonl(tmp / "data.jsonl", synthetic_pairs(200, 0))
    return tmp


def base_args(cli, out, *extra):
    return ["dpo", "--policy", cli / "pol", "--data", cli / "data.jsonl", "--out", out, "--threads", 1,
            "--batch-size", 8, "--lr", "1e-3", "--quiet", *extra]


def metrics(out):
    return [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]


def summary(out, name="data_summary.json"):
    return json.load(open(os.path.join(out, name)))


def test_ref_cache_is_reused_and_keyed(cli):
    runs = cli / "runs_cache"
    r = fdpo(*base_args(cli, runs / "a", "--steps", 2, "--eval-every", 0))
    assert "ref cache miss" in r.stderr
    path = summary(runs / "a")["reference"]["cache_file"]
    assert os.path.dirname(path) == str(runs / ".fdpo-cache")  # default: beside OUT
    mtime = os.stat(path).st_mtime_ns
    # a sweep over beta / divergence reuses the file without recomputing it
    r = fdpo(*base_args(cli, runs / "b", "--steps", 2, "--eval-every", 0, "--beta", 0.3, "--divergence", "js"))
    assert f"ref cache hit: {path}" in r.stderr and "ref cache miss" not in r.stderr
    assert summary(runs / "b")["reference"] == {"mode": "cache", "cache_file": path, "cache_hit": True}
    assert os.stat(path).st_mtime_ns == mtime
    # every keyed input recomputes: data, reference weights, truncation, tokenizer
    write_jsonl(cli / "data2.jsonl", synthetic_pairs(200, 0) + synthetic_pairs(1, 9))
    tok_dir = cli / "pol_tok"
    if not tok_dir.exists():
        GPT2(**TINY, seed=3).save_hf(str(tok_dir))
        (tok_dir / "fdpo_tokenizer.json").write_text('{"type": "byte", "vocab_size": 257}')
    variants = {
        "data": ["--data", cli / "data2.jsonl"],
        "ref": ["--ref", cli / "ref2"],
        "trunc": ["--max-length", 12, "--max-prompt-length", 4],
        "tok": ["--policy", tok_dir],
        # how the log-probs are computed: bf16, its route (vdpbf16ps or fp32 FMA where the
        # timing probe answers fp32: FDPO_BF16_PROBE) and the plain layout change their last bits
        "bf16": ["--precision", "bf16"],
        "route": ["--precision", "bf16"],
        "plain": ["--layout", "plain"],
        # and the pairs per forward: oneDNN's sgemm rounds a one-pair batch's products otherwise,
        # and a --batch-size 1 run read a batch-8 run's file (step-0 accuracy 0.475; a hunt's find)
        "micro": ["--batch-size", 1],
    }
    seen, env = {path}, None
    for name, extra in variants.items():
        if name == "route":   # the probe answers the other route than "bf16" ran on (none without AVX512-BF16)
            _, meta = st.load(summary(runs / "bf16")["reference"]["cache_file"])
            ran = meta["parts"].split(" route=")[1].split()[0]
            assert ran in ("dpbf16", "fp32", "fallback"), meta
            if ran == "fallback":
                continue
            env = {**os.environ, "FDPO_BF16_PROBE": "fp32" if ran == "dpbf16" else "dpbf16"}
        r = fdpo(*base_args(cli, runs / name, "--steps", 1, "--eval-every", 1, *extra), env=env)
        env = None
        assert "ref cache miss" in r.stderr, name
        p = summary(runs / name)["reference"]["cache_file"]
        assert p not in seen, name
        seen.add(p)
        # the cached reference is the live one: at step 0 (policy = reference, all but "ref")
        # every implicit reward is exactly 0, so every pair is a tie (accuracy 0.5), not noise
        m0 = metrics(runs / name)[0]
        assert m0["step"] == 0
        assert name == "ref" or m0["eval_rewards/margins"] == 0 and m0["eval_rewards/accuracies"] == 0.5, (name, m0)
    assert os.stat(path).st_mtime_ns == mtime
    _, meta = st.load(summary(runs / "bf16")["reference"]["cache_file"])
    assert " precision=bf16 route=" in meta["parts"] and " layout=shared micro_batch=" in meta["parts"], meta
    _, meta = st.load(summary(runs / "micro")["reference"]["cache_file"])
    assert meta["parts"].endswith(" layout=shared micro_batch=1"), meta


def test_ref_cache_key_covers_the_llama_config(cli):
    """rope_theta changes a Llama's log-probs, not its weights: a reference whose config.json
    says another rope_theta must not read the first one's cache (it did until wave 18:
    step-0 held-out margins 0.007, accuracy 0.55, instead of exact ties)."""
    from fdpo_ref.llama import Llama
    runs = cli / "runs_llama"
    model = runs / "llm"
    Llama(vocab_size=257, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
          num_key_value_heads=2, seed=3).save_hf(str(model))
    save_byte_tokenizer(str(model))
    paths = []
    for name, theta in (("a", 10000.0), ("b", 500.0), ("c", 10000.0)):
        cfg = json.loads((model / "config.json").read_text())
        cfg["rope_theta"] = theta
        (model / "config.json").write_text(json.dumps(cfg))
        r = fdpo(*base_args(cli, runs / name, "--policy", model, "--steps", 1, "--eval-every", 1))
        paths.append(summary(runs / name)["reference"]["cache_file"])
        assert ("ref cache hit" in r.stderr) == (name == "c"), (name, r.stderr)
        m0 = metrics(runs / name)[0]
        assert m0["eval_rewards/margins"] == 0 and m0["eval_rewards/accuracies"] == 0.5, (name, m0)
    assert paths[0] != paths[1] and paths[0] == paths[2]


def test_cached_reference_equals_live_reference_and_pytorch(cli):
    runs = cli / "runs_live"
    common = ["--steps", 3, "--eval-every", 3, "--ref", cli / "ref2", "--seed", 5]
    fdpo(*base_args(cli, runs / "cached", *common))
    fdpo(*base_args(cli, runs / "live", *common, "--ref-live"))
    assert summary(runs / "live")["reference"] == {"mode": "live"}
    mc, ml = metrics(runs / "cached"), metrics(runs / "live")
    assert len(mc) == len(ml) == 4
    for a, b in zip(mc, ml):
        for k in a:
            if k in ("tokens_per_sec",):
                continue
            assert abs(a[k] - b[k]) <= 1e-5 * max(1.0, abs(b[k])), (k, a[k], b[k])
    # the cache file holds the reference's summed completion log-probs, pair by pair
    ref = GPT2(**TINY)
    ref.load_hf(str(cli / "ref2"))
    ref.double()
    rows = [json.loads(l) for l in open(cli / "data.jsonl")]
    want = ref_model_logps(ref, [tokenize_pair(r, TINY["n_positions"], 0) for r in rows])
    got, _ = st.load(summary(runs / "cached")["reference"]["cache_file"])
    assert rel_err(got["logps"], want) < 1e-5


@pytest.mark.parametrize("div", ["rkl", "fkl", "js", "alpha:0.5"])
def test_learning_raises_heldout_reward_accuracy(cli, div):
    out = cli / f"learn_{div.replace(':', '_')}"
    fdpo(*base_args(cli, out, "--divergence", div, "--steps", 30, "--batch-size", 16,
                    "--eval-fraction", 0.2, "--eval-every", 30, "--schedule", "constant"))
    s = summary(out, "eval_summary.json")
    assert s["pairs"] == 40
    assert 0.3 <= s["initial"]["rewards/accuracies"] <= 0.7, s
    assert s["rewards/accuracies"] >= 0.9, s
    assert s["rewards/margins"] > 0


def weak_pairs(n, seed, flip):
    """A preference learned gradually: chosen is the completion with more 'a' minus 'h'
    (random letters a-h; ties dropped), its label flipped with probability flip."""
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        a, b = ("".join(rng.choice("abcdefgh") for _ in range(6)) for _ in range(2))
        sa, sb = a.count("a") - a.count("h"), b.count("a") - b.count("h")
        if sa == sb:
            continue
        c, r = (a, b) if sa > sb else (b, a)
        if rng.random() < flip:
            c, r = r, c
        rows.append({"prompt": "".join(rng.choice("abcdefgh") for _ in range(4)) + ":", "chosen": c, "rejected": r})
    return rows


def test_bf16_reward_accuracy_curves_match_fp32_within_seed_noise(cli):
    """Issue #13: bf16 DPO's held-out reward accuracy curve is indistinguishable from fp32's
    within noise. The noise is what the seed alone does to the curve (the order of the
    training pairs); bf16 must move it by a small fraction of that. Three seeds, 60 steps,
    11 evaluations of 200 held-out pairs. Observed mean |difference| over the curve, bf16 vs
    fp32 at the same seed against seed vs seed in fp32: accuracy 0.0003 vs 0.044, eval loss
    0.0002 vs 0.014 (the bound is a fifth of the seed's effect)."""
    write_jsonl(cli / "weak_train.jsonl", weak_pairs(400, 1, 0.2))
    write_jsonl(cli / "weak_eval.jsonl", weak_pairs(200, 2, 0.0))
    curves = {}
    for prec in ("fp32", "bf16"):
        for seed in (1, 2, 3):
            out = cli / f"curve_{prec}_{seed}"
            fdpo(*base_args(cli, out, "--data", cli / "weak_train.jsonl", "--eval-file", cli / "weak_eval.jsonl",
                            "--steps", 60, "--eval-every", 6, "--schedule", "constant", "--seed", seed,
                            "--precision", prec))
            ev = [m for m in metrics(out) if "eval_loss" in m]
            assert [m["step"] for m in ev] == list(range(0, 61, 6))
            curves[prec, seed] = (np.array([m["eval_rewards/accuracies"] for m in ev]),
                                  np.array([m["eval_loss"] for m in ev]))
    for k in (0, 1):   # accuracy, loss
        d_prec = np.mean([np.abs(curves["bf16", s][k] - curves["fp32", s][k]).mean() for s in (1, 2, 3)])
        d_seed = np.mean([np.abs(curves["fp32", a][k] - curves["fp32", b][k]).mean() for a, b in ((1, 2), (1, 3), (2, 3))])
        assert d_seed > 0.01 if k == 0 else d_seed > 1e-3   # the seeds do move the curve: a noise to compare with
        assert d_prec <= 0.2 * d_seed, (k, d_prec, d_seed)
    for s in (1, 2, 3):
        acc, loss = curves["bf16", s]
        assert acc[0] == 0.5 and abs(loss[0] - math.log(2)) < 1e-12   # step 0: the policy is the reference
        assert acc[-3:].mean() >= 0.75 and loss[-1] < 0.65             # it learned the preference
        assert np.any(loss[1:] != curves["fp32", s][1][1:])            # and bf16 ran (its loss differs)


def test_metrics_names_and_determinism(cli):
    runs = cli / "runs_det"
    for name in ("a", "b"):
        fdpo(*base_args(cli, runs / name, "--steps", 3, "--eval-every", 2, "--sft-weight", 0.5, "--seed", 7))
    ma, mb = metrics(runs / "a"), metrics(runs / "b")
    for a, b in zip(ma, mb):
        a.pop("tokens_per_sec", None)
        b.pop("tokens_per_sec", None)
        assert a == b  # same seed + same threads -> identical numbers
    keys = set(ma[1])
    for k in ["loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
              "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected", "grad_norm",
              "learning_rate", "epoch", "scores/chosen", "scores/rejected", "nll_loss"]:
        assert k in keys, k
    assert "tokens_per_sec" in metrics(runs / "a")[1]
    assert "eval_rewards/accuracies" in ma[2] and "eval_loss" in ma[2]
    # rewards/margins is the difference of the logged rewards
    m = ma[1]
    assert abs(m["rewards/margins"] - (m["rewards/chosen"] - m["rewards/rejected"])) < 1e-9


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_continues_exactly(cli, precision):
    runs = cli / f"runs_resume_{precision}"
    args = ["--steps", 4, "--eval-every", 0, "--seed", 2, "--precision", precision]
    fdpo(*base_args(cli, runs / "straight", *args))
    fdpo(*base_args(cli, runs / "cut", *args, "--stop-at", 2))
    # --precision not given again: the saved run's, so the reference cache's key (and file) too
    r = fdpo("dpo", "--out", runs / "cut", "--resume", "--threads", 1, "--quiet", "--batch-size", 8, "--lr", "1e-3")
    assert "ref cache hit" in r.stderr  # the resumed run reuses the reference log-probs
    a, _ = st.load(str(runs / "straight" / "model.safetensors"))
    b, _ = st.load(str(runs / "cut" / "model.safetensors"))
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_state_records_no_placeholder_settings(cli):
    """dpo has no --seq-len and no --eval-max-seqs: the state recorded "seq-len": 1 and
    "eval-max-seqs": 0, placeholders that read as the run's settings. A state saved with them
    (as before) still resumes, and the resumed state drops them."""
    runs = cli / "runs_placeholders"
    args = ["--steps", 3, "--eval-every", 0, "--seed", 2]
    fdpo(*base_args(cli, runs / "cut", *args, "--stop-at", 1))
    path = runs / "cut" / "training_state.json"
    state = json.loads(path.read_text())
    assert "seq-len" not in state["settings"] and "eval-max-seqs" not in state["settings"]
    assert {"lr", "batch-size", "beta", "max-length"} <= set(state["settings"])
    state["settings"].update({"seq-len": 1, "eval-max-seqs": 0})
    state["fixed"].append("seq-len")
    path.write_text(json.dumps(state))
    fdpo("dpo", "--out", runs / "cut", "--resume", "--threads", 1, "--quiet")
    state = json.loads(path.read_text())
    assert state["step"] == 3 and "seq-len" not in state["settings"] and "seq-len" not in state["fixed"]


def test_resumed_run_keeps_the_initial_eval(cli):
    """eval_summary.json's "initial" (the held-out metrics before step 1) survives a resume: read
    back from metrics.jsonl's step-0 line (a resumed run used to drop it), byte-equal to the
    uninterrupted run's file"""
    runs = cli / "runs_resume_eval"
    args = ["--steps", 4, "--eval-every", 2, "--eval-fraction", 0.2, "--seed", 2]
    fdpo(*base_args(cli, runs / "straight", *args))
    fdpo(*base_args(cli, runs / "cut", *args, "--stop-at", 2))
    fdpo("dpo", "--out", runs / "cut", "--resume", "--threads", 1, "--quiet")
    a, b = (runs / "straight" / "eval_summary.json").read_bytes(), (runs / "cut" / "eval_summary.json").read_bytes()
    assert "initial" in json.loads(a) and a == b


def test_skipped_pairs_are_counted_and_reported(cli):
    rows = synthetic_pairs(20, 1) + [{"prompt": "x", "chosen": "", "rejected": "y"},
                                     {"prompt": "x", "chosen": "s", "rejected": "s"}]
    write_jsonl(cli / "skippy.jsonl", rows)
    out = cli / "runs_skip" / "a"
    r = fdpo("dpo", "--policy", cli / "pol", "--data", cli / "skippy.jsonl", "--out", out, "--threads", 1,
             "--steps", 1, "--bad-pairs", "skip", "--eval-every", 0)
    assert "20 pairs from 22 lines" in r.stderr and "1 empty" in r.stderr and "1 identical" in r.stderr
    assert ":21: first pair skipped as empty completion" in r.stderr
    s = summary(out)["data"]
    assert s["pairs"] == 20 and s["skipped"]["empty_completion"] == 1 and s["skipped"]["identical"] == 1


CLI_BAD = [
    (["--divergence", "tv"], "--divergence tv: total variation is not usable"),
    (["--divergence", "chi2"], "--divergence chi2: chi2 is not usable"),
    (["--beta", "0"], "--beta"),
    (["--beta", "-1"], "--beta"),
    (["--divergence", "alpha:1.5"], "alpha:1.5"),
    (["--divergence", "alpha:0"], "alpha:0"),
    (["--loss", "nope"], "--loss"),
    (["--layout", "diagonal"], "--layout"),
    (["--max-length", 100], "--max-length 100 exceeds the policy's n_positions 48"),
    (["--max-length", 10, "--max-prompt-length", 10], "--max-prompt-length 10"),
    (["--eval-fraction", 1.5], "--eval-fraction"),
    (["--label-smoothing", 0.7], "--label-smoothing"),
    (["--on-long", "explode"], "--on-long"),
    (["--bad-pairs", "ignore"], "--bad-pairs"),
    (["--ref", "/nonexistent/ckpt"], "--ref /nonexistent/ckpt"),
    (["--data", "/nonexistent/pairs.jsonl"], "/nonexistent/pairs.jsonl"),
    (["--policy", "/nonexistent/pol"], "/nonexistent/pol"),
    (["--sft-weight", "-1"], "--sft-weight"),
]


def test_required_flags(cli):
    r = fdpo("dpo", "--data", cli / "data.jsonl", "--out", cli / "runs_bad" / "z", check=False)
    assert r.returncode != 0 and "--model" in r.stderr
    r = fdpo("dpo", "--policy", cli / "pol", "--out", cli / "runs_bad" / "z", check=False)
    assert r.returncode != 0 and "--data" in r.stderr
    r = fdpo("dpo", "--policy", cli / "pol", "--data", cli / "data.jsonl", check=False)
    assert r.returncode != 0 and "--out" in r.stderr


@pytest.mark.parametrize("extra,msg", CLI_BAD)
def test_bad_flags_are_refused_with_the_flag_named(cli, extra, msg):
    r = fdpo(*base_args(cli, cli / "runs_bad" / "x", "--steps", 1, *extra), check=False)
    assert r.returncode != 0 and msg in r.stderr, r.stderr
    assert not (cli / "runs_bad" / "x" / "model.safetensors").exists()


@pytest.mark.parametrize("line,msg", [
    ('{"prompt": "a", "chosen": "b", "rejected": "c"', "invalid JSON"),
    ('{"prompt": "a", "chosen": "b"}', "missing field 'rejected'"),
    ('{"prompt": "a", "chosen": ["b"], "rejected": "c"}', "field 'rejected' must be a list"),
    ('{"prompt": "a", "chosen": "", "rejected": "c"}', "empty chosen completion"),
    ('{"prompt": "a", "chosen": "c", "rejected": "c"}', "identical"),
    ('{"prompt": "a", "chosen": "' + "z" * 60 + '", "rejected": "c"}', "more than --max-length 20"),
])
def test_bad_data_is_refused_with_file_and_line(cli, line, msg):
    p = cli / "bad.jsonl"
    write_jsonl(p, synthetic_pairs(3, 2) + [line])
    r = fdpo(*base_args(cli, cli / "runs_bad" / "y", "--steps", 1, "--data", p, "--max-length", 20,
                        "--on-long", "error"), check=False)
    assert r.returncode != 0 and f"{p}:4:" in r.stderr and msg in r.stderr, r.stderr


def test_eval_file_replaces_the_split(cli):
    write_jsonl(cli / "eval.jsonl", synthetic_pairs(10, 42))
    out = cli / "runs_evalfile" / "a"
    r = fdpo(*base_args(cli, out, "--steps", 2, "--eval-every", 2, "--eval-file", cli / "eval.jsonl"))
    assert r.stderr.count("ref cache miss") == 2  # one cache file per data file
    s = summary(out)
    assert s["train_pairs"] == 200 and s["eval_pairs"] == 10 and s["eval_data"]["pairs"] == 10
    assert summary(out, "eval_summary.json")["pairs"] == 10


# ---- resume: fixed options, data hash, non-fixed flags ---------------------------------

def test_resume_refuses_a_changed_divergence(cli):
    out = cli / "runs_fixed" / "js"
    fdpo(*base_args(cli, out, "--divergence", "js", "--steps", 4, "--stop-at", 2, "--eval-every", 0))
    r = fdpo("dpo", "--out", out, "--resume", "--divergence", "fkl", "--threads", 1, "--quiet", check=False)
    assert r.returncode != 0 and "--divergence" in r.stderr and "resume" in r.stderr, r.stderr
    # the same divergence spelled again is fine
    fdpo("dpo", "--out", out, "--resume", "--divergence", "js", "--threads", 1, "--quiet")


def test_resume_refuses_changed_chosen_tokens(cli):
    rows = synthetic_pairs(40, 11)
    data = cli / "resume_data.jsonl"
    write_jsonl(data, rows)
    out = cli / "runs_fixed" / "data"
    fdpo("dpo", "--policy", cli / "pol", "--data", data, "--out", out, "--threads", 1, "--quiet",
         "--batch-size", 4, "--steps", 4, "--stop-at", 2, "--eval-every", 0)
    rows[5]["chosen"] = rows[5]["chosen"][::-1] + "a"    # same prompt, other chosen tokens
    write_jsonl(data, rows)
    r = fdpo("dpo", "--out", out, "--resume", "--threads", 1, "--quiet", check=False)
    assert r.returncode != 0 and r.stderr.endswith(   # 36 of the 40 train, 4 held out
        "fdpo dpo: --resume: the training data differ from the saved run's (36 items then, 36 now): resume needs the "
        "same files and tokenizer\n"), r.stderr


def test_resume_of_an_older_state_without_a_held_out_set_names_the_training_data(cli):
    """A state saved before the held-out set had its own fingerprint (no "eval_data") of a run
    with --eval-fraction 0 has no held-out set to blame: an edited training file is "the
    training data" as before, not "the training data or the held-out data (the --eval-fraction
    0 split ...)". With --eval-fraction 0 that fdpo's fingerprint was the training pairs' alone,
    so deleting "eval_data" from a state saved now makes such a state exactly."""
    rows = synthetic_pairs(40, 12)
    data = cli / "older_state_data.jsonl"
    write_jsonl(data, rows)
    out = cli / "runs_fixed" / "older_no_eval"
    fdpo("dpo", "--policy", cli / "pol", "--data", data, "--out", out, "--threads", 1, "--quiet",
         "--batch-size", 4, "--steps", 4, "--stop-at", 2, "--eval-every", 0, "--eval-fraction", 0)
    state = json.loads((out / "training_state.json").read_text())
    assert state.pop("eval_data")["n_items"] == 0
    (out / "training_state.json").write_text(json.dumps(state))
    for edited, now in ((rows[:4] + rows[5:], 39), (rows[:5] + [dict(rows[5], chosen=rows[5]["chosen"] + "a")] + rows[6:], 40)):
        write_jsonl(data, edited)
        r = fdpo("dpo", "--out", out, "--resume", "--threads", 1, "--quiet", check=False)
        assert r.returncode != 0 and r.stderr.endswith(
            f"fdpo dpo: --resume: the training data differ from the saved run's (40 items then, {now} now): resume "
            "needs the same files and tokenizer\n"), r.stderr
    write_jsonl(data, rows)   # the same data: it resumes
    fdpo("dpo", "--out", out, "--resume", "--threads", 1, "--quiet")


# ---- the reference cache is checked, and lives where --ref-cache-dir says ----------------

def fnv1a64(data):
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def test_damaged_ref_cache_is_recomputed(cli):
    runs = cli / "runs_damaged"
    cache = cli / "my_cache"  # not the default .fdpo-cache beside OUT
    args = ["--steps", 2, "--eval-every", 2, "--seed", 3, "--ref-cache-dir", cache]
    r = fdpo(*base_args(cli, runs / "clean", *args))
    path = summary(runs / "clean")["reference"]["cache_file"]
    assert os.path.dirname(path) == str(cache) and os.path.exists(path)
    assert not (runs / ".fdpo-cache").exists()
    clean = metrics(runs / "clean")
    want, meta = st.load(path)
    # 1. one flipped byte in the data: the checksum no longer matches
    raw = bytearray(open(path, "rb").read())
    raw[-3] ^= 0x40
    open(path, "wb").write(bytes(raw))
    r = fdpo(*base_args(cli, runs / "flipped", *args))
    assert "ref cache unusable" in r.stderr and "checksum" in r.stderr and "warning" in r.stderr, r.stderr
    assert metrics(runs / "flipped") == [dict(m, tokens_per_sec=m2["tokens_per_sec"]) if "tokens_per_sec" in m else m
                                         for m, m2 in zip(clean, metrics(runs / "flipped"))]
    got, _ = st.load(path)
    assert np.array_equal(got["logps"], want["logps"])  # rewritten with the right values
    # 2. a NaN with a checksum that matches it: the value check catches it
    bad = np.array(want["logps"], dtype=np.float64)
    bad[3, 1] = float("nan")
    meta = dict(meta, checksum="%016x" % fnv1a64(bad.tobytes()))
    st.save(path, {"logps": bad}, metadata=meta)
    r = fdpo(*base_args(cli, runs / "nan", *args))
    assert "ref cache unusable" in r.stderr and "logps[3][1] is nan" in r.stderr, r.stderr
    for a, b in zip(clean, metrics(runs / "nan")):
        a, b = dict(a), dict(b)
        a.pop("tokens_per_sec", None)
        b.pop("tokens_per_sec", None)
        assert a == b
    got, _ = st.load(path)
    assert np.array_equal(got["logps"], want["logps"])


def test_no_usable_pairs_says_why(cli):
    rows = [{"prompt": "x", "chosen": "", "rejected": "y"}, {"prompt": "x", "chosen": "s", "rejected": "s"},
            {"prompt": "x", "chosen": "t", "rejected": "t"}, {"prompt": "p", "chosen": "z" * 80, "rejected": "q"}]
    write_jsonl(cli / "unusable.jsonl", rows)
    r = fdpo("dpo", "--policy", cli / "pol", "--data", cli / "unusable.jsonl", "--out", cli / "runs_unusable",
             "--threads", 1, "--steps", 1, "--bad-pairs", "skip", "--on-long", "skip", "--max-length", 20,
             check=False)
    assert r.returncode != 0 and "no usable preference pairs" in r.stderr
    for part in ("4 lines read", "4 skipped", "1 empty completion", "2 identical chosen/rejected", "1 too long"):
        assert part in r.stderr, (part, r.stderr)


def test_resume_refuses_a_changed_eval_file(cli):
    data = cli / "resume_eval.jsonl"
    write_jsonl(data, synthetic_pairs(6, 21))
    out = cli / "runs_fixed" / "evalfile"
    fdpo(*base_args(cli, out, "--steps", 4, "--stop-at", 2, "--eval-every", 2, "--eval-file", data))
    rows = synthetic_pairs(6, 21)
    rows[2]["chosen"] = "uuuuu"  # same prompts, another chosen answer
    write_jsonl(data, rows)
    r = fdpo("dpo", "--out", out, "--resume", "--threads", 1, "--quiet", check=False)
    # the set that changed is named: "the training data differ ... (200 items then, 200 now)"
    # spoke of the 200 training pairs, which had not changed
    assert r.returncode != 0 and r.stderr.endswith(
        f"fdpo dpo: --resume: the held-out data (--eval-file {data}) differ from the saved run's (6 items then, 6 "
        "now): resume needs the same files and tokenizer\n"), r.stderr


def _one_step_pytorch(cli, rows, lr, beta):
    """One float64 PyTorch step of `fdpo dpo` over all rows, each weighted once: TRL's sigmoid
    loss mean over the pairs against ref2, clip_grad_norm_(1.0), AdamW (decay 0.01 on the 2-D
    weights). -> (loss, grad norm, parameters before, parameters after)."""
    torch.set_default_dtype(torch.float64)
    try:
        pol, ref = GPT2(**TINY), GPT2(**TINY)
        pol.load_hf(str(cli / "pol"))
        ref.load_hf(str(cli / "ref2"))
        pol.double()
        ref.double()
        pairs = [tokenize_pair(r, TINY["n_positions"], 0) for r in rows]
        rl = ref_model_logps(ref, pairs)
        named = pol.named()
        opt = torch.optim.AdamW([{"params": [p for p in named.values() if p.dim() == 2], "weight_decay": 0.01},
                                 {"params": [p for p in named.values() if p.dim() != 2], "weight_decay": 0.0}],
                                lr=lr, betas=(0.9, 0.999), eps=1e-8)
        margins = torch.stack([(completion_logps(pol, P, C)[0].sum() - a) - (completion_logps(pol, P, R)[0].sum() - b)
                               for (P, C, R), (a, b) in zip(pairs, rl)])
        loss = -torch.nn.functional.logsigmoid(beta * margins).mean()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(list(named.values()), 1.0)
        before = {k: v.detach().clone() for k, v in named.items()}
        opt.step()
        return loss.item(), norm.item(), before, {k: v.detach().clone() for k, v in named.items()}
    finally:
        torch.set_default_dtype(torch.float32)


def test_a_step_takes_each_pair_once_when_the_batch_exceeds_the_data(cli):
    """3 pairs at --batch-size 8 (and at 2 x --grad-accum 4: micro-batches of 2 and 1) are one
    step over the 3 pairs, each weighted once, as one float64 PyTorch step computes it: the
    logged loss and gradient norm, and the weights after AdamW. The trainer's order used to
    wrap into further epochs to fill the 8 places (3 + 3 + 2: pairs weighted 3/8, 3/8, 2/8,
    epoch 2.67 after one step). A --batch-size of 10^8 runs the same step (it used to build
    a 10^8-pair batch), and says once that the step was capped, naming the flags and --data."""
    rows = synthetic_pairs(3, 31)
    write_jsonl(cli / "three.jsonl", rows)
    lr, beta = 1e-2, 0.1
    loss, norm, before, after = _one_step_pytorch(cli, rows, lr, beta)
    runs = cli / "runs_three"
    common = ["--model", cli / "pol", "--ref", cli / "ref2", "--data", cli / "three.jsonl", "--threads", 1,
              "--eval-fraction", 0, "--lr", lr, "--beta", beta, "--schedule", "constant"]
    for name, flags in (("b8", ["--batch-size", 8]), ("b2x4", ["--batch-size", 2, "--grad-accum", 4]),
                        ("huge", ["--batch-size", 100000000])):
        r = fdpo("dpo", *common, *flags, "--out", runs / name, timeout=60)
        note = f"x --grad-accum {4 if name == 'b2x4' else 1} exceeds the 3 examples of {cli / 'three.jsonl'}"
        assert r.stderr.count(note) == 1, r.stderr
        [m] = metrics(runs / name)
        assert (m["step"], m["epoch"]) == (1, 1), m   # one step, one pass over the pairs
        assert abs(m["loss"] - loss) < 1e-5 * loss and abs(m["grad_norm"] - norm) < 1e-5 * norm, (name, m, loss, norm)
        got, _ = st.load(str(runs / name / "model.safetensors"))
        diff = torch.cat([(torch.from_numpy(got[k]).double() - v).abs().flatten() for k, v in after.items()]) / lr
        moved = torch.cat([(v - before[k]).abs().flatten() for k, v in after.items()]) / lr
        # float32 vs float64: where |g| is near eps the AdamW update g / (|g| + eps) is
        # sensitive to the gradient's last bits, hence the loose max
        assert moved.median() > 0.5
        assert diff.median() < 1e-5 and diff.quantile(0.99) < 1e-3 and diff.max() < 2e-2, name
    a, _ = st.load(str(runs / "b8" / "model.safetensors"))
    b, _ = st.load(str(runs / "huge" / "model.safetensors"))
    assert all(np.array_equal(a[k], b[k]) for k in a)   # the same micro-batch of 3: the same bits


def test_capped_steps_count_epochs_and_resume_exactly(cli):
    """--epochs 3 over 3 pairs at --batch-size 8 is 3 steps (an epoch is one step), the epoch
    metric counts them, and a run stopped after step 1 resumes to the same bits."""
    write_jsonl(cli / "three_r.jsonl", synthetic_pairs(3, 32))
    runs = cli / "runs_three_resume"
    common = ["--model", cli / "pol", "--data", cli / "three_r.jsonl", "--threads", 1, "--eval-fraction", 0,
              "--lr", "1e-2", "--epochs", 3, "--batch-size", 8, "--quiet"]
    fdpo("dpo", *common, "--out", runs / "straight")
    assert [(m["step"], m["epoch"]) for m in metrics(runs / "straight")] == [(1, 1), (2, 2), (3, 3)]
    fdpo("dpo", *common, "--out", runs / "cut", "--stop-at", 1)
    fdpo("dpo", "--out", runs / "cut", "--resume", "--threads", 1, "--quiet")
    assert metrics(runs / "cut") == [dict(m, tokens_per_sec=n["tokens_per_sec"])
                                     for m, n in zip(metrics(runs / "straight"), metrics(runs / "cut"))]
    a, _ = st.load(str(runs / "straight" / "model.safetensors"))
    b, _ = st.load(str(runs / "cut" / "model.safetensors"))
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("fraction", [0.27, 0.15])
def test_the_held_out_count_is_the_rounded_fraction(cli, tmp_path, fraction):
    """--eval-fraction f holds out round(f n) pairs (docs/dpo.md): 10 pairs at 0.27 -> 3 and at
    0.15 -> 2 (truncating, 2 and 1, passed every test; mutation review). The split is the one
    function every trainer uses."""
    write_jsonl(tmp_path / "ten.jsonl", synthetic_pairs(10, 1))
    fdpo("dpo", "--policy", cli / "pol", "--data", tmp_path / "ten.jsonl", "--out", tmp_path / "o", "--threads", 1,
         "--steps", 1, "--batch-size", 2, "--eval-fraction", fraction, "--quiet")
    want = math.floor(fraction * 10 + 0.5)
    assert json.loads((tmp_path / "o" / "eval_summary.json").read_text())["pairs"] == want
    assert json.loads((tmp_path / "o" / "data_summary.json").read_text())["eval_pairs"] == want


# ---- resume: the reference's weights (read again from its path) ---------------------------

def _reference_runs(cli, tmp):
    """(name, command line) of every trainer with a frozen reference read from a path: the
    path is tmp/"base" (--model, or --ref where the command is given one)."""
    base, pol = tmp / "base", cli / "pol"
    write_jsonl(tmp / "kto.jsonl", [{"prompt": r["prompt"], "completion": r["chosen"] if i % 2 else r["rejected"],
                                     "label": bool(i % 2)} for i, r in enumerate(synthetic_pairs(16, 5))])
    (tmp / "prompts.txt").write_text("".join(f"prompt {i}:\n" for i in range(4)))
    write_jsonl(tmp / "sft.jsonl", [{"prompt": r["prompt"], "completion": r["chosen"]} for r in synthetic_pairs(16, 6)])
    common = ["--threads", 1, "--quiet", "--lr", "1e-3", "--steps", 4]
    dpo_args = ["--data", cli / "data.jsonl", "--batch-size", 4, "--eval-every", 0, *common]
    rl_args = ["--data", tmp / "prompts.txt", "--reward", "length", "--n", 2, "--prompts-per-step", 2,
               "--max-new-tokens", 4, *common]
    return [
        ("dpo", ["dpo", "--model", base, *dpo_args]),                       # the cached reference is --model
        ("dpo-ref-live", ["dpo", "--model", pol, "--ref", base, "--ref-live", *dpo_args]),
        ("dpo-lora-base", ["dpo", "--model", base, "--lora-r", 2, "--ref-live", *dpo_args]),  # the base, adapters off
        ("kto", ["kto", "--model", pol, "--ref", base, "--data", tmp / "kto.jsonl", "--batch-size", 4, *common]),
        ("rl", ["rl", "--model", base, *rl_args]),
        # not a reference: the frozen base under the adapters, which the resumed steps train on
        ("sft-lora-base", ["sft", "--model", base, "--lora-r", 2, "--data", tmp / "sft.jsonl", "--batch-size", 4,
                           "--seq-len", 32, "--eval-fraction", 0, *common]),
        ("online-step", ["online", "--mode", "step", "--model", pol, "--ref", base, "--data", tmp / "prompts.txt",
                         "--reward", "length", "--n", 2, "--prompts-per-round", 2, "--max-new-tokens", 4, *common]),
    ]


@pytest.mark.parametrize("name", ["dpo", "dpo-ref-live", "dpo-lora-base", "kto", "rl", "online-step", "sft-lora-base"])
def test_resume_refuses_a_reference_retrained_in_place(cli, tmp_path, name):
    """The reference (--ref, else --model; a LoRA run's base) is read again at every start:
    a resume after it was re-trained in place (`pretrain --out base --resume`, `--overwrite`)
    continued silently against other weights. The state records its weight hash; the resume
    is refused naming the flag, and goes on once the original weights are back, ending as the
    uninterrupted run. A LoRA run's base (sft too) is checked the same way."""
    import shutil
    base = tmp_path / "base"
    shutil.copytree(cli / "pol", base)
    cmd = dict(_reference_runs(cli, tmp_path))[name]
    flag = "--ref" if "--ref" in cmd and cmd[cmd.index("--ref") + 1] == base else "--model"
    out = tmp_path / "run"
    fdpo(*cmd, "--out", tmp_path / "straight")
    fdpo(*cmd, "--out", out, "--stop-at", 2)
    state = json.loads((out / "training_state.json").read_text())
    shutil.copy(cli / "ref2" / "model.safetensors", base / "model.safetensors")   # re-trained in place
    r = fdpo(*cmd, "--out", out, "--resume", check=False)
    # (a LoRA base is named as the adapter records it: absolute)
    assert r.returncode != 0 and f"{flag} {base}" in r.stderr and "differ" in r.stderr, r.stderr
    assert json.loads((out / "training_state.json").read_text()) == state   # nothing written
    shutil.copy(cli / "pol" / "model.safetensors", base / "model.safetensors")    # the original again
    fdpo(*cmd, "--out", out, "--resume")
    a, _ = st.load(str(tmp_path / "straight" / ("adapter_model.safetensors" if "lora" in name else "model.safetensors")))
    b, _ = st.load(str(out / ("adapter_model.safetensors" if "lora" in name else "model.safetensors")))
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_resume_of_a_state_without_the_reference_hash(cli, tmp_path):
    """training_state.json of an older fdpo has no ref_hash: it resumes (unchecked) and ends
    as the uninterrupted run."""
    cmd = base_args(cli, tmp_path / "straight", "--steps", 4, "--eval-every", 0)
    fdpo(*cmd)
    out = tmp_path / "cut"
    fdpo(*base_args(cli, out, "--steps", 4, "--eval-every", 0, "--stop-at", 2))
    p = out / "training_state.json"
    state = json.loads(p.read_text())
    assert len(state.pop("ref_hash")) == 16
    p.write_text(json.dumps(state))
    fdpo("dpo", "--out", out, "--resume", "--threads", 1, "--quiet", "--batch-size", 8, "--lr", "1e-3")
    a, _ = st.load(str(tmp_path / "straight" / "model.safetensors"))
    b, _ = st.load(str(out / "model.safetensors"))
    for k in a:
        assert np.array_equal(a[k], b[k]), k
