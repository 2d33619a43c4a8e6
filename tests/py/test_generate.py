"""Sampling with the KV cache (fdpo generate, harness eval-logits/eval-sample) against
independent references: PyTorch logits (tests/py/fdpo_ref/gpt2.py), the PyTorch greedy
continuation, and exact sequence distributions enumerated in Python (chi-square)."""
import itertools
import json
import math
import os
import re
import subprocess

import numpy as np
import pytest
import scipy.stats
import torch

from fdpo_ref.gpt2 import GPT2

HERE = os.path.dirname(__file__)
FDPO = os.environ.get("FDPO_BIN", os.path.join(HERE, "../../build/fdpo"))
HARNESS = os.environ.get("FDPO_HARNESS", os.path.join(HERE, "../../build/fdpo-harness"))


# Failures must exit with status 1 exactly: under AddressSanitizer a leak on the error path
# turns it into 23, which "!= 0" would accept.
def run(cmd, *args, env=None, timeout=120):
    e = dict(os.environ)
    if env:
        e.update(env)
    return subprocess.run([cmd, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=e)


def make_model(directory, vocab, seed, n_positions=32, n_embd=16, n_layer=2, n_head=2, scale=1.0,
               byte_tokenizer=False):
    m = GPT2(vocab, n_positions, n_embd, n_layer, n_head, seed=seed)
    if scale != 1.0:  # sharper distributions (wte is the LM head)
        with torch.no_grad():
            m.param("wte.weight").mul_(scale)
    m.save_hf(str(directory))
    if byte_tokenizer:
        with open(os.path.join(str(directory), "fdpo_tokenizer.json"), "w") as f:
            json.dump({"type": "byte", "vocab_size": 257, "eos_token_id": 256}, f)
    return m


def completion_logp(m, ids, toks):
    """PyTorch's log-prob of the completion toks after the prompt ids (float64 log-softmax)"""
    with torch.no_grad():
        lp = torch.log_softmax(m.forward(torch.tensor(ids + toks)).double(), -1)
    return sum(float(lp[len(ids) - 1 + i, t]) for i, t in enumerate(toks))


@pytest.fixture(scope="module")
def byte_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("byte_model")
    m = make_model(d, 257, seed=3, n_positions=64, scale=20.0, byte_tokenizer=True)
    return str(d), m


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """vocab 5, EOT = 4: small enough to enumerate every sequence of up to 3 tokens."""
    d = tmp_path_factory.mktemp("tiny")
    m = make_model(d, 5, seed=11, scale=10.0)
    return str(d), m


# ---------- KV cache vs full forward vs PyTorch ----------

@pytest.mark.parametrize("mode", ["step", "prefill", "batched", "forward"])
def test_kv_cache_logits_match_pytorch(byte_model, tmp_path, mode):
    d, m = byte_model
    ids = [72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 256, 7, 200]
    out = tmp_path / "logits.bin"
    r = run(HARNESS, "eval-logits", d, mode, out, " ".join(map(str, ids)))
    assert r.returncode == 0, r.stderr
    got = np.fromfile(out, dtype=np.float32).reshape(len(ids), 257)
    with torch.no_grad():
        want = m.forward(torch.tensor(ids)).numpy()
    # measured (float32 vs PyTorch): 2.4e-6 abs on max|logit| 7.3, i.e. 3.2e-7 relative; 1.5e-6 is ~5x
    assert np.abs(got - want).max() < 1.5e-6 * max(1.0, np.abs(want).max())


def test_kv_cache_equals_full_forward(byte_model, tmp_path):
    d, _ = byte_model
    ids = "1 2 3 4 5 6 7 8 9 10 11"
    res = {}
    for mode in ["step", "batched", "forward"]:
        r = run(HARNESS, "eval-logits", d, mode, tmp_path / mode, ids)
        assert r.returncode == 0, r.stderr
        res[mode] = np.fromfile(tmp_path / mode, dtype=np.float32)
    # measured: 1.4e-6 for both (max|logit| 7.8); 7e-6 is 5x
    assert np.abs(res["step"] - res["forward"]).max() < 7e-6
    assert np.abs(res["batched"] - res["forward"]).max() < 7e-6


def test_logits_bad_token_is_an_error(byte_model, tmp_path):
    d, _ = byte_model
    r = run(HARNESS, "eval-logits", d, "step", tmp_path / "x", "1 300")
    assert r.returncode == 1
    assert "token id 300 outside the vocabulary" in r.stderr


# ---------- fdpo generate ----------

def generate(d, tmp_path, prompts, *flags, name="p.txt"):
    pf = tmp_path / name
    pf.write_text(prompts)
    out = tmp_path / "out.jsonl"
    r = run(FDPO, "generate", "--model", d, "--data", pf, "--out", out, *flags)
    return r, ([json.loads(l) for l in out.read_text().splitlines()] if r.returncode == 0 else None)


def test_a_nul_byte_in_a_completion_is_kept_as_u_fffd(tmp_path):
    """A byte-level model whose argmax is token 0 (the NUL byte) after any prefix: ln_f's output
    is its bias alone, a long multiple of wte[0]. The text of 3 such tokens is three U+FFFD
    (it was cut at the first NUL: the empty string, and rewards scored that)."""
    m = GPT2(257, 32, 16, 1, 2, seed=4)
    with torch.no_grad():
        wte = m.param("wte.weight")
        wte[0] = 0
        wte[0, 0] = 10.0
        m.param("ln_f.weight").zero_()
        m.param("ln_f.bias").copy_(wte[0])
    d = tmp_path / "m"
    m.save_hf(str(d))
    (d / "fdpo_tokenizer.json").write_text(json.dumps({"type": "byte", "vocab_size": 257, "eos_token_id": 256}))
    r, rows = generate(d, tmp_path, "ab\n", "--temperature", "0", "--max-new-tokens", "3")
    assert r.returncode == 0, r.stderr
    assert rows[0]["tokens"] == [0, 0, 0]
    assert rows[0]["completion"] == "\ufffd" * 3


def test_greedy_equals_pytorch_argmax(byte_model, tmp_path):
    d, m = byte_model
    prompts = ["Hello", "ab", "The quick"]
    r, rows = generate(d, tmp_path, "\n".join(prompts) + "\n", "--temperature", "0", "--max-new-tokens", "12",
                       "--batch-size", "2")
    assert r.returncode == 0, r.stderr
    assert len(rows) == 3
    for row, p in zip(rows, prompts):
        ids = list(p.encode())
        want, logp = [], 0.0
        with torch.no_grad():
            for _ in range(12):
                lp = torch.log_softmax(m.forward(torch.tensor(ids + want)).double()[-1], -1)
                t = int(torch.argmax(lp))
                want.append(t)
                logp += float(lp[t])
                if t == 256:
                    break
        assert row["tokens"] == want
        assert row["prompt"] == p
        assert row["n_tokens"] == len([t for t in want if t != 256])
        assert abs(row["logp"] - logp) < 5e-6  # measured 6.0e-7 (sum of <= 12 float32 log-probs)
        if 256 not in want:
            assert row["completion"].encode("utf-8", "surrogatepass") == bytes(want).decode("utf-8", "replace").encode()


def test_continuous_batching_prompts_of_different_lengths(tmp_path):
    """Prompts of 1 to 19 tokens, n = 3 samples each, top-p 0.95: samples end at different
    steps (EOT or the length limit), and a freed slot takes the next sample at once
    (continuous batching; samples of one prompt that start together share a prefill).
    Every batch size (1 = one sequence at a time; 2 and 5 split prompts' samples across
    refills; 16 holds all) and thread count gives the same tokens for the same seed, and
    each sample's log-prob equals PyTorch's log-probability of its tokens after its own
    prompt (a cache copied from the wrong slot or position would not)."""
    d = tmp_path / "model"
    d.mkdir()
    m = make_model(d, 257, seed=3, n_positions=64, scale=3.0, byte_tokenizer=True)
    prompts = ["a", "hello there", "xy", "the quick brown fox", "q"]
    outs = []
    for batch, threads in [("1", "1"), ("2", "2"), ("5", "1"), ("16", "2")]:
        r, rows = generate(str(d), tmp_path, "\n".join(prompts) + "\n", "--n", "3", "--top-p", "0.95",
                           "--max-new-tokens", "24", "--seed", "5", "--batch-size", batch, "--threads", threads)
        assert r.returncode == 0, r.stderr
        outs.append([x["tokens"] for x in rows])
        # the time split: a sample's first token comes from its prompt's prefill and each
        # later one from a decoding step that fed the token before it, so the steps fed
        # sum(len - 1) tokens; one sequence at a time takes one step per fed token, all 15
        # samples at once take as many steps as the longest sample less one
        m_t = re.search(r"in ([\d.]+)s \([\d.]+ tokens/s\): decoder set-up ([\d.]+)s, prefill ([\d.]+)s, "
                        r"(\d+) decoding steps of (\d+) tokens in ([\d.]+)s", r.stderr)
        assert m_t, r.stderr
        whole, setup, prefill, steps, fed, decode = (float(x) for x in m_t.groups())
        assert fed == sum(len(x["tokens"]) - 1 for x in rows)
        if batch == "1":
            assert steps == fed
        if batch == "16":
            assert steps == max(len(x["tokens"]) for x in rows) - 1
        assert setup + prefill + decode <= whole + 0.02   # printed to 0.01 s each
    assert all(o == outs[0] for o in outs)
    lengths = {len(t) for t in outs[0]}
    assert len(lengths) > 3 and any(t[-1] == 256 for t in outs[0])  # samples really end at different steps
    for k, row in enumerate(rows):
        ids = list(prompts[k // 3].encode())
        toks = row["tokens"]
        want = completion_logp(m, ids, toks)
        assert abs(row["logp"] - want) < 1e-5, k  # <= 24 float32 log-probs
        # n_tokens counts the completion without its EOT (docs/eval.md; it feeds the length
        # reward, len_tokens_* and online's empty-completion check; mutation review)
        assert row["n_tokens"] == len([t for t in toks if t != 256]), k


def test_a_sample_stops_at_the_models_n_positions(byte_model, tmp_path):
    """A prompt of n_positions - 2 tokens leaves room for 2 new tokens: the sample stops there
    ("length"), prompt + completion exactly n_positions, and its log-prob is PyTorch's over
    those tokens (one token more was a sequence the model cannot score; mutation review)"""
    d, m = byte_model   # n_positions 64
    prompt = "ab" * 31   # 62 byte tokens
    r, rows = generate(d, tmp_path, prompt + "\n", "--max-new-tokens", "8", "--seed", "1", "--temperature", "0.7")
    assert r.returncode == 0, r.stderr
    toks = rows[0]["tokens"]
    assert len(prompt) + len(toks) == 64 and rows[0]["finish"] == "length", rows[0]
    assert abs(rows[0]["logp"] - completion_logp(m, list(prompt.encode()), toks)) < 1e-5


def test_jsonl_prompts_and_logp_under_model(byte_model, tmp_path):
    d, m = byte_model
    r, rows = generate(d, tmp_path, '{"prompt": "x"}\n\n{"prompt": "yz"}\n', "--n", "3", "--max-new-tokens", "6",
                       "--seed", "5", name="p.jsonl")
    assert r.returncode == 0, r.stderr
    assert [(x["prompt_index"], x["sample_index"]) for x in rows] == [(p, s) for p in range(2) for s in range(3)]
    for row in rows:
        ids = list(row["prompt"].encode())
        toks = row["tokens"]
        want = completion_logp(m, ids, toks)
        assert abs(row["logp"] - want) < 5e-6  # measured 9.7e-7 with 1 and 2 threads


def test_same_seed_same_samples_regardless_of_batch_and_threads(byte_model, tmp_path):
    d, _ = byte_model
    outs = []
    for batch, threads in [("1", "1"), ("4", "2"), ("16", "1")]:
        r, rows = generate(d, tmp_path, "a\nb\nc\n", "--n", "3", "--max-new-tokens", "8", "--seed", "9",
                           "--batch-size", batch, "--threads", threads)
        assert r.returncode == 0, r.stderr
        outs.append([x["tokens"] for x in rows])
    assert outs[0] == outs[1] == outs[2]
    r, rows = generate(d, tmp_path, "a\nb\nc\n", "--n", "3", "--max-new-tokens", "8", "--seed", "10")
    assert [x["tokens"] for x in rows] != outs[0]


def test_stop_string(byte_model, tmp_path):
    d, _ = byte_model
    # find what greedy generates, then stop on a piece of it
    r, rows = generate(d, tmp_path, "Hello\n", "--temperature", "0", "--max-new-tokens", "12")
    assert r.returncode == 0
    full = bytes(t for t in rows[0]["tokens"] if t < 256)
    stop = full[3:5]
    if len(stop) < 2 or any(b >= 128 for b in full[:5]):
        pytest.skip("greedy continuation is not plain ASCII")
    r, rows2 = generate(d, tmp_path, "Hello\n", "--temperature", "0", "--max-new-tokens", "12", "--stop",
                        stop.decode())
    assert r.returncode == 0, r.stderr
    cut = full.find(stop)
    assert rows2[0]["finish"] == "stop"
    assert rows2[0]["completion"] == full[:cut].decode()
    assert rows2[0]["tokens"] == list(full[:cut + len(stop)])


@pytest.mark.parametrize("content,flags,msg", [
    ('{"prompt": "a"}\n{"prompt": 3}\n', [], "p.txt:2: field \"prompt\" must be a string"),
    ('{"prompt": "a"}\n{oops\n', [], "p.txt:2: invalid JSON"),
    ('{"text": "a"}\n', [], "p.txt:1: missing field \"prompt\""),
    ("a\n", ["--top-p", "0"], "--top-p"),
    ("a\n", ["--top-p", "1.5"], "--top-p"),
    # the value as typed (Python's repr, the shortest text that reads back): %g said "1 is outside (0, 1]"
    ("a\n", ["--top-p", "1.0000001"], "--top-p: %r is outside (0, 1]" % 1.0000001),
    ("a\n", ["--n", "0"], "--n"),
    ("a\n", ["--max-new-tokens", "0"], "--max-new-tokens"),
    ("a\n", ["--temperature", "-1"], "--temperature"),
    ("a\n", ["--stop", ""], "--stop: the stop string is empty"),
    # matched in the completion's bytes, cut in its decoded text: a lone byte cut a character in
    # two (the JSONL line was not UTF-8), U+FFFD cut at an invalid byte while sampling ran on
    ("a\n", ["--stop", "x\ufffd"], "--stop: the stop string holds U+FFFD"),
    # greedy decoding takes the top token whatever top-k/top-p keep: they were accepted, without effect
    ("a\n", ["--temperature", "0", "--top-k", "1"], "--top-k: has no effect with --temperature 0 (greedy decoding)"),
    ("a\n", ["--temperature", "0", "--top-p", "0.5"], "--top-p: has no effect with --temperature 0 (greedy decoding)"),
    ("", [], "p.txt: no prompts (the file is empty)"),
    ("\n  \n\n", [], "p.txt: no prompts (the file holds only blank lines)"),   # it said "is empty"
    # named by FILE:LINE (it said "prompt 2 (blank lines not counted)")
    ("a\n\n" + "b" * 64 + "\n", [], "p.txt:3: the prompt's 64 tokens leave no room to generate (model n_positions 64)"),
])
def test_generate_bad_input(byte_model, tmp_path, content, flags, msg):
    d, _ = byte_model
    r, _ = generate(d, tmp_path, content, *flags)
    assert r.returncode == 1
    assert msg in r.stderr


def test_a_stop_string_that_is_not_utf8_is_refused(byte_model, tmp_path):
    """--stop $'\\xa6' (a lone continuation byte) matched inside a decoded character and cut it
    in two: the completion written was the byte 0xd2 alone, a JSONL line that is not UTF-8"""
    d, _ = byte_model
    (tmp_path / "p.txt").write_text("a\n")
    r = subprocess.run([FDPO, "generate", "--model", str(d), "--data", str(tmp_path / "p.txt"), "--stop", b"\xa6"],
                       capture_output=True, timeout=60)
    assert r.returncode == 1 and b"--stop: the stop string is not valid UTF-8" in r.stderr, r.stderr


def test_a_sample_count_past_size_t_is_refused(byte_model, tmp_path):
    """3 prompts x --n 6148914691236517206 wrapped to 2 records: generate wrote two samples of
    prompt 0 and exited 0 (eval indexed past its arrays: a segfault)"""
    d, _ = byte_model
    (tmp_path / "p.txt").write_text("a\nb\nc\n")
    r = run(FDPO, "generate", "--model", d, "--data", tmp_path / "p.txt", "--max-new-tokens", 2, "--n", 6148914691236517206)
    assert r.returncode == 1 and r.stdout == "" and \
        "--n 6148914691236517206: 3 prompts x 6148914691236517206 samples cannot be held" in r.stderr, r.stderr
    r = run(FDPO, "eval", "--model", d, "--ref", d, "--data", tmp_path / "p.txt", "--max-new-tokens", 2,
            "--n", 2**62)
    assert r.returncode == 1 and "samples cannot be held" in r.stderr, r.stderr


def machine_gb():
    """this machine's physical memory in GB as the messages print it (%.3g), from Python's sysconf"""
    return "%.3g" % (os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1e9)


def test_a_sample_count_beyond_memory_is_refused_by_name(byte_model, tmp_path):
    """2 prompts x --n 10^14: a count that fits size_t but whose records exceed the machine's
    memory failed as "out of memory allocating 12799999999999872 bytes", naming no flag (a
    hunt's find); it is refused naming --n, as a count past size_t is"""
    d, _ = byte_model
    n = 10 ** 14
    (tmp_path / "p.txt").write_text("a\nb\n")
    for cmd in (["generate"], ["eval", "--ref", d]):
        r = run(FDPO, *cmd, "--model", d, "--data", tmp_path / "p.txt", "--max-new-tokens", 2, "--n", n, "--threads", 1)
        assert r.returncode == 1 and r.stdout == "" and f"--n {n}: 2 prompts x {n} samples: their records alone take " \
            in r.stderr and r.stderr.endswith(f" GB, more than this machine's {machine_gb()} GB\n"), r.stderr


@pytest.mark.parametrize("cmd", ["generate", "eval"])
def test_a_sample_count_from_a_config_file_is_refused_with_its_line(byte_model, tmp_path, cmd):
    """docs/cli.md: a --config value refused by a message that starts "--n N:" is named with its
    file and line, and docs/cli.md's example message starts "--n 99999999999999: 2 prompts x".
    generate said "--data FILE: --n ...", eval "--model DIR: --n ..." (after loading the models
    and printing its progress line), so neither named cn.ini:2 (a hunt of wave 46)"""
    d, _ = byte_model
    n = 10 ** 14
    (tmp_path / "p.txt").write_text("a\nb\n")
    cfg = tmp_path / "cn.ini"
    cfg.write_text(f"max-new-tokens = 2\nn = {n}\n")
    extra = ["--ref", d] if cmd == "eval" else []
    r = run(FDPO, cmd, "--model", d, *extra, "--data", tmp_path / "p.txt", "--out", tmp_path / "o.json",
            "--threads", 1, "--config", cfg)
    assert r.returncode == 1 and r.stdout == "", r.stderr
    # one line: the refusal, as the rule words it, and nothing before it
    assert r.stderr.startswith(f"fdpo {cmd}: --n {n}: 2 prompts x {n} samples: their records alone take ") and \
        r.stderr.endswith(f" GB, more than this machine's {machine_gb()} GB (from {cfg}:2)\n") and \
        r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("cmd", ["generate", "info", "tokenize"])
def test_a_failed_write_to_stdout_is_an_error(byte_model, tmp_path, cmd):
    """stdout on a full disk (/dev/full): the samples were lost and the exit status was 0
    (tokenize said "write error" without the reason)"""
    d, _ = byte_model
    (tmp_path / "p.txt").write_text("a\n")
    args = {"generate": ["--model", d, "--data", tmp_path / "p.txt", "--max-new-tokens", 2], "info": [d],
            "tokenize": ["--tokenizer", d, "--data", tmp_path / "p.txt"]}[cmd]
    with open("/dev/full", "w") as full:
        r = subprocess.run([FDPO, cmd, *map(str, args)], stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert r.returncode == 1 and f"fdpo {cmd}: <stdout>: write error: No space left on device" in r.stderr, r.stderr


def test_a_chat_template_no_prompt_uses_is_refused(byte_model, tmp_path):
    """--chat-template applies to conversational prompts only: with plain ones it was accepted
    and the samples were byte-identical to a run without it (eval: also with no --pairs)"""
    d, _ = byte_model
    pf = tmp_path / "p.txt"
    pf.write_text("Hi\n[not json, a plain prompt]\n")
    msg = ("--chat-template: no prompt in --data is a conversation (a JSONL \"prompt\" or \"messages\" list of "
           "{role, content}), so the template would change nothing\n")
    for cmd in (["generate", "--model", d], ["eval", "--model", d, "--ref", d]):
        r = run(FDPO, *cmd, "--data", pf, "--chat-template", "chatml", "--max-new-tokens", 2)
        assert r.returncode == 1 and r.stderr.endswith(msg), r.stderr
        assert run(FDPO, *cmd, "--data", pf, "--max-new-tokens", 2).returncode == 0
    conv = tmp_path / "c.jsonl"
    conv.write_text(json.dumps({"prompt": [{"role": "user", "content": "Hi"}]}) + "\n")
    r = run(FDPO, "generate", "--model", d, "--data", conv, "--chat-template", "chatml", "--max-new-tokens", 2)
    assert r.returncode == 0, r.stderr


def test_score_renders_conversations_with_the_template_they_were_sampled_with(byte_model, tmp_path):
    """fdpo score had no --chat-template: samples of generate --chat-template chatml were scored
    under the checkpoint's own template (here plain), silently other log-probs (a hunt's find).
    score --chat-template chatml scores the ChatML-rendered prompt (HF's ChatML text, byte ids:
    this tokenizer has no special tokens), equal to PyTorch's log-prob of the completion."""
    d, m = byte_model
    samples = tmp_path / "s.jsonl"
    # a conversational prompt as generate writes it: the JSON text of its messages
    samples.write_text(json.dumps({"prompt": json.dumps([{"role": "user", "content": "Yo"}]), "completion": " ok!"}) + "\n")
    want = completion_logp(m, list(b"<|im_start|>user\nYo<|im_end|>\n<|im_start|>assistant\n"), list(b" ok!"))
    got = {}
    for name, extra in (("chatml", ["--chat-template", "chatml"]), ("own", [])):
        r = run(FDPO, "score", "--model", d, "--data", samples, *extra, "--out", tmp_path / f"{name}.jsonl")
        assert r.returncode == 0, r.stderr
        got[name] = json.loads((tmp_path / f"{name}.jsonl").read_text())["logp"]
    assert abs(got["chatml"] - want) < 5e-6 and abs(got["own"] - want) > 1e-3, (got, want)
    # an unknown name is named once (it read "--chat-template: --chat-template: 'foo' ...")
    r = run(FDPO, "score", "--model", d, "--data", samples, "--chat-template", "foo")
    assert r.returncode == 1 and r.stderr.startswith("fdpo score: --chat-template: 'foo' is not a built-in template"), r.stderr
    # as generate and eval: given with no conversation to render, it is refused
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"prompt": "Yo", "completion": " ok"}) + "\n")
    r = run(FDPO, "score", "--model", d, "--data", plain, "--chat-template", "chatml")
    assert r.returncode == 1 and "--chat-template: no prompt in --data is a conversation" in r.stderr, r.stderr


def test_eval_names_a_prompt_too_long_for_a_policy_by_line(byte_model, tmp_path):
    """the error named "prompt 2 (blank lines not counted)" under the policy's name; the
    prompt file's line is what a user can find"""
    d, _ = byte_model
    pf = tmp_path / "p.txt"
    pf.write_text("a\n\n" + "b" * 64 + "\n")
    r = run(FDPO, "eval", "--model", d, "--ref", d, "--data", pf, "--max-new-tokens", 2)
    assert r.returncode == 1 and r.stderr.endswith(
        f"--model {d}: {pf}:3: the prompt's 64 tokens leave no room to generate (model n_positions 64)\n"), r.stderr


def test_invalid_utf8_in_the_prompts_is_named_by_line(byte_model, tmp_path):
    """it said "p.txt: not valid UTF-8" with no line, unlike every other error in the file"""
    d, _ = byte_model
    pf = tmp_path / "p.txt"
    pf.write_bytes(b"ok\n\nstill ok\n\xff\xfe\n")
    r = run(FDPO, "generate", "--model", d, "--data", pf, "--out", tmp_path / "o.jsonl")
    assert r.returncode == 1 and r.stderr.endswith(f"{pf}:4: invalid UTF-8 (byte 0xFF at column 1)\n"), r.stderr


@pytest.mark.parametrize("var,value,msg", [
    ("FDPO_LMHEAD_CHUNK", "abc", "FDPO_LMHEAD_CHUNK=abc: must be an integer >= 1"),
    ("FDPO_LMHEAD_CHUNK", "0", "FDPO_LMHEAD_CHUNK=0: must be an integer >= 1"),
    ("FDPO_LMHEAD_CHUNK", "7x", "FDPO_LMHEAD_CHUNK=7x: must be an integer >= 1"),
    ("FDPO_LMHEAD_KEEP_MAX_BYTES", "lots", "FDPO_LMHEAD_KEEP_MAX_BYTES=lots: must be an integer >= 0"),
    ("FDPO_LMHEAD_KEEP_MAX_BYTES", "-1", "FDPO_LMHEAD_KEEP_MAX_BYTES=-1: must be an integer >= 0"),
    # leading blanks, which strtol skips and the flags refuse (docs/cli.md: as strictly as
    # flags; they ran: a hunt of wave 46), as the trailing blank always was
    ("FDPO_LMHEAD_CHUNK", " 5", "FDPO_LMHEAD_CHUNK= 5: must be an integer >= 1"),
    ("FDPO_LMHEAD_CHUNK", "5 ", "FDPO_LMHEAD_CHUNK=5 : must be an integer >= 1"),
    ("FDPO_LMHEAD_KEEP_MAX_BYTES", "\t0", "FDPO_LMHEAD_KEEP_MAX_BYTES=\t0: must be an integer >= 0"),
])
def test_a_bad_numeric_environment_knob_is_an_error(byte_model, tmp_path, var, value, msg):
    """The numeric FDPO_* knobs are parsed strictly (fdpo_env_long): atol read "abc" as 0,
    which meant the default without a word. A good value and an empty one still run."""
    d, _ = byte_model
    (tmp_path / "p.txt").write_text("a\n")
    args = ["generate", "--model", d, "--data", tmp_path / "p.txt", "--max-new-tokens", "2"]
    r = run(FDPO, *args, env={var: value})
    assert r.returncode == 1 and msg in r.stderr, r.stderr
    for good in ("7", ""):
        r = run(FDPO, *args, env={var: good})
        assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("cmd", ["eval", "score"])
def test_a_bad_environment_knob_is_not_blamed_on_a_checkpoint(byte_model, tmp_path, cmd):
    """eval loads --ref before the policies: a bad FDPO_LMHEAD_CHUNK read "--ref DIR: ..." as if the
    checkpoint were at fault. The command checks the environment before it loads anything."""
    d, _ = byte_model
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    r = run(FDPO, cmd, "--model", d, "--ref", d, "--data", f, "--reward", "length", env={"FDPO_LMHEAD_CHUNK": "abc"})
    assert r.returncode == 1 and f"fdpo {cmd}: FDPO_LMHEAD_CHUNK=abc: must be an integer >= 1\n" == r.stderr, r.stderr
    r = run(FDPO, cmd, "--help", env={"FDPO_LMHEAD_CHUNK": "abc"})
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("cmd,tail", [("generate", ["--stop", "-h"]), ("eval", ["--samples-out", "--help"]),
                                      ("dpo", ["--out", "-h"])])
def test_a_help_that_is_a_flags_value_still_checks_the_environment_first(byte_model, tmp_path, cmd, tail):
    """docs/cli.md: the item after a flag that takes a value is its value ("--stop -h" stops at
    -h); docs/model.md: every command that uses a model checks FDPO_LMHEAD_* before it starts,
    so the error is the environment's, not "--ref DIR:"'s. main took any -h/--help item for a
    help request and skipped that check: "--model DIR: FDPO_LMHEAD_CHUNK=abc ..." (generate),
    "--ref DIR: ..." (eval), and dpo read its data first (a hunt of wave 46)."""
    d, _ = byte_model
    (tmp_path / "p.txt").write_text("a\n")
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n")
    args = {"generate": ["--model", d, "--data", "p.txt", "--out", "o.jsonl", "--max-new-tokens", 2],
            "eval": ["--model", d, "--ref", d, "--data", "p.txt", "--out", "e.json", "--max-new-tokens", 2, "--n", 1],
            "dpo": ["--model", d, "--ref", d, "--data", "p.jsonl", "--steps", 1]}[cmd]
    e = dict(os.environ, FDPO_LMHEAD_CHUNK="abc")
    r = subprocess.run([FDPO, cmd, *map(str, args), "--threads", "1", *tail], capture_output=True, text=True,
                       timeout=120, env=e, cwd=tmp_path)
    assert r.returncode == 1 and r.stderr == f"fdpo {cmd}: FDPO_LMHEAD_CHUNK=abc: must be an integer >= 1\n", r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl", "p.txt"]   # nothing written
    # a --help at a flag position is still help, whatever the environment holds
    r = subprocess.run([FDPO, cmd, *tail[:1], "x", "--help"], capture_output=True, text=True, timeout=60, env=e, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith(f"usage: fdpo {cmd}"), r.stderr


def test_a_bad_on_off_knob_is_named_once_and_is_the_default(byte_model, tmp_path):
    """The kernels' on/off switches (FDPO_DECODE_ONE_REGION, FDPO_SLICES, ...) are read where no
    error can be returned: a value other than 0/1 used to mean "on" (or, for
    FDPO_FORCE_BF16_FALLBACK, "forced") without a word; now one warning and the default."""
    d, _ = byte_model
    (tmp_path / "p.txt").write_text("a\nb\n")
    args = ["generate", "--model", d, "--data", tmp_path / "p.txt", "--max-new-tokens", "2", "--n", "2"]
    r = run(FDPO, *args, env={"FDPO_DECODE_ONE_REGION": "yes"})
    assert r.returncode == 0, r.stderr
    want = "warning: FDPO_DECODE_ONE_REGION=yes: must be an integer in [0, 1]; using the default (1)"
    assert r.stderr.count(want) == 1, r.stderr
    assert "FDPO_DECODE_ONE_REGION" not in run(FDPO, *args, env={"FDPO_DECODE_ONE_REGION": "0"}).stderr



@pytest.mark.parametrize("var,value,want", [
    ("FDPO_HUGEPAGES", "off", "FDPO_HUGEPAGES=off: not one of 0, 1, system; using the default (1)"),
    ("FDPO_SGEMM", "blas", "FDPO_SGEMM=blas: not one of onednn, openblas; using the default (onednn)"),
])
def test_a_bad_named_knob_is_named_once_and_is_the_default(byte_model, tmp_path, var, value, want):
    """FDPO_HUGEPAGES=off silently meant huge pages on (only "0" meant off), and an unknown
    FDPO_SGEMM silently meant oneDNN: now one warning naming the choices (fdpo_env_choice)."""
    d, _ = byte_model
    (tmp_path / "p.txt").write_text("a\nb\n")
    args = ["generate", "--model", d, "--data", tmp_path / "p.txt", "--max-new-tokens", "2", "--n", "2"]
    r = run(FDPO, *args, env={var: value})
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("warning: " + want) == 1, r.stderr

def test_generate_missing_model(tmp_path):
    (tmp_path / "p.txt").write_text("a\n")
    r = run(FDPO, "generate", "--model", tmp_path / "nope", "--data", tmp_path / "p.txt")
    assert r.returncode == 1 and "--model" in r.stderr and "nope" in r.stderr


def test_generate_help_lists_flags():
    r = run(FDPO, "generate", "--help")
    assert r.returncode == 0
    for f in ["--model", "--data", "--n", "--temperature", "--top-k", "--top-p", "--max-new-tokens", "--stop",
              "--seed", "--batch-size"]:
        assert f in r.stdout


# ---------- exact sequence distributions (chi-square) ----------

EOT, V, MAXNEW = 4, 5, 3


def truncate(p, temperature, top_k, top_p):
    """The sampler's rule (docs/eval.md): temperature, then the top_k most probable, then the
    shortest prefix (by decreasing probability) whose mass reaches top_p of the kept mass."""
    logits = np.log(p) / temperature
    q = np.exp(logits - logits.max())
    order = sorted(range(len(q)), key=lambda i: (-q[i], i))
    keep = order[:top_k] if top_k else order
    if top_p < 1:
        kept = sum(q[i] for i in keep)
        cum, out = 0.0, []
        for i in keep:
            out.append(i)
            cum += q[i]
            if cum >= top_p * kept:
                break
        keep = out
    r = np.zeros_like(q)
    r[keep] = q[keep]
    return r / r.sum()


def enumerate_sequences(m, prompt, temperature=1.0, top_k=0, top_p=1.0):
    """Every completion of at most MAXNEW tokens (ending at EOT or at the length limit) with
    its exact probability under the (truncated) sampling rule."""
    out = {}

    def rec(seq, prob):
        with torch.no_grad():
            p = torch.softmax(m.forward(torch.tensor(prompt + seq)).double()[-1], -1).numpy()
        q = truncate(p, temperature, top_k, top_p)
        for t in range(V):
            if q[t] == 0:
                continue
            s = seq + [t]
            if t == EOT or len(s) == MAXNEW:
                out[tuple(s)] = out.get(tuple(s), 0) + prob * q[t]
            else:
                rec(s, prob * q[t])
    rec([], 1.0)
    return out


def chi_square_p(counts, probs, n):
    keys = sorted(probs, key=lambda k: -probs[k])
    obs, exp = [], []
    acc_o = acc_e = 0.0
    for k in keys:  # pool the rare tail so every expected count is >= 5
        acc_o += counts.get(k, 0)
        acc_e += probs[k] * n
        if acc_e >= 5:
            obs.append(acc_o); exp.append(acc_e); acc_o = acc_e = 0.0
    if acc_e > 0:
        obs[-1] += acc_o; exp[-1] += acc_e
    assert sum(counts.get(k, 0) for k in counts if k not in probs) == 0, "sampled an impossible sequence"
    return scipy.stats.chisquare(obs, exp).pvalue, len(obs)


# (1.3, 3, 0.7): top-p of the mass left after top-k (Hugging Face's order) keeps 7 sequences
# here, top-p of the whole mass 15; at (1.3, 3, 0.9) both rules keep the same 15 (mutation review)
@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 2, 1.0), (1.0, 0, 0.8),
                                                     (1.3, 3, 0.9), (1.3, 3, 0.7)])
