"""fdpo rl: one RLOO and one GRPO step's loss, advantages and gradients on FIXED samples
against PyTorch (tests/py/fdpo_ref/gpt2.py), with the shaped reward r - beta f'(pi/pi_ref)
and the advantages written here from TRL's formulas."""
import json
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from dpo_common import TIMING, assert_same_run, harness, rel_err, state_files, untimed_metrics  # noqa: E402
from fdpo_ref import fdiv  # noqa: E402
from fdpo_ref import safetensors as st  # noqa: E402
from fdpo_ref.gpt2 import GPT2  # noqa: E402

@pytest.fixture(autouse=True)
def float64_default():
    """float64 references here, without changing the default for the test files run after this one"""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def fprime(div, u):
    """f'(u) on a torch tensor, from the tests' independent table (fdpo_ref.fdiv)"""
    return torch.as_tensor(fdiv.fprime(div, u.detach().numpy()), dtype=u.dtype)


def random_groups(rng, V, k, prompt_lens, completion_len, ref_per_token, ref_noise):
    """Samples for an RL step: a random prompt of each length in prompt_lens, k random completions
    of it (completion j of prompt p: completion_len(p, j) tokens), each with a N(0, 1) reward and
    a reference log-prob ref_per_token * length + N(0, ref_noise^2)."""
    samples = []
    for p, n in enumerate(prompt_lens):
        prompt = [int(x) for x in rng.integers(0, V, size=n)]
        for j in range(k):
            comp = [int(x) for x in rng.integers(0, V, size=completion_len(p, j))]
            samples.append({"prompt": prompt, "completion": comp, "reward": float(rng.normal()),
                            "ref_logp": float(ref_per_token * len(comp) + rng.normal() * ref_noise)})
    return samples


def completion_logp(model, prompt, comp):
    seq = torch.tensor(prompt + comp[:-1])
    logits = model(seq)
    lp = F.log_softmax(logits, -1)
    P = len(prompt)
    return sum(lp[P - 1 + j, comp[j]] for j in range(len(comp)))


def fprime_capped(div, l):
    """f'(e^l) as docs/rl.md says the advantages take it: fkl's -e^(-l) and alpha's
    (1 - e^(-A l))/A with the exponent capped at 64 (the f-DPO derivative's cap); rkl, js as they are"""
    l = l.detach().numpy()
    if div == "fkl":
        return torch.as_tensor(-np.exp(np.minimum(-l, 64.0)))
    if div.startswith("alpha:"):
        A = float(div[6:])
        return torch.as_tensor((1 - np.exp(np.minimum(-A * l, 64.0))) / A)
    return fprime(div, torch.exp(torch.as_tensor(l)))


def advantages_mp(div, beta, rewards, l, algo, k, eps=1e-4):
    """The advantages docs/rl.md gives a group past f''s e^64 cap, in mpmath at 1200 digits (no
    exponent capped: e^1000 is exact enough there): TRL's RLOO / GRPO of the shaped rewards
    r - beta f'(e^l); RLOO's times e^-(m - 64), m the group's largest exponent of f' (-l fkl,
    -A l alpha) where m > 64; GRPO's as they are (its eps is scaled with the group)."""
    import mpmath as mp
    with mp.workdps(1200):
        return _advantages_mp(mp, div, beta, rewards, l, algo, k, eps)


