"""KTO (`fdpo kto`) against a re-implementation of TRL's KTOTrainer loss in PyTorch (float64):
the loss, the KL reference point z0 from mismatched pairs (completion i after prompt i+1
within the micro-batch, detached, clamped at 0) and the gradient wrt every policy
parameter, for reverse KL (plain KTO) and other f-divergences (s~(l) = s(l) - s(0) in place
of the log-ratio, docs/kto.md); bad data gives FILE:LINE errors; a short run logs TRL's
metric names."""
import json
import shutil

import numpy as np
import pytest
import torch

from dpo_common import (EOT, assert_same_run, completion_logps, fdpo, harness, render_messages, save_byte_tokenizer,
                         score, write_jsonl)
from fdpo_ref import safetensors as st
from fdpo_ref.gpt2 import GPT2

torch.set_num_threads(1)

CFG = dict(vocab_size=257, n_positions=64, n_embd=32, n_layer=2, n_head=4)
MAX_LEN = 40
ROWS = [
    {"prompt": "The cat", "completion": " sat on the mat.", "label": True},
    {"prompt": "Q: 2+2?\nA:", "completion": " five, I think", "label": False},
    {"prompt": [{"role": "user", "content": "Hi"}],
     "completion": [{"role": "assistant", "content": "Hello!"}], "label": True},
    {"prompt": "", "completion": "no", "label": False},
    {"prompt": "A long prompt that will be cut at the front for sure",
     "completion": " and a long completion that goes past the limit too", "label": True},
    {"prompt": "Caf\u00e9", "completion": " \u2615 good", "label": True},
    {"prompt": "Why?", "completion": " Because.", "label": False},
]


def tokenize(row, max_length=MAX_LEN):
    """Byte-level ids of (prompt, completion) by the documented rules (kto.h)."""
    p, c = row["prompt"], row["completion"]
    if isinstance(c, list):
        p = render_messages(p) + "<|assistant|>\n"
        c = c[0]["content"] + "\n" + render_messages(c[1:])
    P, C = list(p.encode()) or [EOT], list(c.encode()) + [EOT]
    if max_length and len(P) + len(C) > max_length:
        mp = max_length // 2
        if len(P) > mp:
            P = P[len(P) - mp:]
        C = C[:max_length - len(P)]
    return P, C


def seq_logp(model, P, C):
    return completion_logps(model, P, C)[0].sum()


def s_tilde(div, l):
    return score(div, l) - score(div, torch.zeros((), dtype=torch.float64))


def trl_kto(policy, ref, toks, labels, div, beta, wd, wu, micro, sizes=None):
    """TRL KTOTrainer.kto_loss with s~ for the log-ratio; per micro-batch KL, mean loss.
    sizes (optional): the micro-batches' sizes, in order, instead of micro each."""
    n = len(toks)
    mb = micro or n
    sizes = sizes or [min(mb, n - i0) for i0 in range(0, n, mb)]
    assert sum(sizes) == n
    losses, z0s = [], []
    for b, size in enumerate(sizes):
        i0 = sum(sizes[:b])
        idx = list(range(i0, i0 + size))
        k = len(idx)
        with torch.no_grad():
            kl_l = []
            for j, i in enumerate(idx):
                P = toks[idx[(j + 1) % k]][0]
                C = toks[i][1][:MAX_LEN - len(P)]
                kl_l.append(seq_logp(policy, P, C) - seq_logp(ref, P, C))
            z0 = torch.clamp(torch.stack([s_tilde(div, x) for x in kl_l]).mean(), min=0)
        for i in idx:
            P, C = toks[i]
            with torch.no_grad():
                lr = seq_logp(ref, P, C)
            s = s_tilde(div, seq_logp(policy, P, C) - lr)
            if labels[i]:
                losses.append(wd * (1 - torch.sigmoid(beta * (s - z0))))
            else:
                losses.append(wu * (1 - torch.sigmoid(beta * (z0 - s))))
            z0s.append(z0.item())
    return torch.stack(losses).mean(), z0s


def micro_sizes(n, micro):
    """the documented micro-batches of n examples: micro each, the rest last, and a last one
    of a single example joined to the one before (docs/kto.md)"""
    if not micro or micro >= n:
        return [n]
    sizes = [micro] * (n // micro) + ([n % micro] if n % micro else [])
    if sizes[-1] == 1:
        sizes[-2:] = [sizes[-2] + 1]
    return sizes


def rel(got, ref):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-30))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kto")
    # the policy is the reference plus a small perturbation, as during training, so that
    # the KL estimate has either sign across micro-batches
    ref = GPT2(**CFG, seed=31)
    pol = GPT2(**CFG, seed=31)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in pol.p.values():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.02)
    # a second policy that favours frequent bytes everywhere: its log-ratio on the
    # mismatched pairs is positive, so z0 > 0 (the clamp inactive)
    up = GPT2(**CFG, seed=31)
    with torch.no_grad():
        wte = up.param("wte.weight")
        d = sum(wte[b] for b in b" etaoinsr.,!") + wte[EOT]
        up.param("ln_f.bias").add_(d / d.norm() * 2.0)
    for m, name in ((pol, "policy"), (ref, "ref"), (up, "policy_up")):
        m.save_hf(str(tmp / name))
        save_byte_tokenizer(str(tmp / name))
    write_jsonl(tmp / "data.jsonl", ROWS)
    return tmp