def test_sample_distribution_matches_enumeration(tiny, temperature, top_k, top_p):
    d, m = tiny
    n = 4000
    r = run(HARNESS, "eval-sample", d, "--prompts", "0 2", "--eot", EOT, "--n", n, "--max-new", MAXNEW,
            "--temperature", temperature, "--top-k", top_k, "--top-p", top_p, "--seed", 1234, "--batch", 64)
    assert r.returncode == 0, r.stderr
    counts = {}
    for line in r.stdout.splitlines():
        s = tuple(json.loads(line)["tokens"])
        counts[s] = counts.get(s, 0) + 1
    assert sum(counts.values()) == n
    probs = enumerate_sequences(m, [0, 2], temperature, top_k, top_p)
    assert abs(sum(probs.values()) - 1) < 1e-9
    pval, bins = chi_square_p(counts, probs, n)
    assert bins >= 3
    assert pval > 1e-3, (pval, bins)
    if top_k or top_p < 1:
        # the truncation must actually remove sequences, else this test checks nothing more
        assert len(probs) < len(enumerate_sequences(m, [0, 2]))


def test_sample_logp_is_untempered_model_logp(tiny):
    d, m = tiny
    r = run(HARNESS, "eval-sample", d, "--prompts", "1", "--eot", EOT, "--n", 20, "--max-new", MAXNEW,
            "--temperature", 0.5, "--top-k", 2, "--seed", 3)
    assert r.returncode == 0, r.stderr
    for line in r.stdout.splitlines():
        row = json.loads(line)
        toks = row["tokens"]
        with torch.no_grad():
            lp = torch.log_softmax(m.forward(torch.tensor([1] + toks)).double(), -1)
        want = sum(float(lp[i, t]) for i, t in enumerate(toks))
        assert abs(row["logp"] - want) < 1e-4


