"""The VALUE of every logged f-DPO metric against PyTorch, not only its name.

1. `fdpo-harness dpo-grad` (fdpo_dpo_step) for every divergence x loss x SFT case: loss,
   pref_loss, sft_nll, rewards/*, logps/*, logits/*, scores/* against the float64 PyTorch
   GPT-2 of test_dpo.py (a swapped chosen/rejected or a missing beta changes a value).
2. `fdpo dpo` end to end: metrics.jsonl of the first steps (one batch = the whole data, so
   the step's pairs do not depend on the shuffle) against the same reference, plus
   grad_norm (the pre-clip L2 norm of torch.autograd's gradient), learning_rate (Hugging
   Face's linear-with-warmup LambdaLR factor, written out below) and epoch (pairs seen / pairs),
   and the held-out eval_* metrics (--eval-file) at step 0 and step 1.

Tolerance: 1e-5 relative (fdpo runs float32, the reference float64; the differences seen
are ~1e-7)."""
import json
import os

import numpy as np
import torch

from dpo_common import completion_logps, fdpo, pair_loss, save_byte_tokenizer, score, tokenize_pair, write_jsonl
from fdpo_ref.gpt2 import GPT2
from test_dpo import CFG, MAX_LEN, MAX_PROMPT, ROWS, all_cases, ref_model_logps, run_fdpo

torch.set_num_threads(1)

TOL = 1e-5


def reference_metrics(policy, pairs, case, ref_logps):
    """Every metric fdpo logs for one step over `pairs`, from their definitions
    (docs/dpo.md, TRL's DPOTrainer names), and the step objective's gradients."""
    div, loss, beta, eps, gamma, sft = case
    mean = loss in ("ipo", "simpo")  # per-token means (TRL's IPO; SimPO)
    lws, lls, lpws, lpls, sws, sls, losses = [], [], [], [], [], [], []
    logits_w, logits_l = [], []
    nll, n_chosen = 0.0, 0
    for k, (P, C, R) in enumerate(pairs):
        tw, gw = completion_logps(policy, P, C)
        tl, gl = completion_logps(policy, P, R)
        nw, nl = (len(tw), len(tl)) if mean else (1, 1)
        rw, rl = (0.0, 0.0) if loss == "simpo" else ref_logps[k]
        lw, ll = (tw.sum() - rw) / nw, (tl.sum() - rl) / nl
        losses.append(pair_loss(div, loss, beta, eps, gamma, lw, ll))
        lws.append(lw)
        lls.append(ll)
        lpws.append(tw.sum() / nw)
        lpls.append(tl.sum() / nl)
        if loss != "simpo":
            sws.append(beta * score(div, lw))
            sls.append(beta * score(div, ll))
        logits_w.append(gw)
        logits_l.append(gl)
        nll = nll - tw.sum()
        n_chosen += len(tw)
    lw, ll = torch.stack(lws), torch.stack(lls)
    pref = torch.stack(losses).mean()
    sft_nll = nll / n_chosen
    objective = pref + sft * sft_nll
    m = {
        "loss": objective, "pref_loss": pref, "sft_nll": sft_nll,
        "rewards/chosen": beta * lw.mean(), "rewards/rejected": beta * ll.mean(),
        "rewards/margins": beta * (lw - ll).mean(),
        "rewards/accuracies": ((lw > ll).double() + 0.5 * (lw == ll).double()).mean(),
        "logps/chosen": torch.stack(lpws).mean(), "logps/rejected": torch.stack(lpls).mean(),
        "logits/chosen": torch.cat(logits_w).mean(), "logits/rejected": torch.cat(logits_l).mean(),
    }
    if loss != "simpo":
        m["scores/chosen"] = torch.stack(sws).mean()
        m["scores/rejected"] = torch.stack(sls).mean()
    return {k: v.item() for k, v in m.items()}, objective


def assert_metrics(got, want, where):
    for key, w in want.items():
        assert key in got, (where, key)
        assert abs(got[key] - w) <= TOL * max(1.0, abs(w)), (where, key, got[key], w)


def test_every_logged_metric_value_every_case(tmp_path):
    policy, ref = GPT2(**CFG, seed=11), GPT2(**CFG, seed=12)
    for m, name in ((policy, "policy"), (ref, "ref")):
        m.save_hf(str(tmp_path / name))
        save_byte_tokenizer(str(tmp_path / name))
    write_jsonl(tmp_path / "data.jsonl", ROWS)
    pairs = [tokenize_pair(r, MAX_LEN, MAX_PROMPT) for r in ROWS]
    policy.double()
    ref.double()
    ref_lp = ref_model_logps(ref, pairs)
    cases = all_cases()
    res, _ = run_fdpo(tmp_path, "metrics", cases, "--ref", tmp_path / "ref", "--layout", "shared")
    with torch.no_grad():
        for i, case in enumerate(cases):
            want, _ = reference_metrics(policy, pairs, case, ref_lp)
            assert_metrics(res[i], want, case)
            if case[1] == "simpo":
                assert "scores/chosen" not in res[i]


# ---- end to end: metrics.jsonl of `fdpo dpo` ----