CASES = [("policy", "rkl", 0.1, 1.0, 1.0, 0), ("policy", "rkl", 2.0, 1.0, 1.33, 3), ("policy", "js", 1.5, 0.8, 1.2, 0),
         ("policy", "alpha:0.5", 1.0, 1.0, 1.0, 2), ("policy", "fkl", 0.5, 1.0, 2.0, 4),
         ("policy_up", "rkl", 0.1, 1.0, 1.0, 0), ("policy_up", "js", 0.7, 1.0, 1.5, 3),
         ("policy_up", "alpha:0.3", 0.4, 1.2, 1.0, 2),
         ("policy", "js", 0.9, 0.0, 1.0, 2)]   # a weight of 0 is allowed (>= 0): the desirable examples drop out


def kto_grad(tmp, policy, div, beta, wd, wu, micro):
    """fdpo's KTO loss and gradients for one case (harness kto-grad); the result, and the output dir"""
    out = tmp / f"o_{policy}_{div}_{beta}_{micro}"
    if not (out / "result.json").exists():
        harness("kto-grad", "--model", tmp / policy, "--ref", tmp / "ref", "--data", tmp / "data.jsonl", "--out", out,
                "--divergence", div, "--beta", beta, "--wd", wd, "--wu", wu, "--micro-batch", micro,
                "--max-length", MAX_LEN)
    return json.loads((out / "result.json").read_text()), out


@pytest.mark.parametrize("policy,div,beta,wd,wu,micro", CASES)
def test_kto_loss_and_gradients_match_trl_formula(models, policy, div, beta, wd, wu, micro):
    tmp = models
    res, out = kto_grad(tmp, policy, div, beta, wd, wu, micro)
    pol, ref = GPT2(**CFG).double(), GPT2(**CFG).double()
    pol.load_hf(str(tmp / policy))
    ref.load_hf(str(tmp / "ref"))
    toks = [tokenize(r) for r in ROWS]
    loss, z0s = trl_kto(pol, ref, toks, [r["label"] for r in ROWS], div, beta, wd, wu, micro,
                        sizes=micro_sizes(len(ROWS), micro))
    loss.backward()
    got_z0 = [e[2] for e in res["examples"]]
    assert np.max(np.abs(np.array(got_z0) - np.array(z0s))) < 1e-5, (got_z0, z0s)
    assert abs(res["loss"] - loss.item()) < 1e-5 * max(1.0, abs(loss.item()))
    g, _ = st.load(str(out / "grads.safetensors"))
    for name, p in pol.named().items():
        assert rel(g[name], p.grad.numpy()) < 1e-5, name


def test_an_odd_max_length_keeps_the_floor_half_of_a_long_prompt(models):
    """--max-length 41 (odd): a prompt over the limit keeps its last floor(41 / 2) = 20 tokens
    (kto.h's rule, as for pairs; tokenize() above) and the completion the remaining 21; every
    example's log-ratio l = log pi - log pi_ref on those tokens against PyTorch (float64)."""
    tmp = models
    out = tmp / "o_odd_max_length"
    harness("kto-grad", "--model", tmp / "policy", "--ref", tmp / "ref", "--data", tmp / "data.jsonl", "--out", out,
            "--divergence", "rkl", "--beta", 0.1, "--max-length", 41)
    res = json.loads((out / "result.json").read_text())
    pol, ref = GPT2(**CFG).double(), GPT2(**CFG).double()
    pol.load_hf(str(tmp / "policy"))
    ref.load_hf(str(tmp / "ref"))
    toks = [tokenize(r, 41) for r in ROWS]
    assert [len(P) for P, _ in toks][4] == 20 and sum(map(len, toks[4])) == 41   # the long row is cut
    with torch.no_grad():
        want = [float(seq_logp(pol, P, C) - seq_logp(ref, P, C)) for P, C in toks]
    got = [e[0] for e in res["examples"]]
    assert np.max(np.abs(np.array(got) - np.array(want))) < 2e-5, (got, want)   # float32 sums: ~4e-6


def test_kto_cases_exercise_the_clamp(models):
    """Across CASES some micro-batch has z0 > 0 and some has z0 clamped to 0."""
    tmp = models
    seen = []
    for case in CASES:   # computed here if the test above ran elsewhere (another xdist worker)
        res, _ = kto_grad(tmp, *case)
        seen += [e[2] for e in res["examples"]]
    assert max(seen) > 0 and min(seen) == 0