# ---------- the sampler alone: every draw against the inverse CDF written out here ----------

M64 = (1 << 64) - 1


class Xoshiro:
    """fdpo's RNG (src/core/rng.c): xoshiro256** seeded through splitmix64, uniform = top 53
    bits, written from the published algorithms"""

    def __init__(self, seed):
        x, self.s = seed, []
        for _ in range(4):
            x = (x + 0x9E3779B97F4A7C15) & M64
            z = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
            self.s.append(z ^ (z >> 31))

    def uniform(self):
        s = self.s
        rotl = lambda v, k: ((v << k) | (v >> (64 - k))) & M64
        result = (rotl((s[1] * 5) & M64, 7) * 9) & M64
        t = (s[1] << 17) & M64
        s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
        return (result >> 11) * 2.0 ** -53


def expected_draws(row, draws, seed, temperature, top_k):
    """The documented rule (docs/eval.md "Sampling") on one row of float32 logits: weights
    float32(exp((l - max) / T)) summed in float64 in token order; without truncation the
    token is the first whose running sum exceeds u * total, with top-k the first in the
    (probability, id) order whose running sum over that order exceeds u * kept. Returns
    (token, log-prob, margin) per draw: margin is u's distance to the nearest running sum
    that decides it, relative to the total (numpy's exp may differ from libm's expf in the
    last bit, so a draw within 1e-6 of a boundary is not compared)."""
    mx = row.max()
    d = (row - mx).astype(np.float32)
    w = np.exp((d * np.float32(1.0 / temperature)).astype(np.float64)).astype(np.float32).astype(np.float64)
    z1 = np.exp(d.astype(np.float64)).astype(np.float32).astype(np.float64).sum()
    rng, out = Xoshiro(seed), []
    for _ in range(draws):
        if top_k:
            order = sorted(range(len(w)), key=lambda i: (-w[i], i))[:top_k]
            cum = np.cumsum(w[order])
            u = rng.uniform() * cum[-1]
            k = int(np.searchsorted(cum, u, side="right"))
            tok = order[min(k, top_k - 1)]
        else:
            cum = np.cumsum(w)
            u = rng.uniform() * cum[-1]
            k = int(np.searchsorted(cum, u, side="right"))
            tok = min(k, len(w) - 1)
        near = [abs(u - cum[j]) for j in (k - 1, k) if 0 <= j < len(cum)]
        out.append((tok, float(d[tok]) - math.log(z1), min(near) / cum[-1]))
    return out