TINY = dict(vocab_size=257, n_positions=48, n_embd=32, n_layer=2, n_head=4)
E2E_ROWS = [
    {"prompt": "abc:", "chosen": "aeiou", "rejected": "xyzq"},
    {"prompt": "def:", "chosen": "ouiea", "rejected": "wqzyxw"},
    {"prompt": "ghe:", "chosen": "eeio", "rejected": "zz"},
    {"prompt": "bad:", "chosen": "uuaio!", "rejected": "qwxyz qw"},
    {"prompt": "cab:", "chosen": "oi", "rejected": "xq"},
    {"prompt": "fed:", "chosen": "aaiiu", "rejected": "yzw"},
]
EVAL_ROWS = [
    {"prompt": "hid:", "chosen": "aoi", "rejected": "zqxw"},
    {"prompt": "den:", "chosen": "uea eo", "rejected": "wy"},
    {"prompt": "eva:", "chosen": "iiu", "rejected": "qqzx yz"},
]
LR, STEPS, WARMUP = 1e-3, 4, 2


def hf_linear_with_warmup(step):
    """transformers.get_linear_schedule_with_warmup's LambdaLR factor times the lr."""
    if step < WARMUP:
        return LR * step / max(1, WARMUP)
    return LR * max(0.0, (STEPS - step) / max(1, STEPS - WARMUP))


def test_fdpo_dpo_metrics_jsonl_values(tmp_path):
    policy, ref = GPT2(**TINY, seed=5), GPT2(**TINY, seed=6)
    for m, name in ((policy, "pol"), (ref, "ref")):
        m.save_hf(str(tmp_path / name))
        save_byte_tokenizer(str(tmp_path / name))
    write_jsonl(tmp_path / "data.jsonl", E2E_ROWS)
    write_jsonl(tmp_path / "eval.jsonl", EVAL_ROWS)
    n = len(E2E_ROWS)
    for case in [("alpha:0.5", "sigmoid", 0.3, 0.0, 0.0, 0.5), ("js", "ipo", 0.4, 0.0, 0.0, 0.0)]:
        div, loss, beta, _, _, sft = case
        out = tmp_path / f"run_{loss}"
        fdpo("dpo", "--policy", tmp_path / "pol", "--ref", tmp_path / "ref", "--data", tmp_path / "data.jsonl",
             "--out", out, "--threads", 1, "--quiet", "--batch-size", n, "--steps", STEPS, "--lr", LR,
             "--schedule", "linear", "--warmup-steps", WARMUP, "--eval-file", tmp_path / "eval.jsonl", "--eval-every", 1,
             "--divergence", div, "--loss", loss, "--beta", beta, "--sft-weight", sft, "--seed", 3)
        logged = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
        assert [m["step"] for m in logged] == list(range(0, STEPS + 1))
        initial, logged = logged[0], logged[1:]
        pol = GPT2(**TINY)
        pol.load_hf(str(tmp_path / "pol"))
        pol.double()
        rf = GPT2(**TINY)
        rf.load_hf(str(tmp_path / "ref"))
        rf.double()
        pairs = [tokenize_pair(r, TINY["n_positions"], 0) for r in E2E_ROWS]
        eval_pairs = [tokenize_pair(r, TINY["n_positions"], 0) for r in EVAL_ROWS]
        with torch.no_grad():
            ev, _ = reference_metrics(pol, eval_pairs, case, ref_model_logps(rf, eval_pairs))
        want_eval = {"eval_" + k: v for k, v in ev.items() if k not in ("pref_loss", "sft_nll")}
        if sft > 0:
            want_eval["eval_nll_loss"] = ev["sft_nll"]
        # held-out metrics before training (step 0) and after step 1 (lr 0: same weights)
        assert_metrics(initial, want_eval, (case, 0))
        assert_metrics(logged[0], want_eval, (case, 1))
        want, objective = reference_metrics(pol, pairs, case, ref_model_logps(rf, pairs))
        grads = torch.autograd.grad(objective, list(pol.named().values()))
        want["grad_norm"] = torch.sqrt(sum((g * g).sum() for g in grads)).item()
        # the warmup's first lr is 0, so AdamW leaves the weights alone and step 2 sees the
        # same policy as step 1: both must match the reference at the initial weights
        want.pop("pref_loss")
        nll = want.pop("sft_nll")
        if sft > 0:
            want["nll_loss"] = nll  # metrics.jsonl logs the SFT term only when it is on
        for k in (0, 1):
            assert_metrics(logged[k], want, (case, logged[k]["step"]))
            assert ("nll_loss" in logged[k]) == (sft > 0)
        for k, m in enumerate(logged):
            assert abs(m["learning_rate"] - hf_linear_with_warmup(k)) <= 1e-12, (k, m["learning_rate"])
            assert abs(m["epoch"] - (k + 1) * n / n) <= 1e-12, (k, m["epoch"])
        assert logged[2]["loss"] != logged[1]["loss"]  # the second update (lr > 0) moved the weights
        assert np.isfinite([m["grad_norm"] for m in logged]).all()