def test_missing_or_bad_label_is_an_error(models, tmp_path):
    tmp = models
    # a second object (or any text) after the first on a line is an error: it was dropped silently
    (tmp_path / "two.jsonl").write_text(json.dumps(ROWS[1]) + "\n" + json.dumps(ROWS[0]) + " " + json.dumps(ROWS[1]) + "\n")
    r = fdpo("kto", "--model", tmp / "policy", "--data", tmp_path / "two.jsonl", "--out", tmp_path / "o",
             "--steps", "1", "--quiet", check=False)
    assert r.returncode != 0 and f"{tmp_path / 'two.jsonl'}:2: unexpected text after the JSON object" in r.stderr, r.stderr
    # a NUL (escaped or a raw byte) cut the string there: KTO trained on the part before it
    nul = [(json.dumps(dict(ROWS[0], completion="a")).replace('"a"', r'"a\u0000tail"'), "field 'completion' contains a NUL"),
           (json.dumps(dict(ROWS[0], completion="a")).replace('"a"', '"a\x00tail"'), "field 'completion' contains a NUL"),
           (json.dumps(ROWS[0]).replace('"label"', r'"label\u0000_old"'), "(a key)' contains a NUL")]
    for bad, what in ((dict(ROWS[0]), "missing field 'label'"), (dict(ROWS[0], label="yes"), "'label' must be true or false"),
                      *nul):
        if what.startswith("missing"):
            bad.pop("label")
        write_jsonl(tmp_path / "bad.jsonl", [ROWS[1], bad])
        r = fdpo("kto", "--model", tmp / "policy", "--data", tmp_path / "bad.jsonl", "--out", tmp_path / "o",
                 "--steps", "1", "--quiet", check=False)
        assert r.returncode != 0 and f"{tmp_path / 'bad.jsonl'}:2" in r.stderr and what in r.stderr, r.stderr
    r = fdpo("kto", "--model", tmp / "policy", "--data", tmp / "data.jsonl", "--out", tmp_path / "o",
             "--divergence", "tv", check=False)
    assert r.returncode != 0 and "--divergence tv" in r.stderr
    # a reward model is not a policy
    rmd = tmp_path / "rmdir"
    GPT2(**CFG).save_hf(str(rmd), config_extra={"architectures": ["GPT2ForSequenceClassification"], "num_labels": 1},
                        extra={"score.weight": torch.zeros(1, CFG["n_embd"])})
    save_byte_tokenizer(str(rmd))
    r = fdpo("kto", "--model", rmd, "--data", tmp / "data.jsonl", "--out", tmp_path / "o3", check=False)
    assert r.returncode != 0 and f"--model {rmd}: a reward model" in r.stderr, r.stderr


def test_kto_run_logs_trl_metrics_and_resumes(models, tmp_path):
    tmp = models
    common = ["--model", tmp / "policy", "--data", tmp / "data.jsonl", "--steps", "4", "--batch-size", "3",
              "--threads", "1", "--quiet", "--eval-fraction", "0", "--lr", "1e-3", "--divergence", "js"]
    fdpo("kto", *common, "--out", tmp_path / "a")
    lines = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    for k in ("loss", "kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen",
              "logps/rejected", "grad_norm", "learning_rate", "epoch"):
        assert k in lines[-1], k
    fdpo("kto", *common, "--out", tmp_path / "b", "--stop-at", "2")
    fdpo("kto", *common, "--out", tmp_path / "b", "--resume")
    # weights, AdamW moments and metrics: each step once, the same numbers
    assert [m["step"] for m in assert_same_run(tmp_path / "a", tmp_path / "b")] == [1, 2, 3, 4]


RESUME_NEEDS = "resume needs the same files and tokenizer"


def test_resume_refuses_changed_held_out_examples(models, tmp_path):
    """The resume fingerprint covers the held-out examples, --eval-file's and the --eval-fraction
    split's, as dpo's does (docs/kto.md): an edited held-out answer or label was accepted and
    the eval_* after the resume were computed on other data. The error names the set that
    changed. A state saved before the held-out set had its own fingerprint (no "eval_data")
    still resumes."""
    tmp = models
    train, held = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    write_jsonl(train, ROWS[:4])
    write_jsonl(held, ROWS[4:])
    common = ["kto", "--model", tmp / "policy", "--data", train, "--eval-file", held, "--batch-size", 2, "--steps", 4,
              "--eval-every", 1, "--lr", "1e-3", "--threads", 1, "--quiet"]
    fdpo(*common, "--out", tmp_path / "full")
    fdpo(*common, "--out", tmp_path / "part", "--stop-at", 2)
    for edited in (dict(ROWS[5], label=not ROWS[5]["label"]), dict(ROWS[5], completion=" another answer")):
        write_jsonl(held, [ROWS[4], edited, ROWS[6]])
        r = fdpo(*common, "--out", tmp_path / "part", "--resume", check=False)
        assert r.returncode == 1 and r.stderr.endswith(
            f"fdpo kto: --resume: the held-out data (--eval-file {held}) differ from the saved run's (3 items then, "
            f"3 now): {RESUME_NEEDS}\n"), r.stderr
    write_jsonl(held, ROWS[4:])
    state = json.loads((tmp_path / "part" / "training_state.json").read_text())
    assert state["eval_data"]["n_items"] == 3
    shutil.copytree(tmp_path / "part", tmp_path / "older")   # as an fdpo before "eval_data" saved it
    del state["eval_data"]
    (tmp_path / "older" / "training_state.json").write_text(json.dumps(state))
    for part in ("part", "older"):
        fdpo(*common, "--out", tmp_path / part, "--resume")
        assert [m["step"] for m in assert_same_run(tmp_path / "full", tmp_path / part)] == [0, 1, 2, 3, 4]

    # the --eval-fraction split: an edit of any line is refused, the held-out ones as such
    d = tmp_path / "d.jsonl"
    rows = [{"prompt": f"P{i}", "completion": f" answer number {i}", "label": i % 2 == 0} for i in range(10)]
    write_jsonl(d, rows)
    split = ["kto", "--model", tmp / "policy", "--data", d, "--eval-fraction", 0.2, "--batch-size", 2, "--steps", 4,
             "--eval-every", 1, "--lr", "1e-3", "--threads", 1, "--quiet", "--out", tmp_path / "split"]
    fdpo(*split, "--stop-at", 2)
    n_eval = json.loads((tmp_path / "split" / "data_summary.json").read_text())["eval_examples"]
    said = []
    for i in range(len(rows)):
        write_jsonl(d, rows[:i] + [dict(rows[i], completion=" reply")] + rows[i + 1:])
        r = fdpo(*split, "--resume", check=False)
        assert r.returncode == 1, (i, r.stderr)
        said.append(r.stderr.splitlines()[-1])
    held_out = (f"fdpo kto: --resume: the held-out data (the --eval-fraction 0.2 split of --data {d}) differ from the "
                f"saved run's (2 items then, 2 now): {RESUME_NEEDS}")
    training = f"fdpo kto: --resume: the training data differ from the saved run's (8 items then, 8 now): {RESUME_NEEDS}"
    assert sorted(said) == sorted([held_out] * 2 + [training] * 8) and n_eval == 2, said