@pytest.mark.parametrize("temperature,top_k", [(1.0, 0), (0.8, 0), (1.0, 20), (1.3, 7)])
def test_sampler_rows_follow_the_inverse_cdf(tmp_path, temperature, top_k):
    """fdpo_sample_tokens (the rows of a decoding step in groups of up to 4, their running
    sums computed together, and without truncation only each 256-token block's end total
    stored: the draw sums u's block again) against the rule written out above, draw by draw,
    on 7 rows (a group of 4 and one of 3) of V = 1100 logits (4 blocks of 256 and a tail of
    76): flat rows whose draws land in every block, one whose mass is on tokens 255 and 256
    (the two sides of a block boundary) and one on tokens 0 and 1099 (the first and the last
    token). Groups of 4 and one row per call give the same bytes."""
    R, V, K = 7, 1100, 40
    g = np.random.default_rng(5)
    lg = (1.5 * g.standard_normal((R, V))).astype(np.float32)
    lg[5] = -30; lg[5, 255] = 0.3; lg[5, 256] = 0.0
    lg[6] = -30; lg[6, 0] = 0.0; lg[6, 1099] = 0.2
    f = tmp_path / "logits.bin"
    lg.tofile(f)
    outs = {}
    for group in (4, 1):
        r = run(HARNESS, "eval-sample-rows", f, R, V, "--draws", K, "--group", group, "--temperature", temperature,
                "--top-k", top_k)
        assert r.returncode == 0, r.stderr
        outs[group] = r.stdout
    assert outs[4] == outs[1]
    rows = [json.loads(line) for line in outs[4].splitlines()]
    blocks, compared = set(), 0
    for i, got in enumerate(rows):
        for (tok, lp, margin), gt, gl in zip(expected_draws(lg[i], K, i, temperature, top_k), got["tokens"],
                                             got["logp"]):
            assert abs(gl - lp) < 1e-6, (i, gt, gl, lp)
            if margin > 1e-6:
                assert gt == tok, (i, gt, tok, margin)
                compared += 1
            blocks.add(gt // 256)
    assert compared >= R * K - 2
    if not top_k:
        assert blocks == {0, 1, 2, 3, 4}
        assert set(rows[5]["tokens"]) == {255, 256} and set(rows[6]["tokens"]) == {0, 1099}


def test_sampler_rows_greedy(tmp_path):
    """temperature 0: the first maximum of each row, log-prob under the untempered model"""
    R, V = 5, 600
    lg = np.random.default_rng(2).standard_normal((R, V)).astype(np.float32)
    lg[3, 10] = lg[3, 400] = 9.0  # a tie: the lower id
    f = tmp_path / "logits.bin"
    lg.tofile(f)
    r = run(HARNESS, "eval-sample-rows", f, R, V, "--draws", 2, "--temperature", 0)
    assert r.returncode == 0, r.stderr
    for i, line in enumerate(r.stdout.splitlines()):
        got = json.loads(line)
        z = np.exp((lg[i] - lg[i].max()).astype(np.float64)).sum()
        assert got["tokens"] == [int(np.argmax(lg[i]))] * 2
        assert abs(got["logp"][0] - (-math.log(z))) < 1e-6


# ---------- a sampler kept across calls (fdpo rl's steps, fdpo online's rounds) ----------

def family_models(tmp_path, family):
    """two checkpoints of one architecture with different weights (A, B), the PyTorch models,
    and the end-of-text id"""
    if family == "gpt2":
        return (make_model(tmp_path / "a", 64, seed=5, n_positions=64, scale=3.0),
                make_model(tmp_path / "b", 64, seed=6, n_positions=64, scale=3.0), 63)
    from fdpo_ref.llama import Llama
    from test_llama import CONFIGS
    models = []
    for name, seed in (("a", 5), ("b", 6)):
        m = Llama(**CONFIGS["gqa-llama3"], seed=seed)   # GQA, untied head, llama3 rope scaling
        m.save_hf(str(tmp_path / name))
        models.append(m)
    return models[0], models[1], CONFIGS["gqa-llama3"]["vocab_size"] - 1


def family_logp(m, ids, toks):
    """PyTorch's float64 log-prob of toks after ids, either family"""
    with torch.no_grad():
        logits = m.forward(torch.tensor(ids + toks)) if isinstance(m, GPT2) else m.forward(ids + toks)
        lp = torch.log_softmax(torch.as_tensor(logits).double(), -1)
    return sum(float(lp[len(ids) - 1 + i, t]) for i, t in enumerate(toks))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_sampler_kept_across_weight_changes_matches_fresh_and_pytorch(tmp_path, precision, family):
    """One fdpo_sampler over four calls while the model's weights change under it (A, B, A, B;
    the decoder grows at call 3 and is larger than call 4 needs), as the training loops keep
    it across optimizer steps. Every call must give exactly the samples of a fresh decoder on
    the same weights, and their log-probs must be PyTorch's under the weights of THAT call
    (a sampler that kept the previous call's weights, e.g. bf16's packed copy, fails here)."""
    prompts = [[1, 2, 3], [4, 5], [6]]
    ma, mb, eot = family_models(tmp_path, family)
    r = run(HARNESS, "eval-sampler", tmp_path / "a", tmp_path / "b", "--prompts", ";".join(" ".join(map(str, p)) for p in prompts),
            "--eot", eot, "--n", 3, "--max-new", 10, "--batch", 4, "--seed", 7, "--precision", precision)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    calls = {(c, via): [{k: v for k, v in x.items() if k != "via"} for x in rows if x["call"] == c and x["via"] == via]
             for c in range(1, 5) for via in ("sampler", "fresh")}
    for c in range(1, 5):
        assert len(calls[c, "sampler"]) == len(prompts) * 3
        assert calls[c, "sampler"] == calls[c, "fresh"], c   # tokens, finish and log-prob bits
    # measured (abs fp32; relative bf16, weights and matmul inputs rounded): GPT-2 3.3e-7 /
    # 1.6e-4, Llama 1.5e-6 / 1.2e-3; the other call's weights are a median 2.7 % (GPT-2) /
    # 33 % (Llama) of |log p| away, so a sampler decoding with stale weights fails here
    rel = 4e-3
    far = []
    for c in range(1, 5):
        mine, other = (ma, mb) if c % 2 else (mb, ma)
        for x in calls[c, "sampler"]:
            ids = prompts[x["p"]]
            want = family_logp(mine, ids, x["tokens"])
            assert abs(x["logp"] - want) < (1e-4 if precision == "fp32" else rel * abs(want)), (c, x, want)
            far.append(abs(x["logp"] - family_logp(other, ids, x["tokens"])) / abs(want))
    assert sorted(far)[len(far) // 2] > 3 * rel   # the two models differ enough for the check to bite
    # same seed, same prompts: the new weights changed what was drawn
    assert [x["tokens"] for x in calls[1, "sampler"]] != [x["tokens"] for x in calls[2, "sampler"]]


def test_a_stop_string_ending_inside_a_multi_byte_token_stops_there(tmp_path):
    """With a BPE tokenizer a token is several bytes: a stop string that starts in one token and
    ends inside the next must stop the sample at that next token. The search window was right
    only for one-byte tokens (the byte-level test above), so such a stop string was cut from the
    text but the sample ran on (finish, tokens, logp, n_tokens; mutation review)."""
    import random

    from tok_ref import bytes_to_unicode
    random.seed(0)
    words = "the there then they this that with from have were when what".split()
    (tmp_path / "c.txt").write_text("\n".join(" ".join(random.choice(words) for _ in range(20)) for _ in range(300)))
    d = tmp_path / "m"
    r = run(FDPO, "tokenizer", "train", "--vocab-size", 300, "--out", d, tmp_path / "c.txt")
    assert r.returncode == 0, r.stderr
    vocab = json.loads((d / "vocab.json").read_text())
    make_model(d, len(vocab), seed=2, n_positions=64)   # greedy: " this" again and again
    byte_of = {u: b for b, u in bytes_to_unicode().items()}
    text_of = {i: bytes(byte_of[c] for c in tok) for tok, i in vocab.items() if tok != "<|endoftext|>"}
    r, rows = generate(str(d), tmp_path, "the\n", "--temperature", "0", "--max-new-tokens", "10")
    assert r.returncode == 0, r.stderr
    toks = rows[0]["tokens"]
    pieces = [text_of[t] for t in toks if t in text_of]
    # the first token of 3+ bytes after the first: the stop string runs from the last byte of
    # the token before it to the middle of it, and occurs nowhere earlier
    k = next(i for i in range(1, len(pieces)) if len(pieces[i]) >= 3)
    full = b"".join(pieces)
    start = sum(len(p) for p in pieces[:k]) - 1
    stop = full[start:start + 3]
    assert full.find(stop) == start and len(pieces[k]) > 2, (pieces, stop)
    r, rows2 = generate(str(d), tmp_path, "the\n", "--temperature", "0", "--max-new-tokens", "10", "--stop",
                        stop.decode())
    assert r.returncode == 0, r.stderr
    assert rows2[0]["finish"] == "stop", rows2[0]
    assert rows2[0]["tokens"] == toks[:k + 1]
    assert rows2[0]["completion"] == full[:start].decode()
    assert rows2[0]["n_tokens"] == k + 1


def last_token_llama(d, next_tokens):
    """A Llama in d that reads only its last token, with a byte-level BPE without merges: ids
    0..255 the bytes, 256 <|endoftext|> and 257 <|sep|> (both special; V = 258 keeps the width,
    one head of V, even). One-hot embeddings, the attention and MLP outputs zero, so the LM head
    sees the last token alone: after token a it gives logit 3·sqrt(V) (RMSNorm of a one-hot) to
    each token of next_tokens.get(a, [EOT]) and 0 to every other, ~48 nats down (equal logits
    for several: a fair draw). Returns (the PyTorch model, EOT, SEP)."""
    from fdpo_ref.llama import Llama
    from tok_ref import bytes_to_unicode
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    EOT, SEP, V = 256, 257, 258
    vocab["<|endoftext|>"], vocab["<|sep|>"] = EOT, SEP
    d.mkdir()
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    added = {str(i): {"content": c, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                      "special": True} for c, i in (("<|endoftext|>", EOT), ("<|sep|>", SEP))}
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GPT2Tokenizer", "eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>",
        "add_prefix_space": False, "added_tokens_decoder": added}))
    m = Llama(V, V, 8, 1, 1, 1, max_position_embeddings=64, seed=1, dtype=torch.float32)
    with torch.no_grad():
        m.p["model.embed_tokens.weight"].copy_(torch.eye(V))
        m.p["model.layers.0.self_attn.o_proj.weight"].zero_()
        m.p["model.layers.0.mlp.down_proj.weight"].zero_()
        m.p["model.norm.weight"].fill_(1.0)
        H = torch.zeros(V, V)
        for a in range(V):
            for t in next_tokens.get(a, [EOT]):
                H[t, a] = 3.0
        m.p["lm_head.weight"].copy_(H)
    m.save_hf(str(d))
    return m, EOT, SEP