def _advantages_mp(mp, div, beta, rewards, l, algo, k, eps):
    A = 1.0 if div == "fkl" else float(div[6:])
    out = []
    for g in range(len(rewards) // k):
        r = [mp.mpf(x) for x in rewards[g * k:(g + 1) * k]]
        x = [-A * mp.mpf(v) for v in l[g * k:(g + 1) * k]]   # exact: A l in doubles is not what fdpo needs
        shaped = [ri + beta * mp.exp(xi) / A - (0 if div == "fkl" else beta / A) for ri, xi in zip(r, x)]
        m = max(x)
        scale = mp.exp(-(m - 64)) if m > 64 else mp.mpf(1)
        mean = sum(shaped) / k
        if algo == "rloo":
            out += [(si - (sum(shaped) - si) / (k - 1)) * scale for si in shaped]
        else:
            sd = mp.sqrt(sum((si - mean) ** 2 for si in shaped) / (k - 1))
            out += [(si - mean) / (sd + eps) for si in shaped]
    return np.array([float(v) for v in out])


def reference_step(model, samples, algo, div, beta, k, eps=1e-4, fprime_of_l=None, adv_of_l=None):
    logp = torch.stack([completion_logp(model, s["prompt"], s["completion"]) for s in samples])
    l = logp.detach() - torch.tensor([s["ref_logp"] for s in samples])
    if adv_of_l is not None:   # advantages given from l (advantages_mp)
        adv = torch.as_tensor(adv_of_l(l.numpy()))
    else:
        fp = fprime_of_l(div, l) if fprime_of_l else fprime(div, torch.exp(l))
        shaped = torch.tensor([s["reward"] for s in samples]) - beta * fp
        g = shaped.view(-1, k)
        if algo == "rloo":  # TRL RLOOTrainer: baseline = mean of the other k - 1
            adv = g - (g.sum(1, keepdim=True) - g) / (k - 1)
        else:  # TRL GRPOTrainer: (x - mean) / (std + 1e-4), torch.std (unbiased)
            adv = (g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + eps)
        adv = adv.reshape(-1)
    loss = -(adv * logp).mean()
    model.zero_grad()
    loss.backward()
    grads = {n: p.grad.detach().numpy().copy() for n, p in model.named().items()}
    return loss.item(), adv.numpy(), grads


@pytest.mark.parametrize("algo,div,head", [("rloo", "rkl", "one"), ("rloo", "alpha:0.5", "one"), ("grpo", "fkl", "one"),
                                           ("grpo", "js", "one"), ("rloo", "rkl", "kept"), ("grpo", "js", "kept"),
                                           ("rloo", "rkl", "fused"), ("grpo", "js", "fused")])
def test_step_matches_pytorch(tmp_path, monkeypatch, algo, div, head):
    """one: V = 11 fits one chunk of the fused head, whose logits the backward reuses;
    kept: chunks of 4 columns (3 chunks), kept for the backward within the step's logits
    budget (fdpo_batch.head_keep_max_bytes); fused: the same chunks with the budget set to
    1 byte, so the backward recomputes each chunk's logits"""
    fused = head == "fused"
    if head != "one":
        monkeypatch.setenv("FDPO_LMHEAD_CHUNK", "4")
    torch.manual_seed(0)
    V, k = 11, 3
    model = GPT2(V, 16, 8, 2, 2, seed=5)
    model.save_hf(str(tmp_path / "policy"))
    rng = np.random.default_rng(1)
    samples = random_groups(rng, V, k, [2, 3], lambda p, j: 1 + (j + p) % 4, -2.4, 0.3)
    spec = {"algo": algo, "divergence": div, "beta": 0.3, "k": k, "grpo_eps": 1e-4, "samples": samples}
    if fused:
        spec["logits_max_bytes"] = 1
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    harness("rl-grad", "--model", tmp_path / "policy", "--spec", tmp_path / "spec.json", "--out", tmp_path / "out")
    res = json.load(open(tmp_path / "out" / "result.json"))
    grads, _ = st.load(str(tmp_path / "out" / "grads.safetensors"))
    loss, adv, g_ref = reference_step(model, samples, algo, div, 0.3, k)
    assert abs(res["loss"] - loss) <= 1e-5 * max(abs(loss), 1e-3), (res["loss"], loss)
    assert rel_err(res["advantages"], adv) < 1e-5
    for name, g in g_ref.items():
        assert rel_err(grads[name], g) < 1e-4, name


def rl_grad_against_mpmath(tmp_path, model, samples, algo, div, beta, k):
    """fdpo's rl-grad step on SAMPLES (result.json, gradients) and the float64 reference step
    whose advantages are mpmath's of the uncapped shaped rewards (advantages_mp)"""
    spec = {"algo": algo, "divergence": div, "beta": beta, "k": k, "grpo_eps": 1e-4, "samples": samples}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    harness("rl-grad", "--model", tmp_path / "policy", "--spec", tmp_path / "spec.json", "--out", tmp_path / "out")
    res = json.load(open(tmp_path / "out" / "result.json"))
    grads, _ = st.load(str(tmp_path / "out" / "grads.safetensors"))
    rewards = [s["reward"] for s in samples]
    loss, adv, g_ref = reference_step(model, samples, algo, div, beta, k,
                                      adv_of_l=lambda l: advantages_mp(div, beta, rewards, l, algo, k))
    return res, grads, loss, adv, g_ref


@pytest.mark.parametrize("algo,div,far", [("rloo", "fkl", [-89.0]), ("rloo", "fkl", [-1000.0]), ("rloo", "alpha:0.5", [-200.0]),
                                          ("grpo", "fkl", [-70.0, -100.0])])
def test_sample_far_below_the_reference_keeps_the_gradient_finite(tmp_path, algo, div, far):
    """A sample 89 nats below the reference (fkl; alpha:0.5 at 200): f'(u) = -e^(-l) took the
    score's exponent cap, 88.72, so the RLOO advantage was beta 3.4e38 and the step's gradient
    inf ("gradient norm is inf", whatever --lr). The advantages now take f' with the exponent
    capped at 64, as the f-DPO derivative does (docs/rl.md), the group's largest exponent
    factored out: reference, TRL's RLOO/GRPO of the uncapped shaped reward in mpmath, RLOO's
    times e^-(m - 64) (advantages_mp). With one sample past the cap RLOO's is the per-sample
    cap's to rounding; GRPO's with two (70 and 100 down) no longer tie them, as capping each did."""
    torch.manual_seed(0)
    V, k = 11, len(far) + 1
    model = GPT2(V, 16, 8, 2, 2, seed=5)
    model.save_hf(str(tmp_path / "policy"))
    samples = random_groups(np.random.default_rng(2), V, k, [2, 3], lambda p, j: 2 + j, 0.0, 0.0)
    for i, s in enumerate(samples):   # the first samples of each group `far` nats down, the last at the reference
        logp = float(completion_logp(model, s["prompt"], s["completion"]))
        s["ref_logp"] = logp - (far[i % k] if i % k < len(far) else 0.0)
    res, grads, loss, adv, g_ref = rl_grad_against_mpmath(tmp_path, model, samples, algo, div, 1.0, k)
    assert rel_err(res["advantages"], adv) < 1e-5, (res["advantages"], adv)
    assert abs(res["loss"] - loss) <= 1e-5 * abs(loss), (res["loss"], loss)
    for name, g in g_ref.items():
        assert np.all(np.isfinite(grads[name])), name
        assert rel_err(grads[name], g) < 1e-4, name


@pytest.mark.parametrize("algo,div,far", [("rloo", "fkl", [-100.0, -101.5, -103.0]), ("grpo", "fkl", [-100.0, -101.5, -103.0]),
                                          ("rloo", "alpha:0.5", [-300.0, -302.0, -301.0]),
                                          ("grpo", "fkl", [-1000.0, -997.0, -1000.5]), ("rloo", "fkl", [-700.0, -700.0, -698.0])])
def test_group_wholly_past_the_cap_keeps_its_advantages(tmp_path, algo, div, far):
    """A group whose samples are all past f''s e^64 cap (fkl more than 64 nats below the
    reference, alpha:0.5 128): capping each sample gave them all beta e^64, so the group's
    advantages were exactly 0 and it taught nothing. The group's largest exponent m is now
    factored out (docs/rl.md): reference, TRL's RLOO/GRPO of the uncapped shaped rewards in
    mpmath at 1200 digits, RLOO's times e^-(m - 64) (advantages_mp); the largest fkl case
    (e^1000) is past float64's range, where only the factored form exists."""
    torch.manual_seed(0)
    V, k = 11, len(far)
    model = GPT2(V, 16, 8, 2, 2, seed=5)
    model.save_hf(str(tmp_path / "policy"))
    samples = random_groups(np.random.default_rng(3), V, k, [2, 3], lambda p, j: 2 + j, 0.0, 0.0)
    for i, s in enumerate(samples):   # every sample of each group far below the reference
        s["ref_logp"] = float(completion_logp(model, s["prompt"], s["completion"])) - far[i % k]
    res, grads, loss, adv, g_ref = rl_grad_against_mpmath(tmp_path, model, samples, algo, div, 0.05, k)
    assert np.all(np.abs(adv) > 0)   # the reference: every advantage nonzero (the old rule gave 0)
    assert rel_err(res["advantages"], adv) < 1e-5, (res["advantages"], adv)
    scale = float(np.abs(adv).max())
    assert abs(res["loss"] - loss) <= 1e-5 * scale, (res["loss"], loss)
    for name, g in g_ref.items():
        assert np.all(np.isfinite(grads[name])), name
        assert rel_err(grads[name], g) < 1e-4, name


def f_over_u(div, l):
    """f(u)/u at u = e^l (DESIGN.md's table, fdpo_ref.fdiv): D_f(pi || pi_ref) = E_pi[f(u)/u]"""
    u = np.exp(l)
    return l if div == "rkl" else fdiv.f(div, u) / u


def bf16_case(tmp_path, algo, div, k=3, V=13):
    """A tiny policy and fixed samples: two prompts, k completions each (lengths 1-6), rewards
    and reference log-probs drawn near the policy's own (so u = pi/pi_ref stays near 1-10)."""
    model = GPT2(V, 16, 16, 2, 2, seed=7)
    model.save_hf(str(tmp_path / "policy"))
    rng = np.random.default_rng(4)
    samples = random_groups(rng, V, k, [3, 4], lambda p, j: 1 + (2 * j + p) % 6, -np.log(V), 0.5)
    spec = {"algo": algo, "divergence": div, "beta": 0.3, "k": k, "grpo_eps": 1e-4, "samples": samples}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    return model, samples, spec


def reference_step_mode(model, samples, algo, div, beta, k, mode, eps=1e-4):
    """reference_step with the policy's forward in one of test_model_bf16's modes: 'exact'
    (float64), 'emulated' (float64 with every linear layer and the head on bf16-rounded
    operands, forward and backward: fdpo's bf16 rule stated exactly) or 'autocast' (float32
    under torch.autocast("cpu", bfloat16): TRL's bf16=True). Returns (loss, advantages,
    grads, per-sample log pi)."""
    from test_model_bf16 import forward_in_mode
    model = model.double() if mode in ("exact", "emulated") else model.float()
    model.zero_grad()
    logps = []
    for s in samples:
        seq = torch.tensor(s["prompt"] + s["completion"][:-1])
        T = len(seq)
        pos, mask = torch.arange(T), torch.tril(torch.ones(T, T, dtype=torch.bool))
        logits = forward_in_mode(model, seq, pos, mask, mode)
        lp = F.log_softmax(logits, -1)
        P = len(s["prompt"])
        logps.append(sum(lp[P - 1 + j, c] for j, c in enumerate(s["completion"])))
    logp = torch.stack(logps)
    l = logp.detach().double() - torch.tensor([s["ref_logp"] for s in samples], dtype=torch.float64)
    shaped = torch.tensor([s["reward"] for s in samples], dtype=torch.float64) - beta * fprime(div, torch.exp(l))
    g = shaped.view(-1, k)
    if algo == "rloo":
        adv = g - (g.sum(1, keepdim=True) - g) / (k - 1)
    else:
        adv = (g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + eps)
    adv = adv.reshape(-1)
    loss = -(adv.to(logp.dtype) * logp).mean()
    loss.backward()
    grads = {n: p.grad.detach().double().numpy().copy() for n, p in model.named().items()}
    return loss.item(), adv.numpy(), grads, logp.detach().double().numpy()


def run_rl_grad(tmp_path, precision, name):
    harness("rl-grad", "--model", tmp_path / "policy", "--spec", tmp_path / "spec.json", "--out", tmp_path / name,
            "--precision", precision)
    res = json.load(open(tmp_path / name / "result.json"))
    grads, _ = st.load(str(tmp_path / name / "grads.safetensors"))
    return res, grads


@pytest.mark.parametrize("algo,div", [("rloo", "rkl"), ("grpo", "fkl"), ("rloo", "alpha:0.5")])
def test_step_bf16_matches_emulated_reference(tmp_path, algo, div):
    """fdpo rl --precision bf16's step (loss, advantages, gradients) against the float64 step
    with fdpo's bf16 rule emulated (test_model_bf16.py's reference). The step adds no bf16
    of its own (shaping, advantages, loss in double from the fp32 token log-probs), so the
    bounds are the model's: 5e-3 for what the log-probs carry (loss, advantages: one bf16
    rounding flip near a boundary moves a log-prob by ~1e-3 relative), 2e-2 for gradients
    (observed here: loss and advantages 1e-8 to 5e-8, gradients 2e-3 to 3e-3, where the
    backward's upstream gradients round to the neighbouring bf16 value now and then). And
    the bf16 path ran: fp32 fdpo's loss and advantages are >= 100 times further from the
    bf16 reference (observed 400-3000x)."""
    model, samples, spec = bf16_case(tmp_path, algo, div)
    res, grads = run_rl_grad(tmp_path, "bf16", "bf16")
    loss, adv, g_ref, logp = reference_step_mode(model, samples, algo, div, 0.3, 3, "emulated")
    assert abs(res["loss"] - loss) <= 5e-3 * max(abs(loss), 1e-2), (res["loss"], loss)
    assert rel_err(res["advantages"], adv) <= 5e-3
    for name, g in g_ref.items():
        assert rel_err(grads[name], g) <= 2e-2, name
    # the step's f-divergence estimate: the same log pi as the loss (training forward)
    l = logp - np.array([s["ref_logp"] for s in samples])
    assert res["fdiv"] == pytest.approx(np.mean(f_over_u(div, l)), rel=5e-3, abs=1e-4)
    r32, _ = run_rl_grad(tmp_path, "fp32", "fp32")
    assert abs(r32["loss"] - loss) > 100 * abs(res["loss"] - loss), (r32["loss"], res["loss"], loss)
    assert rel_err(r32["advantages"], adv) > 100 * rel_err(res["advantages"], adv)


@pytest.mark.parametrize("algo,div", [("rloo", "rkl"), ("grpo", "js")])
def test_step_bf16_close_to_torch_autocast(tmp_path, algo, div):
    """The same step against PyTorch's bf16 autocast (TRL's bf16=True): autocast also rounds
    every matmul OUTPUT to bf16, fdpo keeps fp32 outputs, so the two are independent
    approximations of the exact float64 step; fdpo's distance to autocast is bounded by 2.5x
    autocast's own distance to exact (two equally good approximations are ~sqrt(2) apart),
    plus fp32 noise: fdpo bf16 is as good a bf16 step as PyTorch's. Compared: the
    advantages (they carry every sample's log pi) and each gradient tensor; not the scalar
    loss, whose autocast error can cancel by luck (grpo-js: 1.1e-5 relative, 6x below its
    advantages' error), which would make a ratio bound on it a coin toss -- the loss is
    checked tightly against the emulated rule above."""
    model, samples, spec = bf16_case(tmp_path, algo, div)
    res, grads = run_rl_grad(tmp_path, "bf16", "bf16")
    _, ex_adv, ex_g, _ = reference_step_mode(model, samples, algo, div, 0.3, 3, "exact")
    _, ac_adv, ac_g, _ = reference_step_mode(model, samples, algo, div, 0.3, 3, "autocast")
    assert rel_err(res["advantages"], ac_adv) <= 2.5 * rel_err(ac_adv, ex_adv) + 1e-5
    for name in ex_g:
        assert rel_err(grads[name], ac_g[name]) <= 2.5 * rel_err(ac_g[name], ex_g[name]) + 1e-4, name


@pytest.mark.parametrize("algo", ["grpo", "rloo"])
def test_a_group_of_equal_rewards_gives_no_gradient(tmp_path, algo):
    """identical completions: same logp, same shaped reward -> advantages 0 -> zero gradient.
    At k = 3, 6, 7 a mean taken as sum / k is not the value itself in doubles: GRPO's
    gradient was 5.6e-12, RLOO's advantages -5.6e-17 (k = 2 divides exactly; a hunt's find)."""
    V = 7
    model = GPT2(V, 16, 8, 1, 2, seed=2)
    model.save_hf(str(tmp_path / "policy"))
    for k in (2, 3, 6, 7):
        for reward in (0.5, 0.1, -2.9, 1.3):
            s = {"prompt": [1, 2], "completion": [3, 4], "reward": reward, "ref_logp": -3.0}
            spec = {"algo": algo, "divergence": "rkl", "beta": 0.1, "k": k, "grpo_eps": 1e-4, "samples": [s] * k}
            (tmp_path / "spec.json").write_text(json.dumps(spec))
            harness("rl-grad", "--model", tmp_path / "policy", "--spec", tmp_path / "spec.json", "--out", tmp_path / "out")
            grads, _ = st.load(str(tmp_path / "out" / "grads.safetensors"))
            assert all(np.all(g == 0) for g in grads.values()), (k, reward)
            assert json.loads((tmp_path / "out" / "result.json").read_text())["advantages"] == [0] * k


def test_first_step_at_the_reference_with_a_constant_reward_moves_nothing(tmp_path):
    """Step 1 samples the reference, so l = log pi - log pi_ref = 0 and, with a constant reward,
    every advantage is 0: no update (weight decay 0). The policy's sequence log-prob was rounded
    to float against the reference's double sum: KL -2.8e-7, and Adam turned the noise into a
    full lr step (GRPO: weights moved by 1e-3; a hunt's find)."""
    import subprocess
    from test_generate import make_model
    from dpo_common import FDPO
    make_model(tmp_path / "model", 257, seed=3, n_positions=32, byte_tokenizer=True)
    (tmp_path / "p.txt").write_text("a\nb\nc\n")
    for algo in ("grpo", "rloo"):
        out = tmp_path / algo
        r = subprocess.run([str(a) for a in [FDPO, "rl", "--model", tmp_path / "model", "--data", tmp_path / "p.txt",
                                             "--out", out, "--reward", "cmd:awk '{print 1}'", "--algo", algo, "--n", 4,
                                             "--prompts-per-step", 3, "--steps", 1, "--max-new-tokens", 8, "--lr", "1e-3",
                                             "--weight-decay", 0, "--threads", 1, "--quiet"]], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        m = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
        assert m["objective/kl"] == 0 and m["policy/advantage_std"] == 0 and m["grad_norm"] == 0, m
        a, b = st.load(str(tmp_path / "model" / "model.safetensors"))[0], st.load(str(out / "model.safetensors"))[0]
        assert all(np.array_equal(a[k], b[k]) for k in a), algo


def test_a_lora_checkpoint_trained_in_full_is_its_own_exact_reference(tmp_path):
    """--model LORA_CHECKPOINT without --lora-r trains the model it defines in full: the policy
    is the checkpoint with its adapters folded in (W + s B A, one rounding), and without --ref
    the reference is the same checkpoint, which was scored unmerged (x W + s (x A) B): the same
    function in another float order, so step 1's l = log pi - log pi_ref was ~1e-7 noise, GRPO
    normalised it and Adam moved ~92 % of the weights by lr on a constant reward (bf16: advantages
    of 0.47, a full step; dpo's step-0 accuracy 0.75 instead of the tie 0.5; a hunt's find).
    The exact answer: l = 0 for every sample, every advantage 0, no gradient; dpo's and kto's
    step-0 implicit rewards exactly 0, the DPO loss log 2."""
    import math
    import subprocess
    from test_generate import make_model
    from dpo_common import FDPO

    def run(*args):
        r = subprocess.run([str(a) for a in [FDPO, *args, "--threads", 1, "--quiet"]], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return r
    make_model(tmp_path / "model", 257, seed=3, n_positions=32, scale=4.0, byte_tokenizer=True)
    (tmp_path / "p.txt").write_text("Hello\nab\nc\n")
    # a LoRA checkpoint whose adapter is far from 0 (B starts at 0: three large steps)
    run("rl", "--model", tmp_path / "model", "--data", tmp_path / "p.txt", "--out", tmp_path / "lora",
        "--reward", "cmd:awk '{print length($0)}'", "--lora-r", 2, "--lora-targets", "c_attn,c_fc", "--steps", 3,
        "--lr", "0.05", "--max-new-tokens", 6, "--n", 2, "--prompts-per-step", 3)
    adapter, _ = st.load(str(tmp_path / "lora" / "adapter_model.safetensors"))
    assert any(np.abs(v).max() > 1e-3 for k, v in adapter.items() if "lora_B" in k)
    for precision in ("fp32", "bf16"):
        for algo in ("grpo", "rloo"):
            out = tmp_path / f"{algo}-{precision}"
            run("rl", "--model", tmp_path / "lora", "--data", tmp_path / "p.txt", "--out", out, "--reward",
                "cmd:awk '{print 1}'", "--algo", algo, "--n", 4, "--prompts-per-step", 3, "--steps", 1,
                "--max-new-tokens", 6, "--lr", "1e-3", "--weight-decay", 0, "--precision", precision)
            m = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
            assert m["objective/kl"] == 0 and m["policy/advantage_std"] == 0 and m["grad_norm"] == 0, (algo, precision, m)
        # dpo and kto: at step 0 the policy is the reference, every implicit reward exactly 0
        pairs = [{"prompt": "Hello", "chosen": " a good day", "rejected": " bad"}, {"prompt": "ab", "chosen": "cd", "rejected": "ef gh"},
                 {"prompt": "The cat", "chosen": " sat", "rejected": " ran away"}, {"prompt": "x", "chosen": "yz", "rejected": "w"}]
        (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
        out = tmp_path / f"dpo-{precision}"
        run("dpo", "--model", tmp_path / "lora", "--data", tmp_path / "pairs.jsonl", "--out", out, "--steps", 1,
            "--batch-size", 4, "--eval-fraction", 0, "--precision", precision)
        m = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
        assert m["rewards/chosen"] == 0 and m["rewards/rejected"] == 0 and m["rewards/accuracies"] == 0.5, (precision, m)
        assert m["loss"] == pytest.approx(math.log(2), rel=1e-15, abs=0), (precision, m)
        kto = [{"prompt": p["prompt"], "completion": p[k], "label": k == "chosen"} for p in pairs for k in ("chosen", "rejected")]
        (tmp_path / "kto.jsonl").write_text("".join(json.dumps(x) + "\n" for x in kto))
        out = tmp_path / f"kto-{precision}"
        run("kto", "--model", tmp_path / "lora", "--data", tmp_path / "kto.jsonl", "--out", out, "--steps", 1,
            "--batch-size", 8, "--eval-fraction", 0, "--precision", precision)
        m = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
        assert m["kl"] == 0 and m["rewards/chosen"] == 0 and m["rewards/rejected"] == 0 and m["loss"] == 0.5, (precision, m)


@pytest.mark.parametrize("arch,prompts,n", [
    ("gpt2", "dup prompt here\n" * 3, 3),   # equal lines: the groups of one prompt follow each other
    ("gpt2", "".join(f"prompt {i:02d}\n" for i in range(20)), 7),   # ~2000 packed rows: beyond a 1024-row batch
    ("llama", "dup prompt here\n" * 3, 3),
], ids=["equal-lines", "beyond-1024-rows", "llama-equal-lines"])
def test_first_step_at_the_reference_is_exact_whatever_the_prompts_and_the_batch_size(tmp_path, arch, prompts, n):
    """As above, with the reference scored where the training forward used to differ from it: equal
    prompt lines (the scoring packed the groups of one prompt into one sequence, the step one per
    group) and a step larger than the scoring's 1024-row batches (the step ran as one batch). The
    two forwards then differed in the last bits, GRPO normalised that noise by its own std and
    Adam made it a full lr step on ~90 % of the weights (a hunt's find). The exact update is 0:
    l = 0 for every sample, every advantage 0, and torch.optim.AdamW with weight decay 0 and a
    zero gradient leaves every parameter bit-identical."""
    import subprocess
    from test_generate import make_model
    from dpo_common import FDPO
    if arch == "gpt2":
        make_model(tmp_path / "model", 257, seed=5, n_positions=64, byte_tokenizer=True)
    else:
        from fdpo_ref.llama import Llama
        Llama(vocab_size=257, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, tie_word_embeddings=False, seed=2, dtype=torch.float32).save_hf(str(tmp_path / "model"))
        (tmp_path / "model" / "fdpo_tokenizer.json").write_text(json.dumps({"type": "byte", "vocab_size": 257,
                                                                             "eos_token_id": 256}))
    (tmp_path / "p.txt").write_text(prompts)
    P = len(prompts.splitlines())
    for algo in ("grpo", "rloo"):
        out = tmp_path / algo
        r = subprocess.run([str(a) for a in [FDPO, "rl", "--model", tmp_path / "model", "--data", tmp_path / "p.txt",
                                             "--out", out, "--reward", "cmd:awk '{print 1}'", "--algo", algo, "--n", n,
                                             "--prompts-per-step", P, "--steps", 1, "--max-new-tokens", 16,
                                             "--lr", "1e-2", "--weight-decay", 0, "--threads", 1, "--quiet"]],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        m = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
        assert m["objective/kl"] == 0 and m["policy/advantage_std"] == 0 and m["grad_norm"] == 0, (algo, m)
        a, b = st.load(str(tmp_path / "model" / "model.safetensors"))[0], st.load(str(out / "model.safetensors"))[0]
        assert all(np.array_equal(a[k], b[k]) for k in a), algo


def test_bad_config_is_named(tmp_path):
    model = GPT2(7, 16, 8, 1, 2, seed=2)
    model.save_hf(str(tmp_path / "policy"))
    s = {"prompt": [1], "completion": [3], "reward": 0.5, "ref_logp": -3.0}
    for spec, needle in [({"divergence": "chi2", "k": 2}, "--divergence: chi2"), ({"divergence": "rkl", "k": 1}, "--n")]:
        full = {"algo": "rloo", "beta": 0.1, "grpo_eps": 1e-4, "samples": [s] * max(spec["k"], 1), **spec}
        (tmp_path / "spec.json").write_text(json.dumps(full))
        r = harness("rl-grad", "--model", tmp_path / "policy", "--spec", tmp_path / "spec.json", "--out", tmp_path / "o", check=False)
        assert r.returncode != 0 and needle in r.stderr, r.stderr


LETTERS = """import json, sys
for line in sys.stdin.buffer:
    c = json.loads(line.decode("utf-8", "replace"))["completion"]
    print(sum("a" <= ch <= "z" for ch in c))
"""


def test_rl_run_raises_heldout_reward(tmp_path):
    """12 RLOO steps with the reverse-KL-shaped reward on a tiny byte model: the held-out reward
    (letters counted here, on `fdpo generate` samples) rises by more than 3 standard errors."""
    import math
    import subprocess
    from test_generate import make_model
    from dpo_common import FDPO
    make_model(tmp_path / "model", 257, seed=3, n_positions=64, byte_tokenizer=True)
    (tmp_path / "prompts.txt").write_text("".join(f"prompt {i}:\n" for i in range(40)))
    (tmp_path / "heldout.txt").write_text("".join(f"held out {i}:\n" for i in range(20)))
    (tmp_path / "letters.py").write_text(LETTERS)

    def run(*args):
        r = subprocess.run([FDPO, *map(str, args)], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        return r

    run("rl", "--model", tmp_path / "model", "--data", tmp_path / "prompts.txt", "--out", tmp_path / "out",
        "--reward", f"cmd:/usr/bin/python3 {tmp_path / 'letters.py'}", "--algo", "rloo", "--divergence", "rkl",
        "--beta", 0.05, "--steps", 12, "--n", 4, "--prompts-per-step", 8, "--max-new-tokens", 16, "--lr", "1e-2")
    m = [json.loads(l) for l in open(tmp_path / "out" / "metrics.jsonl")]
    assert [x["step"] for x in m] == list(range(1, 13))
    for key in ["loss", "objective/scores", "objective/kl", "objective/entropy", "objective/rlhf_reward",
                "objective/non_score_reward", "val/contain_eos_token", "grad_norm", "learning_rate"]:
        assert key in m[0], key
    assert abs(m[0]["objective/kl"]) < 1e-3  # step 1 samples the reference itself

    def heldout(model):
        out = tmp_path / "g.jsonl"
        run("generate", "--model", model, "--data", tmp_path / "heldout.txt", "--n", 8, "--max-new-tokens", 16,
            "--seed", 7, "--out", out)
        return np.array([sum("a" <= ch <= "z" for ch in json.loads(l.decode("utf-8", "replace"))["completion"])
                         for l in open(out, "rb")])

    before, after = heldout(tmp_path / "model"), heldout(tmp_path / "out")
    diff = after.mean() - before.mean()
    se = math.sqrt(before.var(ddof=1) / len(before) + after.var(ddof=1) / len(after))
    print(f"held-out reward {before.mean():.3f} -> {after.mean():.3f}: +{diff:.3f} = {diff / se:.1f} SE")
    assert diff > 3 * se


def test_rl_bad_flags(tmp_path):
    import subprocess
    from dpo_common import FDPO
    for args, needle in [(["--algo", "ppo"], "--algo"), (["--n", "1"], "--n"), (["--divergence", "tv"], "--divergence"),
                         (["--algo", "grpo", "--grpo-eps", "-1"], "--grpo-eps: must be > 0 (got -1)"),
                         # under rloo (the default) it is not used at all: refused as such (test_cli.py)
                         (["--grpo-eps", "-1"], "--grpo-eps -1: only used by --algo grpo")]:
        r = subprocess.run([str(a) for a in [FDPO, "rl", "--model", tmp_path, "--data", tmp_path / "p", "--reward",
                            "length", "--out", tmp_path / "o", *args]], capture_output=True, text=True)
        assert r.returncode != 0 and needle in r.stderr, r.stderr


@pytest.mark.parametrize("greedy", [["--temperature", "0"], ["--algo", "grpo", "--top-k", "1"]])
def test_rl_refuses_greedy_sampling(tmp_path, greedy):
    """RLOO's advantage r_i - mean_{j!=i} r_j and GRPO's (r_i - mean) / (std + eps) (TRL's
    formulas) are exactly 0 on a group of --n equal completions, which greedy decoding gives:
    the run trained nothing and exited 0. Refused up front by name, as fdpo online refuses it."""
    import subprocess
    from dpo_common import FDPO
    from test_generate import make_model
    make_model(tmp_path / "model", 257, seed=3, n_positions=64, byte_tokenizer=True)
    (tmp_path / "p.txt").write_text("hello\nworld\n")
    r = subprocess.run([str(a) for a in [FDPO, "rl", "--model", tmp_path / "model", "--data", tmp_path / "p.txt",
                        "--reward", "length", "--out", tmp_path / "o", "--steps", 1, "--n", 3, "--prompts-per-step", 2,
                        "--max-new-tokens", 4, "--threads", 1, "--quiet", *greedy]], capture_output=True, text=True, timeout=60)
    flag = greedy[-2][2:] + " " + greedy[-1]
    assert r.returncode == 1 and r.stderr == (
        f"fdpo rl: --{flag}: RLOO/GRPO compare the --n completions of a prompt, and greedy decoding gives all --n 3 "
        "the same text (every advantage would be 0 and nothing would train); sample with --temperature > 0 and "
        "--top-k 0 or > 1\n"), r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("top", [["--top-p", "0.001"], ["--top-p", repr(1 / 257)], ["--top-k", "2", "--top-p", "0.5"],
                                 ["--top-k", "300", "--top-p", "0.0038"]])
def test_rl_refuses_a_top_p_that_keeps_one_token(tmp_path, top):
    """Nucleus sampling keeps the shortest prefix of the tokens by probability whose mass
    reaches top_p of the kept mass; the most probable of K tokens holds at least 1/K of it, so
    top_p <= 1/K keeps it alone: greedy decoding, one text per group, every advantage 0 (the run
    exited 0 having trained nothing). K: the vocabulary's V = 257 here, or --top-k's where it
    keeps fewer (--top-k 300 keeps all 257). A top-p just above 1/V samples and runs."""
    import subprocess
    from dpo_common import FDPO
    from test_generate import make_model
    make_model(tmp_path / "model", 257, seed=3, n_positions=64, byte_tokenizer=True)
    (tmp_path / "p.txt").write_text("hello\nworld\n")

    def rl(out, *flags):
        return subprocess.run([str(a) for a in [FDPO, "rl", "--model", tmp_path / "model", "--data", tmp_path / "p.txt",
                                                "--reward", "length", "--out", out, "--steps", 1, "--n", 3,
                                                "--prompts-per-step", 2, "--max-new-tokens", 4, "--threads", 1, "--quiet",
                                                *flags]], capture_output=True, text=True, timeout=60)
    r = rl(tmp_path / "o", *top)
    k, of = (2, "--top-k 2's tokens") if top[:2] == ["--top-k", "2"] else (257, "the vocabulary's 257 tokens")
    assert r.returncode == 1 and r.stderr.endswith(
        f"fdpo rl: --top-p {top[-1]}: RLOO/GRPO compare the --n completions of a prompt, and a top-p at or below 1/{k} "
        f"({of}) keeps only the most probable token, so greedy decoding gives all --n 3 the same text (every advantage "
        f"would be 0 and nothing would train); sample with --top-p > 1/{k}\n"), r.stderr
    assert not (tmp_path / "o").exists()
    assert rl(tmp_path / "ok", "--top-p", "0.004").returncode == 0   # > 1/257 = 0.00389...


def test_rl_sample_count_beyond_memory_is_refused_by_name(tmp_path):
    """--n 10^14 for 2 prompts a step: "out of memory allocating 1599999999999984 bytes", naming
    no flag (a hunt's find); refused naming --n, before --out is made"""
    import subprocess
    from test_generate import make_model, machine_gb
    from dpo_common import FDPO
    make_model(tmp_path / "model", 257, seed=3, n_positions=32, byte_tokenizer=True)
    (tmp_path / "p.txt").write_text("a\nb\n")
    n = 10 ** 14
    r = subprocess.run([str(a) for a in [FDPO, "rl", "--model", tmp_path / "model", "--data", tmp_path / "p.txt",
                        "--reward", "length", "--out", tmp_path / "o", "--steps", 1, "--max-new-tokens", 2,
                        "--prompts-per-step", 2, "--threads", 1, "--n", n]], capture_output=True, text=True, timeout=60)
    # both flags that make the count (online and sacpo name theirs the same way)
    assert r.returncode == 1 and r.stderr.startswith(f"fdpo rl: --prompts-per-step/--n: 2 prompts x {n} samples: their "
                                                     "records alone take ") \
        and r.stderr.endswith(f" GB, more than this machine's {machine_gb()} GB\n"), r.stderr
    assert not (tmp_path / "o").exists()


def test_rl_same_seed_same_numbers(tmp_path):
    import subprocess
    from test_generate import make_model
    from dpo_common import FDPO
    make_model(tmp_path / "model", 257, seed=3, n_positions=32, byte_tokenizer=True)
    (tmp_path / "p.txt").write_text("a\nb\nc\n")
    runs = []
    for name in ["x", "y"]:
        r = subprocess.run([str(a) for a in [
                            FDPO, "rl", "--model", tmp_path / "model", "--data", tmp_path / "p.txt", "--reward", "length",
                            "--out", tmp_path / name, "--steps", 3, "--n", 2, "--prompts-per-step", 2,
                            "--max-new-tokens", 6, "--threads", 1, "--algo", "grpo", "--divergence", "fkl"]],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        runs.append([{k: v for k, v in json.loads(l).items() if k != "tokens_per_sec" and not k.startswith("time/")}
                     for l in open(tmp_path / name / "metrics.jsonl")])
    assert runs[0] == runs[1]
    assert (tmp_path / "x" / "model.safetensors").read_bytes() == (tmp_path / "y" / "model.safetensors").read_bytes()


def test_a_tempered_sampler_is_warned_about(tmp_path):
    """the gradient and the penalty use the untempered log pi: from --temperature 0.7 (or
    top-k/top-p) the updates are off-policy without a correction, which only docs/rl.md said"""
    import subprocess
    from test_generate import make_model
    from dpo_common import FDPO
    make_model(tmp_path / "model", 257, seed=3, n_positions=32, byte_tokenizer=True)
    (tmp_path / "p.txt").write_text("a\nb\n")
    warning = "the samples do not come from the policy being trained"
    for name, extra, warned in [("plain", [], False), ("t", ["--temperature", 0.7], True), ("k", ["--top-k", 5], True),
                                ("p", ["--top-p", 0.9], True), ("k256", ["--top-k", 256], True),
                                # --top-k >= the vocabulary (257) keeps every token: no truncation
                                # (docs/eval.md), so nothing to warn about (hunt of wave 46)
                                ("k257", ["--top-k", 257], False), ("kbig", ["--top-k", 100000], False)]:
        r = subprocess.run([str(a) for a in [FDPO, "rl", "--model", tmp_path / "model", "--data", tmp_path / "p.txt",
                            "--reward", "length", "--out", tmp_path / name, "--steps", 1, "--n", 2,
                            "--prompts-per-step", 2, "--max-new-tokens", 4, "--threads", 1, "--quiet", *extra]],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and (warning in r.stderr) == warned, (name, r.stderr)


def test_rl_bf16_same_seed_and_resume_bit_exact(tmp_path):
    """fdpo rl --precision bf16: a run stopped after step 2 and resumed with --resume alone
    (the saved settings bring back bf16) ends byte-identical to the uninterrupted run, weights,
    AdamW moments and metrics; an fp32 run of the same seed ends elsewhere. objective/kl and
    objective/f_divergence take log pi from the same training forward (for reverse KL
    f(u)/u = log u: the two are the same number), not the sampler's bf16 sums."""
    import subprocess
    from test_generate import make_model
    from dpo_common import FDPO
    make_model(tmp_path / "model", 257, seed=3, n_positions=64, byte_tokenizer=True)
    (tmp_path / "p.txt").write_text("".join(f"prompt {i}:\n" for i in range(5)))

    def run(name, *extra):
        args = ["rl", "--model", tmp_path / "model", "--data", tmp_path / "p.txt", "--out", tmp_path / name,
                "--reward", "length", "--algo", "rloo", "--divergence", "rkl", "--prompts-per-step", 2, "--n", 3,
                "--steps", 4, "--max-new-tokens", 8, "--lr", "1e-2", "--threads", 1, "--seed", 5, *extra]
        r = subprocess.run([FDPO, *map(str, args)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr

    run("a", "--precision", "bf16")
    run("b", "--precision", "bf16", "--stop-at", 2)
    r = subprocess.run([FDPO, "rl", "--out", tmp_path / "b", "--resume"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    run("c")
    ma = assert_same_run(tmp_path / "a", tmp_path / "b")
    assert [m["step"] for m in ma] == [1, 2, 3, 4]
    assert state_files(tmp_path / "c")["model.safetensors"] != state_files(tmp_path / "a")["model.safetensors"]
    for m in ma:
        assert m["objective/f_divergence"] == m["objective/kl"]


@pytest.mark.skipif("avx512_bf16" not in open("/proc/cpuinfo").read(), reason="no AVX512-BF16: one bf16 route only")
def test_rl_bf16_resume_keeps_the_runs_route(tmp_path):
    """rl --precision bf16 started where the timing probe picks fp32 FMA for the large bf16
    GEMMs and the sampler's decoder (FDPO_BF16_PROBE=fp32), resumed where it picks vdpbf16ps:
    the resume samples and trains on the recorded route (training_state.json, bf16-route) and
    ends byte-identical to the uninterrupted run (weights, moments, metrics); the same resume
    without the record ends elsewhere."""
    import subprocess
    from test_generate import make_model
    from dpo_common import FDPO
    make_model(tmp_path / "model", 257, seed=3, n_positions=64, byte_tokenizer=True)
    (tmp_path / "p.txt").write_text("".join(f"prompt {i}:\n" for i in range(5)))

    def run(name, probe, *extra):
        args = ["rl", "--model", tmp_path / "model", "--data", tmp_path / "p.txt", "--out", tmp_path / name,
                "--reward", "length", "--algo", "rloo", "--divergence", "rkl", "--prompts-per-step", 4, "--n", 8,
                "--steps", 4, "--max-new-tokens", 16, "--lr", "1e-2", "--threads", 1, "--seed", 5,
                "--precision", "bf16", *extra]
        r = subprocess.run([FDPO, *map(str, args)], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "FDPO_BF16_PROBE": probe})
        assert r.returncode == 0, r.stderr
        return r.stderr

    run("a", "fp32")
    for name in ("b", "c"):
        run(name, "fp32", "--stop-at", 2)
    state = json.loads((tmp_path / "c/training_state.json").read_text())
    assert state["settings"].pop("bf16-route") == "fp32"
    (tmp_path / "c/training_state.json").write_text(json.dumps(state))
    for name in ("b", "c"):
        r = subprocess.run([FDPO, "rl", "--out", tmp_path / name, "--resume"], capture_output=True, text=True,
                           timeout=300, env={**os.environ, "FDPO_BF16_PROBE": "dpbf16"})
        assert r.returncode == 0, r.stderr
        assert ("on the run's route, fp32" in r.stderr) == (name == "b"), r.stderr
    assert_same_run(tmp_path / "a", tmp_path / "b")
    assert state_files(tmp_path / "c")["model.safetensors"] != state_files(tmp_path / "a")["model.safetensors"]


# ---------- checkpoints and --resume ----------

# the letters reward, failing once (exit 3) on its third call (step 3's scoring) unless the marker
# file beside it exists; then it creates the marker, so a resumed run scores normally
FAILS_ONCE_AT_3 = """import json, os, sys
here = os.path.dirname(os.path.abspath(__file__))
count, marker = os.path.join(here, "calls"), os.path.join(here, "failed_once")
n = int(open(count).read()) if os.path.exists(count) else 0
open(count, "w").write(str(n + 1))
if n == 2 and not os.path.exists(marker):
    open(marker, "w").write("")
    sys.stderr.write("reward model crashed\\n")
    sys.exit(3)
for line in sys.stdin.buffer:
    c = json.loads(line.decode("utf-8", "replace"))["completion"]
    print(sum("a" <= ch <= "z" for ch in c))
"""
@pytest.mark.parametrize("cmd", ["rl", "online-step"])
def test_interrupted_and_failed_runs_resume_bit_exactly(tmp_path, cmd):
    """One uninterrupted 4-step run (A); the same run stopped after step 2 (--stop-at) and resumed
    (B); the same run whose reward program fails in step 3 after a checkpoint at step 2
    (--save-every 2) and is resumed (C). B's and C's step-2 checkpoints are byte-identical (the
    failure leaves the last checkpoint intact), and A, B and C end with byte-identical weights
    and AdamW moments and the same metrics, each step logged once."""
    import subprocess
    from test_generate import make_model
    from dpo_common import FDPO
    make_model(tmp_path / "model", 257, seed=3, n_positions=64, byte_tokenizer=True)
    (tmp_path / "p.txt").write_text("".join(f"prompt {i}:\n" for i in range(5)))
    for name, text in (("a", LETTERS), ("b", LETTERS), ("c", FAILS_ONCE_AT_3)):
        (tmp_path / f"reward_{name}").mkdir()
        (tmp_path / f"reward_{name}" / "r.py").write_text(text)

    def run(name, *extra, check=True):
        if cmd == "rl":
            args = ["rl", "--algo", "rloo", "--divergence", "js", "--prompts-per-step", 2, "--n", 3]
        else:
            args = ["online", "--mode", "step", "--divergence", "fkl", "--prompts-per-round", 2, "--n", 3]
        args += ["--model", tmp_path / "model", "--data", tmp_path / "p.txt", "--out", tmp_path / name,
                 "--reward", f"cmd:/usr/bin/python3 {tmp_path / f'reward_{name}' / 'r.py'}",
                 "--steps", 4, "--max-new-tokens", 8, "--lr", "1e-2", "--threads", 1, "--seed", 5, *extra]
        r = subprocess.run([FDPO, *map(str, args)], capture_output=True, text=True, timeout=300)
        if check:
            assert r.returncode == 0, r.stderr
        return r

    run("a")
    # placeholders of the shared options these commands have no flag for (or, online step
    # mode, refuses) are not recorded (rl recorded "seq-len": 1, "batch-size": 1, "epochs": 0,
    # ...; online step mode its --prompts-per-round again as "batch-size")
    settings = json.loads((tmp_path / "a" / "training_state.json").read_text())["settings"]
    no_flag = ["seq-len", "eval-fraction", "eval-every", "batch-size", "grad-accum", "epochs", "shuffle", "chat-template"]
    assert not set(no_flag) & set(settings) and {"lr", "seed", "n"} <= set(settings), settings
    run("b", "--stop-at", 2)
    b2 = state_files(tmp_path / "b")
    assert [m["step"] for m in untimed_metrics(tmp_path / "b" / "metrics.jsonl")] == [1, 2]
    r = run("c", "--save-every", 2, check=False)
    # the failing step named as its metrics line would count it (it said "step 2", 0-based)
    assert r.returncode != 0 and "step 3: --reward" in r.stderr and "reward model crashed" in r.stderr, r.stderr
    assert state_files(tmp_path / "c") == b2  # the failure left the step-2 checkpoint as it was
    assert json.loads((tmp_path / "c" / "training_state.json").read_text())["step"] == 2
    # a fresh run into a directory holding a checkpoint is refused; a changed fixed flag too
    r = run("c", check=False)
    assert r.returncode != 0 and "--resume" in r.stderr
    r = run("c", "--resume", "--lr", "2e-2", check=False)
    assert r.returncode != 0 and "--lr" in r.stderr and "--resume" in r.stderr, r.stderr
    # named by the command's own flag, not the trainer's --batch-size it sets (rl has none);
    # a changed --seed is named too (it also changes the data order: that was named instead)
    per = "--prompts-per-step" if cmd == "rl" else "--prompts-per-round"
    r = run("c", "--resume", per, 1, check=False)
    assert r.returncode != 0 and f"{per}: 1 differs from the saved run's 2" in r.stderr, r.stderr
    r = run("c", "--resume", "--seed", 6, check=False)
    assert r.returncode != 0 and "--seed: 6 differs from the saved run's 5" in r.stderr, r.stderr
    # --resume alone restores the saved flags
    r = subprocess.run([FDPO, "rl" if cmd == "rl" else "online", "--out", tmp_path / "b", "--resume"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    run("c", "--resume")
    ma = assert_same_run(tmp_path / "a", tmp_path / "b")
    assert assert_same_run(tmp_path / "a", tmp_path / "c") == ma
    assert [m["step"] for m in ma] == [1, 2, 3, 4]
    # the phase split is logged, in seconds
    for m in (json.loads(l) for l in open(tmp_path / "a" / "metrics.jsonl")):
        assert all(m[k] >= 0 for k in TIMING[1:])


SLOW_LETTERS = "import time\ntime.sleep(0.3)\n" + LETTERS


@pytest.mark.parametrize("sig", ["SIGINT", "SIGKILL"])
def test_signalled_run_resumes_bit_exactly(tmp_path, sig):
    """fdpo rl stopped by a signal while it runs: SIGINT after step 2 is logged (it saves after
    the step it is in and exits naming --resume), SIGKILL after step 3 is logged with a
    --save-every 2 checkpoint (step 3's metrics line is then ahead of the checkpoint). Either
    way --resume ends byte-identical to the uninterrupted run, each step logged once."""
    import signal
    import subprocess
    import time
    from test_generate import make_model
    from dpo_common import FDPO
    make_model(tmp_path / "model", 257, seed=3, n_positions=64, byte_tokenizer=True)
    (tmp_path / "p.txt").write_text("".join(f"prompt {i}:\n" for i in range(5)))
    (tmp_path / "slow.py").write_text(SLOW_LETTERS)  # time to signal the run mid-step
    (tmp_path / "fast.py").write_text(LETTERS)       # the same rewards, for the uninterrupted run
    args = lambda out: [FDPO, "rl", "--model", tmp_path / "model", "--data", tmp_path / "p.txt", "--out", out,
                        "--reward", f"cmd:/usr/bin/python3 {tmp_path / ('fast.py' if out.name == 'a' else 'slow.py')}",
                        "--steps", 6, "--n", 2,
                        "--prompts-per-step", 2, "--max-new-tokens", 6, "--lr", "1e-2", "--threads", 1,
                        "--save-every", 2]
    a, b = tmp_path / "a", tmp_path / "b"
    r = subprocess.run(list(map(str, args(a))), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    p = subprocess.Popen(list(map(str, args(b))), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for = 2 if sig == "SIGINT" else 3
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        if (b / "metrics.jsonl").exists() and len((b / "metrics.jsonl").read_text().splitlines()) >= wait_for:
            break
        time.sleep(0.02)
    assert p.poll() is None, "the run ended before it could be signalled"
    p.send_signal(getattr(signal, sig))
    _, err = p.communicate(timeout=120)
    assert p.returncode != 0
    saved = json.loads((b / "training_state.json").read_text())["step"]
    if sig == "SIGINT":
        assert "interrupted after step" in err and "--resume" in err, err
        assert saved < 6
    else:
        assert saved in (2, 4)
    r = subprocess.run([FDPO, "rl", "--out", str(b), "--resume"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert [m["step"] for m in assert_same_run(a, b)] == list(range(1, 7))


def test_samples_logp_matches_pytorch(tmp_path):
    """fdpo_samples_logp (the reference term of the shaped reward) scores the samples in
    batched training forwards: every sample's completion log-prob equals PyTorch's float64 sum.
    Samples of several prompts, completions of 1..40 tokens, over 1024 tokens in all so
    that the scorer splits them into more than one micro-batch."""
    V = 13
    model = GPT2(V, 64, 16, 2, 2, seed=7)
    model.save_hf(str(tmp_path / "policy"))
    rng = np.random.default_rng(4)
    prompts = [[int(x) for x in rng.integers(0, V, size=1 + 5 * p)] for p in range(4)]
    samples = [{"prompt": prompts[i % 4], "completion": [int(x) for x in rng.integers(0, V, size=1 + (7 * i) % 40)],
                "reward": 0.0, "ref_logp": 0.0} for i in range(48)]
    assert sum(len(s["prompt"]) + len(s["completion"]) - 1 for s in samples) > 1024
    spec = {"algo": "rloo", "divergence": "rkl", "beta": 0.1, "k": 2, "grpo_eps": 1e-4, "samples": samples}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    harness("rl-logp", "--model", tmp_path / "policy", "--spec", tmp_path / "spec.json", "--out", tmp_path / "out")
    got = json.load(open(tmp_path / "out" / "result.json"))["logp"]
    with torch.no_grad():
        want = [completion_logp(model, s["prompt"], s["completion"]).item() for s in samples]
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert abs(g - w) <= 2e-6 * max(1.0, abs(w)), (i, g, w)


def test_samples_logp_shared_prompts_match_pytorch(tmp_path):
    """The scorer packs consecutive samples of one prompt into one sequence, the prompt once
    and a branch per sample: every log-prob still equals PyTorch's float64 sum over the
    sample run alone. Covers a one-token prompt (no shared rows), more samples of one prompt
    than a sequence has branch tags (255), a group split by the 1024-token micro-batch budget,
    a prompt that comes back after another, and empty completions (log-prob 0)."""
    V = 13
    model = GPT2(V, 64, 16, 2, 2, seed=9)
    model.save_hf(str(tmp_path / "policy"))
    rng = np.random.default_rng(6)
    a, b, c = ([int(x) for x in rng.integers(0, V, size=n)] for n in (1, 9, 4))
    comp = lambda n: [int(x) for x in rng.integers(0, V, size=n)]
    samples = [{"prompt": a, "completion": comp(0 if i % 50 == 7 else 1 + i % 3)} for i in range(300)]
    samples += [{"prompt": b, "completion": comp(20 + i % 11)} for i in range(40)]
    samples += [{"prompt": c, "completion": comp(1 + 2 * i)} for i in range(3)]
    samples += [{"prompt": a, "completion": comp(2)} for i in range(2)]
    for s in samples:
        s.update(reward=0.0, ref_logp=0.0)
    spec = {"algo": "rloo", "divergence": "rkl", "beta": 0.1, "k": 1, "grpo_eps": 1e-4, "samples": samples}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    harness("rl-logp", "--model", tmp_path / "policy", "--spec", tmp_path / "spec.json", "--out", tmp_path / "out")
    got = json.load(open(tmp_path / "out" / "result.json"))["logp"]
    with torch.no_grad():
        want = [completion_logp(model, s["prompt"], s["completion"]).item() if s["completion"] else 0.0
                for s in samples]
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert abs(g - w) <= 2e-6 * max(1.0, abs(w)), (i, g, w)


@pytest.mark.parametrize("blocks", [[1, 2], [2, 1], [1, 1, 1]])
def test_step_split_into_rank_blocks_is_the_whole_step(tmp_path, blocks):
    """Under MPI each rank runs fdpo_rl_step on its block of whole groups, scaled by the whole
    step's sample count, and the trainer sums the gradients: the blocks' summed loss,
    advantages, metrics and gradients equal PyTorch's single step over all the samples."""
    torch.manual_seed(0)
    V, k = 11, 3
    model = GPT2(V, 16, 8, 2, 2, seed=6)
    model.save_hf(str(tmp_path / "policy"))
    rng = np.random.default_rng(2)
    samples = random_groups(rng, V, k, [2, 3, 4], lambda p, j: 1 + (j + 2 * p) % 5, -2.4, 0.3)
    spec = {"algo": "rloo", "divergence": "js", "beta": 0.3, "k": k, "grpo_eps": 1e-4, "samples": samples,
            "blocks": blocks}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    harness("rl-grad", "--model", tmp_path / "policy", "--spec", tmp_path / "spec.json", "--out", tmp_path / "out")
    res = json.load(open(tmp_path / "out" / "result.json"))
    grads, _ = st.load(str(tmp_path / "out" / "grads.safetensors"))
    loss, adv, g_ref = reference_step(model, samples, "rloo", "js", 0.3, k)
    assert abs(res["loss"] - loss) <= 1e-5 * max(abs(loss), 1e-3), (res["loss"], loss)
    assert rel_err(res["advantages"], adv) < 1e-5
    assert abs(res["advantage_std"] - np.sqrt(np.mean(np.square(adv)))) <= 1e-6 * np.abs(adv).max()
    assert abs(res["scores"] - np.mean([s["reward"] for s in samples])) <= 1e-12
    for name, g in g_ref.items():
        assert rel_err(grads[name], g) < 1e-4, name


@pytest.mark.parametrize("per_step", [3, 5])
def test_rl_logged_objective_values_match_pytorch(tmp_path, per_step):
    """The objective/* and val/* values `fdpo rl` logs at step 1, against PyTorch float64 on
    the same completions: the policy is sharpened until its top token leads the next by more
    than 40 nats, so that sampling (temperature 1; greedy decoding is refused) draws the argmax
    continuation of the starting policy, computed here; the reference is another model, so
    the log-ratios are not 0. objective/scores = mean reward (the cmd: script's character code
    sum mod 97),
    objective/kl = mean sum_t (log pi - log pi_ref), objective/entropy = mean -sum_t log pi,
    objective/f_divergence = mean f(u)/u (js), non_score_reward = -beta * that, rlhf_reward =
    scores - beta * that, val/contain_eos_token = fraction that drew EOT (0 here: this
    policy's greedy token is the same byte at every position). (The run test above checks
    the names only.) The policy can emit ASCII and EOT only, so a completion's text is its
    tokens. --prompts-per-step 5 > the 3 prompts: the step still takes each prompt once (it
    used to take p0 and q1 twice), so the values are the same means over the 3."""
    import subprocess
    from dpo_common import FDPO
    from test_generate import make_model
    from test_online import ascii_model, load_gpt2
    code_sum = lambda text: sum(ord(ch) for ch in text) % 97
    pol_dir = ascii_model(tmp_path / "pol")
    sharp = load_gpt2(pol_dir)
    with torch.no_grad():   # its logits are wte @ (ln_f bias) at every position: x 8000, the top gap becomes ~70
        sharp.param("ln_f.bias").mul_(8000)
    sharp.save_hf(str(pol_dir))
    make_model(tmp_path / "ref", 257, seed=9, n_positions=64, byte_tokenizer=True)
    prompts = ["p0:", "q1 ", "the cat"]
    (tmp_path / "prompts.txt").write_text("".join(p + "\n" for p in prompts))
    (tmp_path / "codes.py").write_text("import json, sys\nfor line in sys.stdin.buffer:\n"
                                       "    print(sum(ord(ch) for ch in json.loads(line)['completion']) % 97)\n")
    beta, max_new = 0.3, 8
    r = subprocess.run([str(a) for a in [
        FDPO, "rl", "--model", pol_dir, "--ref", tmp_path / "ref", "--data", tmp_path / "prompts.txt", "--out",
        tmp_path / "out", "--reward", f"cmd:/usr/bin/python3 {tmp_path / 'codes.py'}", "--divergence", "js",
        "--beta", beta, "--steps", 1, "--n", 2, "--prompts-per-step", per_step,
        "--max-new-tokens", max_new, "--threads", 1, "--quiet"]], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    m = json.loads(open(tmp_path / "out" / "metrics.jsonl").readline())
    pol, ref = load_gpt2(pol_dir).double(), load_gpt2(tmp_path / "ref").double()
    lp, lr, rewards, eos = [], [], [], []
    with torch.no_grad():
        for p in prompts:
            ids, comp, a, b = list(p.encode()), [], 0.0, 0.0
            while len(comp) < max_new:
                x = torch.tensor(ids + comp)
                lpi, lref = F.log_softmax(pol(x)[-1], -1), F.log_softmax(ref(x)[-1], -1)
                t = int(torch.argmax(lpi))
                s = torch.sort(lpi, descending=True).values
                assert float(s[0] - s[1]) > 40   # P(another token) < 257 e^-40 per draw: the argmax is drawn
                a, b = a + float(lpi[t]), b + float(lref[t])
                comp.append(t)
                if t == 256:
                    break
            text = bytes(c for c in comp if c < 256).decode()
            for _ in range(2):   # --n 2: both samples are this one
                lp.append(a); lr.append(b); rewards.append(code_sum(text)); eos.append(comp[-1] == 256)
    lp, lr = np.array(lp), np.array(lr)
    fdiv = float(np.mean(f_over_u("js", lp - lr)))
    want = {"objective/scores": float(np.mean(rewards)), "objective/kl": float(np.mean(lp - lr)),
            "objective/entropy": float(np.mean(-lp)), "objective/f_divergence": fdiv,
            "objective/non_score_reward": -beta * fdiv, "objective/rlhf_reward": float(np.mean(rewards)) - beta * fdiv,
            "val/contain_eos_token": float(np.mean(eos)),
            # the mean shaped reward r - beta f'(u), f'(u) = log(2u / (1 + u)) for js (not the mean reward)
            "objective/shaped_reward": float(np.mean(np.array(rewards) - beta * np.log(2 / (1 + np.exp(lr - lp)))))}
    assert want["objective/scores"] > 0 and abs(want["objective/kl"]) > 0.1, want   # nothing vanishes by chance
    assert abs(want["objective/shaped_reward"] - want["objective/scores"]) > 0.01, want
    for k, v in want.items():
        assert abs(m[k] - v) <= 1e-5 * max(1.0, abs(v)), (k, m[k], v)


@pytest.mark.parametrize("cmd,kind", [("rl", "lexicon"), ("online-step", "lexicon"), ("online-step", "rm")])
def test_resume_refuses_a_reward_changed_in_place(tmp_path, cmd, kind):
    """The reward's files (an rm:DIR reward model, a lexicon: word list) are read again from their
    paths at every start: after one was re-trained or edited in place, `--resume` scored the
    later steps with the other reward, exit 0 (sacpo's plan refused the same change). The state
    records their content hash; the resume is refused naming the spec and the file, goes on with
    the original files, and a state without the hash (an older fdpo) resumes unchecked."""
    import shutil
    import subprocess
    from test_generate import make_model
    from dpo_common import FDPO
    make_model(tmp_path / "model", 257, seed=3, n_positions=64, byte_tokenizer=True)
    (tmp_path / "p.txt").write_text("".join(f"prompt {i}:\n" for i in range(5)))

    def fdpo(*args, check=True):
        r = subprocess.run([FDPO, *map(str, args)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 or not check, r.stderr
        return r

    from dpo_common import reward_with_files
    reward, spec, change = reward_with_files(tmp_path, kind, tmp_path / "model")
    if kind == "lexicon":
        original = reward.read_text()
    else:
        shutil.copytree(reward, tmp_path / "RM.orig")
    if cmd == "rl":
        args = ["rl", "--prompts-per-step", 2, "--n", 3]
    else:
        args = ["online", "--mode", "step", "--prompts-per-round", 2, "--n", 3]
    out = tmp_path / "out"
    args += ["--model", tmp_path / "model", "--data", tmp_path / "p.txt", "--out", out, "--reward", spec,
             "--steps", 3, "--max-new-tokens", 8, "--lr", "1e-2", "--threads", 1, "--quiet"]
    fdpo(*args, "--stop-at", 1)
    state = json.loads((out / "training_state.json").read_text())
    assert len(state["reward_hash"]) == 16
    change()   # edited, or re-trained, in place
    r = fdpo(*args, "--resume", "--stop-at", 2, check=False)
    assert r.returncode == 1 and f"--resume: --reward {spec}: the content of {reward} differs from what the saved " \
        "run scored with (hash " in r.stderr, r.stderr
    assert json.loads((out / "training_state.json").read_text())["step"] == 1
    if kind == "lexicon":
        reward.write_text(original)
    else:
        shutil.rmtree(reward)
        shutil.copytree(tmp_path / "RM.orig", reward)
    fdpo(*args, "--resume", "--stop-at", 2)   # the files it scored with: it goes on
    assert json.loads((out / "training_state.json").read_text())["step"] == 2
    # a state of an fdpo before reward_hash was recorded resumes unchecked
    state = json.loads((out / "training_state.json").read_text())
    del state["reward_hash"]
    (out / "training_state.json").write_text(json.dumps(state))
    if kind == "lexicon":
        change()
        fdpo(*args, "--resume")
        assert json.loads((out / "training_state.json").read_text())["step"] == 3


@pytest.mark.parametrize("cmd", [["rl"], ["online", "--mode", "step", "--steps", "1"]])
def test_a_failed_load_keeps_its_message(tmp_path, cmd):
    """A failure before training (a missing --model, a missing lexicon: file, a reward model
    as --ref) printed "unknown error": the reward's content hash, taken after the failed load,
    cleared the load's message (a review's find)."""
    import subprocess
    from test_generate import make_model
    from dpo_common import FDPO
    make_model(tmp_path / "model", 257, seed=3, n_positions=32, byte_tokenizer=True)
    (tmp_path / "p.txt").write_text("a\n")
    for extra, needle in [(["--model", tmp_path / "missing"], str(tmp_path / "missing")),
                          (["--model", tmp_path / "model", "--ref", tmp_path / "noref"], str(tmp_path / "noref")),
                          (["--model", tmp_path / "model", "--reward", f"lexicon:{tmp_path / 'nolex.txt'}"], "nolex.txt")]:
        args = [FDPO, *cmd, "--data", tmp_path / "p.txt", "--out", tmp_path / "o", "--reward", "length", *extra]
        r = subprocess.run([str(a) for a in args], capture_output=True, text=True)
        assert r.returncode != 0 and needle in r.stderr and "unknown error" not in r.stderr, (extra, r.stderr)


def test_a_changed_lora_reference_hash_names_the_earlier_fdpo_as_a_cause(tmp_path):
    """A full run from a LoRA checkpoint saved by an fdpo that scored its LoRA reference
    unmerged records another reference hash than this fdpo computes: the refusal said only
    "re-trained in place?" although nothing was touched (a review's find); it names that cause."""
    import subprocess
    from test_generate import make_model
    from dpo_common import FDPO

    def run(*args, check=True):
        r = subprocess.run([str(a) for a in [FDPO, *args, "--threads", 1, "--quiet"]], capture_output=True, text=True)
        assert r.returncode == 0 or not check, r.stderr
        return r
    make_model(tmp_path / "model", 257, seed=3, n_positions=32, byte_tokenizer=True)
    (tmp_path / "p.txt").write_text("Hello\nab\n")
    run("rl", "--model", tmp_path / "model", "--data", tmp_path / "p.txt", "--out", tmp_path / "lora", "--reward",
        "length", "--lora-r", 2, "--steps", 1, "--lr", "0.05", "--max-new-tokens", 4, "--n", 2, "--prompts-per-step", 2)
    pairs = [{"prompt": "Hello", "chosen": " good", "rejected": " bad"}, {"prompt": "ab", "chosen": "cd", "rejected": "ef"}]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    args = ["dpo", "--model", tmp_path / "lora", "--data", tmp_path / "pairs.jsonl", "--out", tmp_path / "d",
            "--steps", 2, "--batch-size", 2, "--eval-fraction", 0]
    run(*args, "--stop-at", 1)
    state = json.loads((tmp_path / "d" / "training_state.json").read_text())
    state["ref_hash"] = "0123456789abcdef"   # what the earlier fdpo's unmerged reference hashed to, say
    (tmp_path / "d" / "training_state.json").write_text(json.dumps(state))
    r = run(*args, "--resume", check=False)
    assert r.returncode != 0 and "saved by an earlier fdpo, which scored this LoRA reference unmerged" in r.stderr, r.stderr