def test_resume_of_another_commands_run_is_refused_before_its_files_are_read(models, tmp_path):
    """kto --resume on a dpo run (and dpo --resume on a kto run) took that run's saved flags,
    read its --eval-file as its own data and failed on it ("missing field 'label'"), a file the
    command line never named, before saying the run is another command's."""
    tmp = models
    pairs, pairs_eval = tmp_path / "pairs.jsonl", tmp_path / "pairs_eval.jsonl"
    write_jsonl(pairs, [{"prompt": p, "chosen": " b", "rejected": " c"} for p in ("a", "d", "g")])
    write_jsonl(pairs_eval, [{"prompt": p, "chosen": " y", "rejected": " z"} for p in ("x", "u")])
    write_jsonl(tmp_path / "k_eval.jsonl", ROWS[:2])
    runs = {"dpo": ["--data", pairs, "--eval-file", pairs_eval],
            "kto": ["--data", tmp / "data.jsonl", "--eval-file", tmp_path / "k_eval.jsonl"]}
    for kind, data in runs.items():
        fdpo(kind, "--model", tmp / "policy", *data, "--batch-size", 2, "--steps", 4, "--threads", 1, "--quiet",
             "--out", tmp_path / kind, "--stop-at", 2)
    for kind, other in (("kto", "dpo"), ("dpo", "kto")):
        r = fdpo(kind, "--model", tmp / "policy", *runs[kind][:2], "--out", tmp_path / other, "--resume", "--threads", 1,
                 check=False)
        assert r.returncode == 1 and r.stderr == \
            f"fdpo {kind}: --resume: {tmp_path / other} holds a '{other}' run, not '{kind}'\n", r.stderr


def word_rows(rng, n):
    """Unpaired data labelled by a synthetic rule: completions from the first four words are
    desirable, from the last four undesirable."""
    words = ["apple", "blue", "cat", "dog", "egg", "fig", "green", "hat"]
    rows = []
    for _ in range(n):
        good = rng.random() < 0.5
        w = [rng.choice(words[:4] if good else words[4:]) for _ in range(rng.randint(1, 4))]
        rows.append({"prompt": rng.choice(["Say:", "Q:"]), "completion": " " + " ".join(w), "label": good})
    return rows


@pytest.mark.parametrize("div", ["rkl", "js"])
def test_kto_separates_held_out_examples(tmp_path, div):
    """After a short run the implicit reward beta * l, computed in PyTorch from the saved
    checkpoint and the reference, is higher on held-out desirable completions than on
    undesirable ones (it is 0 for both at the start)."""
    import random
    rng = random.Random(5)
    write_jsonl(tmp_path / "train.jsonl", word_rows(rng, 200))
    held = word_rows(rng, 40)
    write_jsonl(tmp_path / "held.jsonl", held)
    base = GPT2(**CFG, seed=1)
    base.save_hf(str(tmp_path / "base"))
    save_byte_tokenizer(str(tmp_path / "base"))
    fdpo("kto", "--model", tmp_path / "base", "--data", tmp_path / "train.jsonl", "--eval-file", tmp_path / "held.jsonl",
         "--out", tmp_path / "kto", "--beta", "0.1", "--lr", "1e-3", "--batch-size", "8", "--epochs", "2",
         "--threads", "1", "--quiet", "--divergence", div)
    pol = GPT2(**CFG)
    pol.load_hf(str(tmp_path / "kto"))
    with torch.no_grad():
        r = {True: [], False: []}
        for row in held:
            P, C = tokenize(row)
            r[row["label"]].append(0.1 * (seq_logp(pol, P, C) - seq_logp(base, P, C)).item())
    assert np.mean(r[True]) - np.mean(r[False]) > 0.5, (np.mean(r[True]), np.mean(r[False]))