def test_a_stop_string_is_matched_in_the_text_without_special_tokens(tmp_path):
    """The completion's text leaves special tokens out (skip_special_tokens=True), so the stop
    string is matched in that text: a sample stops exactly when its written text first holds the
    stop. The search ran over bytes that kept a special's text while the cut ran over the text
    without it: --stop xy emptied the text of a sample that ran on to EOT, and --stop
    'x<|sep|>y' stopped the sample but left "xy" in the text."""
    # a model whose greedy path after "q" is x <|sep|> y <|endoftext|>
    x, y, EOT, SEP = ord("x"), ord("y"), 256, 257
    d = tmp_path / "m"
    m, eot, sep = last_token_llama(d, {ord("q"): [x], x: [SEP], SEP: [y], y: [EOT]})
    assert (eot, sep) == (EOT, SEP)
    path = [ord("q")]   # PyTorch's greedy path
    while path[-1] != EOT:
        with torch.no_grad():
            path.append(int(torch.argmax(m.forward(torch.tensor(path))[-1])))
    assert path[1:] == [x, SEP, y, EOT]

    def gen(*flags):
        r, rows = generate(str(d), tmp_path, "q\n", "--temperature", "0", "--threads", "1", "--max-new-tokens", "8",
                           *flags)
        assert r.returncode == 0, r.stderr
        return rows[0]

    assert gen()["completion"] == "xy"   # the text without the special
    # "xy" is in the text once y is sampled: the sample stops there, cut before it
    s = gen("--stop", "xy")
    assert (s["finish"], s["tokens"], s["n_tokens"], s["completion"]) == ("stop", [x, SEP, y], 3, "")
    # "y": the text "x" (<|sep|> is not in it)
    s = gen("--stop", "y")
    assert (s["finish"], s["tokens"], s["completion"]) == ("stop", [x, SEP, y], "x")
    # the special's text is never in the text: the sample runs to EOT and keeps its text whole
    s = gen("--stop", "x<|sep|>y")
    assert (s["finish"], s["tokens"], s["n_tokens"], s["completion"]) == ("eot", [x, SEP, y, EOT], 3, "xy")
    # a special token spelled exactly as the stop ends the sample where it is sampled (a chat
    # template's end of turn under a base model's other eos: docs/training.md), text uncut; it
    # ran on to EOT
    s = gen("--stop", "<|sep|>")
    assert (s["finish"], s["tokens"], s["n_tokens"], s["completion"]) == ("stop", [x, SEP], 2, "x")
    s = gen("--stop", "<|sep")   # not the whole special: its text is still not searched
    assert (s["finish"], s["completion"]) == ("eot", "xy")
