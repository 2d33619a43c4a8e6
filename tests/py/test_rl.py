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
from dpo_common import harness, rel_err  # noqa: E402
from fdpo_ref import safetensors as st  # noqa: E402
from fdpo_ref.gpt2 import GPT2  # noqa: E402

torch.set_default_dtype(torch.float64)


def fprime(div, u):
    if div == "rkl":
        return torch.log(u) + 1
    if div == "fkl":
        return -1 / u
    if div == "js":
        return torch.log(2 * u / (1 + u))
    a = float(div.split(":")[1])
    return (1 - u ** (-a)) / a


def completion_logp(model, prompt, comp):
    seq = torch.tensor(prompt + comp[:-1])
    logits = model(seq)
    lp = F.log_softmax(logits, -1)
    P = len(prompt)
    return sum(lp[P - 1 + j, comp[j]] for j in range(len(comp)))


def reference_step(model, samples, algo, div, beta, k, eps=1e-4):
    logp = torch.stack([completion_logp(model, s["prompt"], s["completion"]) for s in samples])
    l = logp.detach() - torch.tensor([s["ref_logp"] for s in samples])
    shaped = torch.tensor([s["reward"] for s in samples]) - beta * fprime(div, torch.exp(l))
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


@pytest.mark.parametrize("algo,div", [("rloo", "rkl"), ("rloo", "alpha:0.5"), ("grpo", "fkl"), ("grpo", "js")])
def test_step_matches_pytorch(tmp_path, algo, div):
    torch.manual_seed(0)
    V, k = 11, 3
    model = GPT2(V, 16, 8, 2, 2, seed=5)
    model.save_hf(str(tmp_path / "policy"))
    rng = np.random.default_rng(1)
    samples = []
    for p in range(2):
        prompt = [int(x) for x in rng.integers(0, V, size=2 + p)]
        for j in range(k):
            comp = [int(x) for x in rng.integers(0, V, size=1 + (j + p) % 4)]
            samples.append({"prompt": prompt, "completion": comp, "reward": float(rng.normal()),
                            "ref_logp": float(-2.4 * len(comp) + rng.normal() * 0.3)})
    spec = {"algo": algo, "divergence": div, "beta": 0.3, "k": k, "grpo_eps": 1e-4, "samples": samples}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    harness("rl-grad", "--model", tmp_path / "policy", "--spec", tmp_path / "spec.json", "--out", tmp_path / "out")
    res = json.load(open(tmp_path / "out" / "result.json"))
    grads, _ = st.load(str(tmp_path / "out" / "grads.safetensors"))
    loss, adv, g_ref = reference_step(model, samples, algo, div, 0.3, k)
    assert abs(res["loss"] - loss) <= 1e-5 * max(abs(loss), 1e-3), (res["loss"], loss)
    assert rel_err(res["advantages"], adv) < 1e-5
    for name, g in g_ref.items():
        assert rel_err(grads[name], g) < 1e-4, name


def test_grpo_group_of_equal_rewards_gives_no_gradient(tmp_path):
    V = 7
    model = GPT2(V, 16, 8, 1, 2, seed=2)
    model.save_hf(str(tmp_path / "policy"))
    # identical completions: same logp, same shaped reward -> advantages 0 -> zero gradient
    s = {"prompt": [1, 2], "completion": [3, 4], "reward": 0.5, "ref_logp": -3.0}
    spec = {"algo": "grpo", "divergence": "rkl", "beta": 0.1, "k": 2, "grpo_eps": 1e-4, "samples": [s, s]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    harness("rl-grad", "--model", tmp_path / "policy", "--spec", tmp_path / "spec.json", "--out", tmp_path / "out")
    grads, _ = st.load(str(tmp_path / "out" / "grads.safetensors"))
    assert all(np.all(g == 0) for g in grads.values())


def test_bad_config_is_named(tmp_path):
    model = GPT2(7, 16, 8, 1, 2, seed=2)
    model.save_hf(str(tmp_path / "policy"))
    s = {"prompt": [1], "completion": [3], "reward": 0.5, "ref_logp": -3.0}
    for spec, needle in [({"divergence": "chi2", "k": 2}, "--divergence: chi2"), ({"divergence": "rkl", "k": 1}, "--n")]:
        full = {"algo": "rloo", "beta": 0.1, "grpo_eps": 1e-4, "samples": [s] * max(spec["k"], 1), **spec}
        (tmp_path / "spec.json").write_text(json.dumps(full))
        r = harness("rl-grad", "--model", tmp_path / "policy", "--spec", tmp_path / "spec.json", "--out", tmp_path / "o", check=False)
        assert r.returncode != 0 and needle in r.stderr, r.stderr