@pytest.mark.parametrize("policy,div", [("policy_up", "rkl"), ("policy", "js")])
def test_kto_run_logs_the_trl_metric_values(models, tmp_path, policy, div):
    """The values `fdpo kto` logs at step 1 (before its update) against TRL's definitions
    computed here in PyTorch float64 on the same weights: one step over all rows in file order
    (one micro-batch, so the mismatched KL pairs are trl_kto's): loss, kl (z0), rewards/* =
    beta * l and scores/* = beta * s~(l) averaged per side, logps/* the policy's summed
    log-probs, grad_norm the gradient's global norm before clipping. (The earlier run test
    checked only that the names are there.)"""
    tmp, beta = models, 0.5
    fdpo("kto", "--model", tmp / policy, "--ref", tmp / "ref", "--data", tmp / "data.jsonl", "--out", tmp_path / "k",
         "--divergence", div, "--beta", beta, "--steps", 1, "--batch-size", len(ROWS), "--shuffle=false",
         "--max-length", MAX_LEN, "--eval-fraction", 0, "--lr", "1e-3", "--threads", 1, "--quiet")
    m = json.loads((tmp_path / "k" / "metrics.jsonl").read_text().splitlines()[0])
    assert m["step"] == 1
    pol, ref = GPT2(**CFG).double(), GPT2(**CFG).double()
    pol.load_hf(str(tmp / policy))
    ref.load_hf(str(tmp / "ref"))
    toks = [tokenize(r) for r in ROWS]
    labels = [r["label"] for r in ROWS]
    loss, z0s = trl_kto(pol, ref, toks, labels, div, beta, 1.0, 1.0, 0)
    loss.backward()
    grad_norm = float(torch.sqrt(sum((p.grad ** 2).sum() for p in pol.named().values())))
    with torch.no_grad():
        lp = [float(seq_logp(pol, P, C)) for P, C in toks]
        l = [a - float(seq_logp(ref, P, C)) for a, (P, C) in zip(lp, toks)]
        sc = [float(s_tilde(div, torch.tensor(x, dtype=torch.float64))) for x in l]
    side = lambda xs, lab: float(np.mean([x for x, y in zip(xs, labels) if y == lab]))
    want = {"loss": loss.item(), "kl": z0s[0], "grad_norm": grad_norm,
            "rewards/chosen": beta * side(l, True), "rewards/rejected": beta * side(l, False),
            "rewards/margins": beta * (side(l, True) - side(l, False)),
            "scores/chosen": beta * side(sc, True), "scores/rejected": beta * side(sc, False),
            "logps/chosen": side(lp, True), "logps/rejected": side(lp, False)}
    for k, v in want.items():
        assert abs(m[k] - v) <= 1e-5 * max(1.0, abs(v)), (k, m[k], v)
    if policy == "policy_up":   # z0 > 0 here: the clamp is not what makes kl agree
        assert m["kl"] > 1e-3, m["kl"]
    if div == "js":   # s~(l) != l: the scores are not the rewards
        assert abs(m["scores/chosen"] - m["rewards/chosen"]) > 1e-3


def test_kl_is_the_mean_over_the_steps_examples(models, tmp_path):
    """7 examples in micro-batches of 2: 2, 2 and 3 (a last micro-batch of one example joins
    the one before: its KL pair would be its own prompt, the estimate --batch-size 1 is refused
    for). kl is their z0 weighted by example count (the mean over the step's 7 examples), as
    docs/kto.md says; the equal-weight mean of the micro-batch values (TRL's) is another
    number here (docs/kto.md said it was that one). The loss is the reference's over the same
    micro-batches."""
    tmp, beta = models, 0.5
    fdpo("kto", "--model", tmp / "policy_up", "--ref", tmp / "ref", "--data", tmp / "data.jsonl", "--out",
         tmp_path / "k", "--divergence", "rkl", "--beta", beta, "--steps", 1, "--batch-size", 2, "--grad-accum", 4,
         "--shuffle=false", "--max-length", MAX_LEN, "--eval-fraction", 0, "--lr", 0, "--threads", 1, "--quiet")
    m = json.loads((tmp_path / "k" / "metrics.jsonl").read_text().splitlines()[0])
    pol, ref = GPT2(**CFG).double(), GPT2(**CFG).double()
    pol.load_hf(str(tmp / "policy_up"))
    ref.load_hf(str(tmp / "ref"))
    toks = [tokenize(r) for r in ROWS]
    loss, z0s = trl_kto(pol, ref, toks, [r["label"] for r in ROWS], "rkl", beta, 1.0, 1.0, 2, sizes=micro_sizes(len(ROWS), 2))
    assert micro_sizes(len(ROWS), 2) == [2, 2, 3]
    per_micro = [z0s[0], z0s[2], z0s[4]]
    assert abs(m["kl"] - np.mean(z0s)) <= 1e-5 * max(1.0, abs(np.mean(z0s))), (m["kl"], z0s)
    assert abs(np.mean(z0s) - np.mean(per_micro)) > 1e-3, z0s
    assert abs(m["loss"] - loss.item()) <= 1e-5 * max(1.0, abs(loss.item())), (m["loss"], loss.item())


