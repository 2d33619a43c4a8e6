"""Shared pieces of the f-DPO tests: an independent byte-level tokenisation of the
preference format (docs/dpo.md), the f-DPO losses written from the paper's / TRL's
formulas in PyTorch, and helpers to run fdpo."""
import json
import os
import subprocess

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
HARNESS = os.environ.get("FDPO_HARNESS", os.path.join(HERE, "../../build/fdpo-harness"))
FDPO = os.environ.get("FDPO_BIN", os.path.join(HERE, "../../build/fdpo"))
EOT = 256


def harness(*args, check=True, timeout=300):
    r = subprocess.run([HARNESS, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def fdpo(*args, check=True, timeout=300, env=None):
    r = subprocess.run([FDPO, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def run_with_file_size_limit(limit, *args, timeout=300):
    """fdpo under RLIMIT_FSIZE: a write past `limit` bytes fails (EFBIG), as on a full disk"""
    import resource
    import signal

    def limit_writes():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # the write fails instead of killing the process
    return subprocess.run([FDPO, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          preexec_fn=limit_writes)


def rel_err(got, ref):
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    return float(np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-30))


# metrics that time a run: they differ between otherwise identical runs
TIMING = ("tokens_per_sec", "time/sampling", "time/scoring", "time/training")


def untimed_metrics(path):
    """metrics.jsonl's records without their TIMING keys"""
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in open(path)]


def state_files(d):
    """a run directory's weights and training state (AdamW moments), as bytes"""
    return {f: (d / f).read_bytes() for f in ("model.safetensors", "training_state.safetensors")}


def assert_same_run(a, b):
    """Run directories a and b (pathlib) ended in the same state: byte-identical weights and
    AdamW moments, and the same metrics but for the timings. Returns those metrics."""
    assert state_files(b) == state_files(a)
    ma = untimed_metrics(a / "metrics.jsonl")
    assert untimed_metrics(b / "metrics.jsonl") == ma
    return ma


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")


def save_byte_tokenizer(directory):
    with open(os.path.join(directory, "fdpo_tokenizer.json"), "w") as f:
        json.dump({"type": "byte"}, f)


# ---- the documented data rules, re-implemented for the byte-level tokenizer ----

def render_messages(msgs):
    return "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in msgs)


def split_pair(row):
    """-> (prompt text, chosen completion text, rejected completion text)."""
    c, r, p = row["chosen"], row["rejected"], row.get("prompt")
    if isinstance(c, list):
        if p is None:
            k = 0
            while k < min(len(c), len(r)) and c[k] == r[k]:
                k += 1
            p, c, r = c[:k], c[k:], r[k:]
        comp = lambda ms: ms[0]["content"] + "\n" + render_messages(ms[1:])
        return render_messages(p) + "<|assistant|>\n", comp(c), comp(r)
    if p is None:
        bc, br = c.encode(), r.encode()
        k = 0
        while k < min(len(bc), len(br)) and bc[k] == br[k]:
            k += 1
        while k > 0 and k < len(bc) and (bc[k] & 0xC0) == 0x80:
            k -= 1
        if k > 0 and bc[k - 1:k] == b" ":
            k -= 1
        return bc[:k].decode(), bc[k:].decode(), br[k:].decode()
    return p, c, r


def tokenize_pair(row, max_length=0, max_prompt_length=0):
    """Byte-level ids of (prompt, chosen, rejected) after the truncation rule."""
    p, c, r = split_pair(row)
    P = list(p.encode()) or [EOT]
    C = list(c.encode()) + [EOT]
    R = list(r.encode()) + [EOT]
    if max_length and len(P) + max(len(C), len(R)) > max_length:
        mp = max_prompt_length or max_length // 2
        if len(P) > mp:
            P = P[len(P) - mp:]
        budget = max_length - len(P)
        C, R = C[:budget], R[:budget]
    return P, C, R


# ---- f-DPO in PyTorch (float64) ----

CAP = 88.7228  # log(FLT_MAX) rounded down, TRL's cap for float32
GRAD_CAP = 64.0  # docs/objectives.md: the derivative's exponent cap (the backward stays in float)


def cap_exp(x):
    """exp(min(x, CAP)). fdpo's convention beyond the cap: the derivative is the exp formula
    evaluated at min(x, GRAD_CAP) (a straight-through clamp at the lower cap), not the clamp's
    zero."""
    xg = x - (x - x.clamp(max=GRAD_CAP)).detach()
    g = torch.exp(xg)
    return torch.exp(x.clamp(max=CAP)).detach() + (g - g.detach())


def score(div, l):
    """s(l) of DESIGN.md §2 (paper convention), additive constants dropped."""
    if div == "rkl":
        return l
    if div == "fkl":
        return -cap_exp(-l)
    if div == "js":
        return F.logsigmoid(l)
    if div.startswith("alpha:"):
        a = float(div.split(":")[1])
        return (1 - cap_exp(-a * l)) / a  # -e^(-A l)/A + 1/A (DESIGN's table with its constant)
    raise ValueError(div)


def pair_loss(div, loss, beta, eps, gamma, lw, ll):
    """Per-pair loss of TRL's DPOTrainer / the f-DPO paper on (l_w, l_l) tensors."""
    if loss == "simpo":
        return -F.logsigmoid(beta * (lw - ll) - gamma)
    delta = score(div, lw) - score(div, ll)
    z = beta * delta
    if loss == "sigmoid":
        return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
    if loss == "robust":
        return (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
    if loss == "hinge":
        return torch.relu(1 - z)
    if loss == "ipo":
        return (delta - 1 / (2 * beta)) ** 2
    raise ValueError(loss)


def completion_logps(model, P, comp):
    """Per-token log-probs of comp given P (one sequence, the obvious way), and the logits
    at the positions that predict comp."""
    toks = torch.tensor(P + comp, dtype=torch.long)
    logits = model(toks[:-1])
    lp = torch.log_softmax(logits, dim=-1)
    tl = lp.gather(1, toks[1:, None])[:, 0]
    return tl[len(P) - 1:], logits[len(P) - 1:]


def reward_with_files(tmp_path, kind, model):
    """A --reward that reads files, for the resume checks of rl and online: kind "lexicon" (a
    word list) or "rm" (a reward model trained one step from MODEL). Returns (its path, its
    spec, change), change() editing the word list or re-training the model in place."""
    if kind == "lexicon":
        reward = tmp_path / "w.txt"
        reward.write_text("a\t1\ne\t1\n")
        return reward, f"lexicon:{reward}", lambda: reward.write_text("a\t-5\ne\t3\nx\t2\n")
    reward = tmp_path / "RM"
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps({"prompt": f"prompt {i}:", "chosen": " abc def",
                                                              "rejected": " XYZ 12"}) + "\n" for i in range(8)))
    rm = ["rm", "--model", model, "--data", tmp_path / "pairs.jsonl", "--out", reward, "--threads", 1,
          "--quiet", "--eval-fraction", 0, "--lr", "1e-2"]
    fdpo(*rm, "--steps", 1)
    return reward, f"rm:{reward}", lambda: fdpo(*rm, "--steps", 3, "--overwrite")