def test_a_micro_batch_of_one_is_refused(models, tmp_path):
    """z0 pairs completion i with prompt (i+1) mod n of its micro-batch: with n = 1 that is the
    example's own prompt, so the KL estimate was the example's own log-ratio (TRL's KTOTrainer
    refuses a per-device batch size of 1). Refused by the library's option check, before any
    model is read; a data set that leaves one training example is refused too."""
    tmp = models
    r = fdpo("kto", "--model", tmp / "policy", "--data", tmp / "data.jsonl", "--out", tmp_path / "k2", "--steps", 2,
             "--batch-size", 1, check=False)
    assert r.returncode == 1 and r.stderr == (
        "fdpo kto: --batch-size: KTO needs at least 2 examples per micro-batch (got 1): its KL estimate pairs each "
        "completion with another example's prompt, and in a micro-batch of 1 that is its own\n"), r.stderr
    assert not (tmp_path / "k2").exists()
    write_jsonl(tmp_path / "one.jsonl", ROWS[:1])
    r = fdpo("kto", "--model", tmp / "policy", "--data", tmp_path / "one.jsonl", "--out", tmp_path / "k3", "--steps", 2,
             "--eval-fraction", 0, "--quiet", check=False)
    assert r.returncode == 1 and (f"fdpo kto: {tmp_path / 'one.jsonl'}: 1 training example left after the eval split: "
                                  "KTO's KL estimate needs at least 2 per micro-batch\n") in r.stderr, r.stderr


def test_a_held_out_set_of_one_is_not_evaluated(models, tmp_path):
    """The held-out micro-batch of one example paired it with its own prompt, so z0 was its own
    log-ratio and eval_loss read 0.5 whatever the model (the default --eval-fraction 0.1 of 10
    examples holds out one). The split's one is now kept for training, as --eval-fraction 0
    would (the same parameters), with a warning and no eval_*; an --eval-file of one example
    is refused like a training micro-batch of one."""
    tmp = models
    write_jsonl(tmp_path / "ten.jsonl", (ROWS * 10)[:10])
    args = ["kto", "--model", tmp / "policy", "--data", tmp_path / "ten.jsonl", "--steps", 2, "--batch-size", 2,
            "--lr", "1e-3", "--eval-every", 1, "--threads", 1]
    r = fdpo(*args, "--out", tmp_path / "k")
    assert ("fdpo kto: warning: --eval-fraction 0.1 holds out 1 of 10 examples, and KTO's KL estimate needs 2 per "
            "micro-batch: it is kept for training and no eval_* is written (give more examples or --eval-file)\n") in r.stderr
    rows = [json.loads(x) for x in (tmp_path / "k" / "metrics.jsonl").read_text().splitlines()]
    assert rows and not any(k.startswith("eval_") for m in rows for k in m), rows
    fdpo(*args[:-4], "--threads", 1, "--out", tmp_path / "k0", "--eval-fraction", 0)
    assert (tmp_path / "k" / "model.safetensors").read_bytes() == (tmp_path / "k0" / "model.safetensors").read_bytes()
    write_jsonl(tmp_path / "one.jsonl", ROWS[:1])
    r = fdpo("kto", "--model", tmp / "policy", "--data", tmp / "data.jsonl", "--eval-file", tmp_path / "one.jsonl",
             "--out", tmp_path / "k1", "--steps", 2, "--batch-size", 2, "--quiet", check=False)
    assert r.returncode == 1 and r.stderr.endswith(
        f"fdpo kto: --eval-file {tmp_path / 'one.jsonl'}: 1 example: KTO's KL estimate needs at least 2 per "
        "micro-batch\n"), r.stderr
    assert not (tmp_path / "k1").exists()
    # two held out: evaluated (each paired with the other's prompt)
    fdpo("kto", "--model", tmp / "policy", "--data", tmp / "data.jsonl", "--eval-file", tmp_path / "ten.jsonl",
         "--out", tmp_path / "k2", "--steps", 1, "--batch-size", 2, "--eval-every", 1, "--quiet")
    assert any("eval_loss" in json.loads(x) for x in (tmp_path / "k2" / "metrics.jsonl").read_text().splitlines())


def test_unpaired_data_checks(models, tmp_path):
    """A prompt string that is a message list (how samples carry one) is checked as the list
    form is (role 'tool' was rendered); --max-length 1 is refused by its option check (it
    failed inside the trainer: "batch: seq_offset, tokens and targets are required"); a BOM
    before a blank line is skipped (it was "invalid JSON near column 1")."""
    tmp = models
    base = ["kto", "--model", tmp / "policy", "--steps", 1, "--batch-size", 2, "--eval-fraction", 0, "--quiet",
            "--threads", 1]
    rows = [dict(ROWS[0], prompt='[{"role":"tool","content":"hi"}]'), ROWS[1]]
    write_jsonl(tmp_path / "t.jsonl", rows)
    r = fdpo(*base, "--data", tmp_path / "t.jsonl", "--out", tmp_path / "t", check=False)
    assert r.returncode == 1 and r.stderr.endswith(
        f"fdpo kto: {tmp_path / 't.jsonl'}:1: prompt[0].role is 'tool'; expected system, user or assistant\n"), r.stderr
    r = fdpo(*base, "--data", tmp / "data.jsonl", "--max-length", 1, "--out", tmp_path / "m", check=False)
    assert r.returncode == 1 and r.stderr.endswith(
        "fdpo kto: --max-length 1 leaves no room for a prompt and a completion\n"), r.stderr
    (tmp_path / "bom.jsonl").write_text("\ufeff\n" + open(tmp / "data.jsonl").read())
    fdpo(*base, "--data", tmp_path / "bom.jsonl", "--out", tmp_path / "b")
    fdpo(*base, "--data", tmp / "data.jsonl", "--out", tmp_path / "a")
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_skipped_and_truncated_examples_are_reported_as_dpo_reports_pairs(models, tmp_path):
    """--on-long / --bad-pairs skip: the counts, the first line skipped per reason and
    OUT/data_summary.json as for dpo (kto said only "FILE: no examples" when nothing was left,
    named no skipped line and wrote no data_summary.json). Expected values counted here with
    the documented tokenization (tokenize above)."""
    tmp = models
    long_row = {"prompt": "p" * 30, "completion": "c" * 30, "label": True}
    rows = [ROWS[0], long_row, dict(ROWS[1], completion=""), ROWS[6], dict(long_row, label=False)]
    d = tmp_path / "d.jsonl"
    write_jsonl(d, rows)
    too_long = [i + 1 for i, r in enumerate(rows) if r["completion"] and sum(map(len, tokenize(r, 0))) > MAX_LEN]
    assert too_long == [2, 5]
    base = ["kto", "--model", tmp / "policy", "--steps", 1, "--batch-size", 2, "--eval-fraction", 0, "--threads", 1,
            "--max-length", MAX_LEN]
    r = fdpo(*base, "--data", d, "--out", tmp_path / "k", "--on-long", "skip", "--bad-pairs", "skip")
    assert f"{d}: 2 examples from 5 lines; examples truncated: 0 in the prompt, 0 in the completion; skipped: 1 empty, " \
           "2 too long\n" in r.stderr, r.stderr
    assert f"{d}:2: first example skipped as too long\n" in r.stderr and \
           f"{d}:3: first example skipped as empty completion\n" in r.stderr, r.stderr
    assert f"{d}: 1 desirable, 1 undesirable\n" in r.stderr, r.stderr
    summary = json.loads((tmp_path / "k" / "data_summary.json").read_text())
    assert summary == {
        "data": {"lines": 5, "examples": 2, "conversational": 0, "truncated_prompt": 0, "truncated_completion": 0,
                 "skipped": {"empty_completion": 1, "too_long": 2}, "desirable": 1, "undesirable": 1},
        "train_examples": 2, "eval_examples": 0, "max_length": MAX_LEN, "max_prompt_length": MAX_LEN // 2,
        "reference": {"mode": "live"}}
    # truncation (the default): which side was cut, counted by the reference's rule
    full = [tokenize(r, 0) for r in ROWS]
    cut = [tokenize(r) for r in ROWS]
    fdpo(*base, "--data", tmp / "data.jsonl", "--out", tmp_path / "t")
    data = json.loads((tmp_path / "t" / "data_summary.json").read_text())["data"]
    assert data["truncated_prompt"] == sum(len(c[0]) < len(f[0]) for f, c in zip(full, cut)) == 1
    assert data["truncated_completion"] == sum(len(c[1]) < len(f[1]) for f, c in zip(full, cut)) == 1
    assert data["conversational"] == 1 and data["examples"] == len(ROWS)
    # nothing left: the counts and reasons, as dpo's "no usable preference pairs"
    write_jsonl(d, [long_row, dict(ROWS[1], completion=""), long_row])
    r = fdpo(*base, "--data", d, "--out", tmp_path / "n", "--on-long", "skip", "--bad-pairs", "skip", check=False)
    assert r.returncode == 1 and r.stderr.endswith(
        f"fdpo kto: {d}: no usable examples (3 lines read, 3 skipped: 1 empty completion, 2 too long for "
        "--max-length)\n"), r.stderr


def test_a_prompt_kept_as_its_messages_json_text_counts_as_conversational(models, tmp_path):
    """data_summary.json's "conversational" counts every example rendered with the chat
    template, a prompt kept as its messages' JSON text (docs/dpo.md) too, as dpo counts pairs:
    kto counted only message-list completions. Expected: counted from the file's lines."""
    tmp = models
    pm = json.dumps([{"role": "user", "content": "hi"}])
    rows = [{"prompt": pm, "completion": " hello", "label": True}, ROWS[6], ROWS[2],
            {"prompt": pm, "completion": " go away", "label": False}, ROWS[0]]
    d = tmp_path / "d.jsonl"
    write_jsonl(d, rows)

    def is_messages(v):
        return isinstance(v, list) and all(isinstance(m, dict) and {"role", "content"} <= m.keys() for m in v)

    def conversational(row):
        if isinstance(row["completion"], list):
            return True
        try:
            return is_messages(json.loads(row["prompt"]))
        except ValueError:
            return False
    expected = sum(conversational(json.loads(line)) for line in d.read_text().splitlines())
    fdpo("kto", "--model", tmp / "policy", "--data", d, "--eval-file", d, "--out", tmp_path / "k", "--steps", 1,
         "--batch-size", 2, "--threads", 1, "--quiet")
    summary = json.loads((tmp_path / "k" / "data_summary.json").read_text())
    assert summary["data"]["conversational"] == summary["eval_data"]["conversational"] == expected == 3, summary


def test_the_progress_line_shows_the_margin_only_where_it_is_defined(models, tmp_path):
    """rewards/margins needs desirable and undesirable examples in the step: metrics.jsonl left
    it out of a one-sided step, but the progress line printed `margin -nan`"""
    tmp = models
    rows = [r for r in ROWS if r["label"]]   # desirable only: no step has a margin
    write_jsonl(tmp_path / "good.jsonl", rows)
    r = fdpo("kto", "--model", tmp / "policy", "--data", tmp_path / "good.jsonl", "--out", tmp_path / "g", "--steps", 2,
             "--batch-size", 2, "--eval-fraction", 0, "--threads", 1)
    steps = [line for line in r.stderr.splitlines() if line.startswith("step ")]
    assert len(steps) == 2 and all("| kl " in s and "margin" not in s and "nan" not in s for s in steps), r.stderr
    assert all("rewards/margins" not in json.loads(x) for x in (tmp_path / "g" / "metrics.jsonl").read_text().splitlines())
    # both kinds in every step: the margin is printed, as logged
    r = fdpo("kto", "--model", tmp / "policy", "--data", tmp / "data.jsonl", "--out", tmp_path / "b", "--steps", 1,
             "--batch-size", len(ROWS), "--shuffle=false", "--eval-fraction", 0, "--threads", 1)
    steps = [line for line in r.stderr.splitlines() if line.startswith("step ")]
    m = json.loads((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()[0])
    assert len(steps) == 1 and f"| margin {m['rewards/margins']:.3g}" in steps[0], r.stderr


@pytest.mark.parametrize("every", [0, 2])
def test_the_final_held_out_metrics_go_to_eval_summary(models, tmp_path, every):
    """kto with a held-out set writes OUT/eval_summary.json as dpo and rm do: the final model's
    eval_* (TRL's names, as a metrics line logs them) against TRL's definitions in PyTorch
    float64 on the saved weights. --eval-every 0 used to hold the examples out of training and
    never evaluate them (a given --eval-file was read and unused); --eval-every 2 of 3 steps
    evaluates the last step (not a multiple) once, and its line is the summary. A run stopped
    at step 2 and resumed writes the same file byte for byte."""
    tmp, beta, div = models, 0.5, "js"
    train, held = tmp_path / "train.jsonl", tmp_path / "held.jsonl"
    write_jsonl(train, ROWS[:4])
    write_jsonl(held, ROWS[4:])
    common = ["kto", "--model", tmp / "policy", "--ref", tmp / "ref", "--data", train, "--eval-file", held,
              "--divergence", div, "--beta", beta, "--batch-size", 2, "--steps", 3, "--lr", "3e-2",
              "--max-length", MAX_LEN, "--eval-every", every, "--threads", 1, "--quiet"]
    fdpo(*common, "--out", tmp_path / "a")
    fdpo(*common, "--out", tmp_path / "b", "--stop-at", 2)
    assert not (tmp_path / "b" / "eval_summary.json").exists()
    fdpo(*common, "--out", tmp_path / "b", "--resume")
    assert (tmp_path / "a" / "eval_summary.json").read_bytes() == (tmp_path / "b" / "eval_summary.json").read_bytes()
    got = json.loads((tmp_path / "a" / "eval_summary.json").read_text())
    lines = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in lines if "eval_loss" in m]
    assert [m["step"] for m in evals] == ([] if every == 0 else [0, 2, 3])
    if evals:
        assert {k: v for k, v in evals[-1].items() if k.startswith("eval_")} == \
            {k: v for k, v in got.items() if k.startswith("eval_")}
    pol, ref = GPT2(**CFG).double(), GPT2(**CFG).double()
    pol.load_hf(str(tmp_path / "a"))
    ref.load_hf(str(tmp / "ref"))
    rows = ROWS[4:]
    toks = [tokenize(r) for r in rows]
    labels = [r["label"] for r in rows]
    loss, z0s = trl_kto(pol, ref, toks, labels, div, beta, 1.0, 1.0, 2, sizes=micro_sizes(len(rows), 2))
    with torch.no_grad():
        lp = [float(seq_logp(pol, P, C)) for P, C in toks]
        l = [a - float(seq_logp(ref, P, C)) for a, (P, C) in zip(lp, toks)]
        sc = [float(s_tilde(div, torch.tensor(x, dtype=torch.float64))) for x in l]
    side = lambda xs, lab: float(np.mean([x for x, y in zip(xs, labels) if y == lab]))
    want = {"eval_loss": loss.item(), "eval_kl": float(np.mean(z0s)),
            "eval_rewards/chosen": beta * side(l, True), "eval_rewards/rejected": beta * side(l, False),
            "eval_rewards/margins": beta * (side(l, True) - side(l, False)),
            "eval_scores/chosen": beta * side(sc, True), "eval_scores/rejected": beta * side(sc, False),
            "eval_logps/chosen": side(lp, True), "eval_logps/rejected": side(lp, False)}
    assert set(got) == {"step", "examples", *want}, got
    assert got["step"] == 3 and got["examples"] == 3
    for k, v in want.items():
        assert abs(got[k] - v) <= 1e-5 * max(1.0, abs(v)), (k, got[k], v)
    initial = GPT2(**CFG).double()
    initial.load_hf(str(tmp / "policy"))
    start, _ = trl_kto(initial, ref, toks, labels, div, beta, 1.0, 1.0, 2, sizes=micro_sizes(len(rows), 2))
    assert abs(start.item() - got["eval_loss"]) > 1e-3, (start.item(), got["eval_loss"])   # the final weights
