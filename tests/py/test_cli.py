"""The fdpo command's shared behaviour: help, unknown commands and flags."""
import json
import re
import os
from pathlib import Path
import subprocess

import pytest

FDPO = os.environ.get("FDPO_BIN", os.path.join(os.path.dirname(__file__), "../../build/fdpo"))
HARNESS = os.environ.get("FDPO_HARNESS", os.path.join(os.path.dirname(__file__), "../../build/fdpo-harness"))


def run(*args):
    return subprocess.run([FDPO, *args], capture_output=True, text=True, timeout=60)


def test_help_lists_commands():
    r = run("--help")
    assert r.returncode == 0
    for c in ["pretrain", "sft", "dpo", "eval", "lab", "report", "tokenize", "info"]:
        assert f"  {c} " in r.stdout


def test_unknown_command():
    """one line and exit 1, as every error (it printed the 26-line usage and exited 2)"""
    r = run("frobnicate")
    assert r.returncode == 1
    assert r.stderr == "fdpo: unknown command 'frobnicate' (fdpo --help lists the commands)\n"
    r = run()
    assert r.returncode == 1 and r.stderr == "fdpo: a command is required (fdpo --help lists them)\n"


# ---- one flag vocabulary (docs/cli.md) ----

# every command and the flags it must spell the shared way
COMMANDS = {
    "pretrain": ["--model", "--data", "--out", "--batch-size", "--seed", "--threads"],
    "sft": ["--model", "--data", "--out", "--batch-size", "--seed", "--threads"],
    "dpo": ["--model", "--ref", "--data", "--out", "--batch-size", "--seed", "--threads"],
    "generate": ["--model", "--data", "--out", "--n", "--batch-size", "--seed", "--threads"],
    "eval": ["--model", "--ref", "--data", "--out", "--n", "--batch-size", "--seed", "--threads"],
    "score": ["--model", "--ref", "--data", "--out", "--threads"],
    "pairs": ["--data", "--out", "--seed"],
    "info": ["--model"],
    "tokenize": ["--data"],
    "report": ["--out"],
    "lab solve": ["--data", "--n", "--seed", "--threads"],
    "rm": ["--model", "--data", "--out", "--batch-size", "--seed", "--threads"],
    "kto": ["--model", "--ref", "--data", "--out", "--batch-size", "--seed", "--threads"],
    "online": ["--model", "--ref", "--data", "--out", "--n", "--batch-size", "--seed", "--threads"],
    "rl": ["--model", "--ref", "--data", "--out", "--n", "--seed", "--threads"],
    "sacpo": ["--model", "--out", "--batch-size", "--seed", "--threads"],
    "merge": ["--model", "--out", "--threads"],
    "tokenizer train": ["--data", "--out"],
}
OLD_NAMES = ["--policy", "--init", "--prompts", "--input", "--k", "--batch"]


def helptext(cmd):
    r = run(*cmd.split(), "--help")
    assert r.returncode == 0, r.stderr
    return r.stdout


def flag_lines(text):
    return {l.split()[0] for l in text.splitlines() if l.startswith("  --")}


def test_every_command_uses_the_shared_flag_names():
    for cmd, names in COMMANDS.items():
        flags = flag_lines(helptext(cmd))
        for n in names:
            assert n in flags, f"fdpo {cmd} --help lacks {n}"
        for old in OLD_NAMES:
            assert old not in flags, f"fdpo {cmd} still declares {old}"


def test_one_default_seed_everywhere():
    for cmd in COMMANDS:
        for line in helptext(cmd).splitlines():
            if line.startswith("  --seed "):
                assert line.rstrip().endswith("[1337]"), f"fdpo {cmd}: {line}"


SEED_HELP = {
    "pretrain": "seed for a random init (sft: and LoRA adapters), the data split and the data order",
    "sft": "seed for a random init (sft: and LoRA adapters), the data split and the data order",
    "dpo": "seed for the held-out split, the data order and LoRA adapters (init, dropout)",
    "kto": "seed for the held-out split, the data order and LoRA adapters (init, dropout)",
    "rm": "seed for the new score head of a language model (score.weight ~ N(0, 0.02)), the held-out split, the data "
          "order and LoRA adapters (init, dropout)",
    "rl": "seed for sampling (one stream per step, prompt and sample) and LoRA adapters (init, dropout)",
    "online": "seed for sampling, --pairing all-bt labels, the order of each round's pairs and LoRA adapters "
              "(init, dropout)",
    "sacpo": "seed for each stage's held-out split and data order, the online stages' sampling and labels, and LoRA "
             "adapters (init, dropout)",
}


@pytest.mark.parametrize("cmd", list(SEED_HELP))
def test_seed_help_says_what_the_seed_seeds(cmd):
    """every training command's --seed said "seed for init, data split and data order": dpo, kto,
    rm, rl, online and sacpo start from --model (no init but LoRA adapters' and rm's new head),
    and rl and online have no data split but sample"""
    lines = [l for l in helptext(cmd).splitlines() if l.startswith("  --seed ")]
    assert len(lines) == 1 and lines[0].split(None, 2)[2] == f"{SEED_HELP[cmd]} [1337]", lines


@pytest.mark.parametrize("cmd", ["generate", "score", "eval", "pairs", "merge"])
def test_a_stray_argument_is_refused(cmd, tmp_path):
    """commands without positional arguments refuse one (a forgotten flag name): it was dropped
    without a word (merge --model a --model b c merged two)"""
    r = run(cmd, "--out", str(tmp_path / "o"), "stray_file")
    assert r.returncode != 0 and f"fdpo {cmd}: unexpected argument 'stray_file'" in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("cmd", ["generate", "score", "eval", "pairs", "merge", "pretrain", "lab solve"])
def test_threads_out_of_range_is_refused(cmd):
    """checked once, by the parser, for every command (generate, score, eval, pairs and merge ran
    -1 on the OpenMP default and cut 4294967297 to 1)"""
    for bad in ("-1", "4294967297"):
        r = run(*cmd.split(), "--threads", bad)
        assert r.returncode != 0 and f"--threads: {bad} is not in [0, 4096]" in r.stderr, r.stderr


@pytest.mark.parametrize("cmd,flag", [
    ("generate", "--top-k"), ("generate", "--seed"), ("eval", "--max-new-tokens"), ("eval", "--batch-size"),
    ("rl", "--n"), ("rl", "--top-k"), ("online", "--max-new-tokens"), ("dpo", "--max-length"),
    ("kto", "--max-prompt-length"), ("pairs", "--pairs-per-prompt"), ("pairs", "--seed"),
    ("tokenizer train", "--vocab-size"), ("report", "--max-points"), ("lab coverage", "--prompts"), ("lab solve", "--n"),
    ("lab solve", "--seed"),
])
def test_a_negative_count_is_refused_by_the_parser(cmd, flag, tmp_path):
    """flags whose library field is unsigned (FLAG_COUNT): the sign is refused where it is read,
    on the command line and in --config, before anything else (tokenizer train's -5 became 0 and
    was reported as "0 must be at least 257"; pairs said "must be >= 0" without the value)"""
    r = run(*cmd.split(), flag, "-3")
    assert r.returncode == 1 and f"fdpo {cmd.split()[0]}: {flag}: must not be negative (got -3)" in r.stderr, r.stderr
    cfg = tmp_path / "c.ini"
    cfg.write_text(f"{flag[2:]} = -3\n")
    r = run(*cmd.split(), "--config", str(cfg))
    assert r.returncode == 1 and f"{cfg}:1: key '{flag[2:]}': must not be negative (got -3)" in r.stderr, r.stderr


@pytest.mark.parametrize("args", [["eval", "--out", "-"], ["eval", "--samples-out", "-"], ["pairs", "--out", "-"],
                                  ["lab", "frontier", "--out", "-"], ["lab", "gap", "--export-problem", "-"]])
def test_out_dash_is_stdout_or_refused(args, tmp_path):
    """`--out -` is stdout in generate and score; eval and pairs wrote a file named "-" """
    f = tmp_path / "s.jsonl"
    f.write_text('{"prompt": "a", "completion": "b", "reward": 1}\n')
    extra = [] if args[0] == "lab" else ["--data", str(f)] + (["--model", "x", "--ref", "y"] if args[0] == "eval" else [])
    r = subprocess.run([FDPO, *args, *extra], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 1 and f"{args[-2]} -: this output is a file (only generate's and score's --out - mean stdout)" in r.stderr, r.stderr
    assert not (tmp_path / "-").exists()


@pytest.mark.parametrize("cmd", ["generate", "rl", "online"])
def test_a_missing_prompt_file_is_named_once(cmd, tmp_path):
    """the path appears once in the message (it appeared two and three times)"""
    extra = ["--reward", "length", "--out", str(tmp_path / "o")] if cmd != "generate" else []
    r = run(cmd, "--model", str(tmp_path / "m"), "--data", "/nonexistent/p.jsonl", *extra)
    assert r.returncode != 0 and r.stderr.count("/nonexistent/p.jsonl") == 1, r.stderr
    assert f"fdpo {cmd}: --data: /nonexistent/p.jsonl: cannot open" in r.stderr, r.stderr


def help_defaults(cmd):
    """{flag name: default text} from `fdpo CMD --help` ("  --lr X   text [1e-6]")"""
    out = {}
    for line in helptext(cmd).splitlines():
        line = re.sub(r" \(was --[^)]*\)$", "", line.rstrip())   # an old spelling's note after the default
        if line.startswith("  --") and line.rstrip().endswith("]"):
            name = line.split()[0][2:]
            out.setdefault(name, line.rstrip().rsplit("[", 1)[1][:-1])
    return out


# every training command and the least number of its --help defaults compared with the library's
# (a flag the library does not hold, such as online's --mode, a choice of library function, is left out)
LIBRARY_DEFAULTS = [("pretrain", "train", 37), ("sft", "sft", 37), ("dpo", "dpo", 44), ("rm", "rm", 35), ("kto", "kto", 39),
                    ("rl", "rl", 37), ("online", "online", 44), ("sacpo", "sacpo", 55)]
NOT_LIBRARY_OPTIONS = {"online": {"mode"}}


@pytest.mark.parametrize("cmd,kind,least", LIBRARY_DEFAULTS)
def test_help_shows_the_library_defaults(cmd, kind, least):
    """The library owns its options' defaults (fdpo_train_opts_default, fdpo_sft_opts_default,
    fdpo_dpo_run_opts_default, fdpo_rm_run_opts_default, fdpo_kto_run_opts_default,
    fdpo_rl_run_opts_default, fdpo_online_opts_default, fdpo_sacpo_opts_default); the CLI's
    flag tables repeat them as text, and every value --help shows must be the library's
    (fdpo-harness opts-defaults prints them by flag name)."""
    lib = json.loads(subprocess.run([HARNESS, "opts-defaults"], capture_output=True, text=True, check=True).stdout)[kind]
    shown = help_defaults(cmd)
    compared = 0
    for key, value in lib.items():
        if key not in shown or key in NOT_LIBRARY_OPTIONS.get(cmd, ()):
            continue
        text = shown[key]
        if value is None:   # chat-template: NULL is the tokenizer's template, which the CLI spells auto
            assert text in ("none", "auto"), (key, text)
        elif isinstance(value, bool):
            assert text == ("1" if value else "0"), (key, text, value)
        elif isinstance(value, (int, float)):
            assert float(text) == pytest.approx(value, rel=1e-12), (key, text, value)
        else:
            assert text == value, (key, text, value)
        compared += 1
    assert compared >= least, compared


def write(path, text):
    path.write_text(text)
    return str(path)


def samples_file(tmp_path):
    return write(tmp_path / "s.jsonl", "".join(
        f'{{"prompt": "p{i}", "completion": "c{j}", "reward": {j}}}\n' for i in range(5) for j in range(4)))


@pytest.mark.parametrize("old", ["--samples", "--prompts", "--input"])
def test_old_spelling_is_an_alias_with_a_deprecation_note(tmp_path, old):
    s = samples_file(tmp_path)
    new = run("pairs", "--data", s, "--out", str(tmp_path / "new.jsonl"))
    assert new.returncode == 0 and "deprecated" not in new.stderr, new.stderr
    r = run("pairs", old, s, "--out", str(tmp_path / "old.jsonl"))
    assert r.returncode == 0, r.stderr
    assert f"fdpo pairs: warning: {old} is deprecated; use --data\n" in r.stderr
    assert (tmp_path / "old.jsonl").read_bytes() == (tmp_path / "new.jsonl").read_bytes()


@pytest.mark.parametrize("sub", ["frontier", "solve", "bias", "check", "constrained"])
def test_lab_prompts_is_never_the_data_alias(sub):
    """in lab, --prompts is the number of prompts of gap and coverage; elsewhere in lab it was
    taken as the old spelling of --data: `lab frontier --prompts 3` warned "deprecated" and
    then read a file named 3 (or failed on --n with --data). Nor is it suggested as --data:
    "did you mean --data?" led to `--data 3`, a file (docs/cli.md; a hunt's find)."""
    for typo in ("--prompts", "--prompt"):
        r = run("lab", sub, typo, "3")
        assert r.returncode == 1 and r.stderr == f"fdpo lab: unknown flag {typo} (--help lists the flags)\n", r.stderr


def test_lab_prompts_config_key_is_not_suggested_as_data(tmp_path):
    cfg = write(tmp_path / "lp.ini", "prompts = 3\n")
    r = run("lab", "solve", "--config", cfg)
    assert r.returncode == 1 and r.stderr == \
        f"fdpo lab: {cfg}:1: unknown key 'prompts' (the keys are the flag names of --help)\n", r.stderr


@pytest.mark.parametrize("order", ["old-first", "new-first"])
def test_a_flag_under_its_name_and_its_old_spelling_is_refused(tmp_path, order):
    """--input A --data B is one flag given twice: the last won without a word"""
    s = samples_file(tmp_path)
    pair = [["--samples", s], ["--data", s]]
    r = run("pairs", *(pair if order == "old-first" else pair[::-1])[0], *(pair if order == "old-first" else pair[::-1])[1],
            "--out", str(tmp_path / "o.jsonl"))
    assert r.returncode == 1 and r.stderr.endswith(
        "fdpo pairs: --data: given twice, once as --samples (its old spelling): give it once\n"), r.stderr
    assert not (tmp_path / "o.jsonl").exists()


def test_pairs_skips_a_byte_order_mark_before_a_blank_line(tmp_path):
    """A BOM then a blank line: "invalid JSON near column 1" (the readers that split lines
    themselves skipped it; this one relied on cJSON skipping it before an object)."""
    s = samples_file(tmp_path)
    write(tmp_path / "bom.jsonl", "\ufeff\n" + open(s).read())
    a = run("pairs", "--data", s, "--seed", "4", "--out", str(tmp_path / "a.jsonl"))
    b = run("pairs", "--data", str(tmp_path / "bom.jsonl"), "--seed", "4", "--out", str(tmp_path / "b.jsonl"))
    assert a.returncode == 0 and b.returncode == 0, b.stderr
    rows = lambda f: [{k: v for k, v in json.loads(l).items() if k != "line"} for l in open(f)]
    assert rows(tmp_path / "a.jsonl") == rows(tmp_path / "b.jsonl")


def test_old_config_key_is_an_alias_too(tmp_path):
    s = samples_file(tmp_path)
    cfg = write(tmp_path / "run.ini", f"[pairs]\nsamples = {s}\nseed = 4\n")
    r = run("pairs", "--config", cfg, "--out", str(tmp_path / "a.jsonl"))
    assert r.returncode == 0, r.stderr
    assert f"{cfg}: key 'samples' is deprecated; use 'data'" in r.stderr
    r = run("pairs", "--data", s, "--seed", "4", "--out", str(tmp_path / "b.jsonl"))
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_one_letter_alias_with_one_dash():
    # eval's -k is the old --n; the error is about the value, so the alias was understood
    r = run("eval", "-k", "0", "--model", "x", "--ref", "y", "--data", "z")
    assert "fdpo eval: warning: -k is deprecated; use --n" in r.stderr
    assert "fdpo eval: --n: must be > 0 (got 0)" in r.stderr
    r = run("eval", "-q", "1")
    assert r.returncode == 1 and "unknown flag -q" in r.stderr


@pytest.mark.parametrize("cmd,typo,want", [
    ("dpo", "--lrr", "--lr"),
    ("dpo", "--polcy", "--model"),          # near an old spelling: the current name is suggested
    ("eval", "--temprature", "--temperature"),
    ("generate", "--batchsize", "--batch-size"),
    ("pretrain", "--n_layers", "--n-layer"),
])
def test_unknown_flag_suggests_the_nearest(cmd, typo, want):
    r = run(cmd, typo, "1")
    assert r.returncode == 1
    assert r.stderr == f"fdpo {cmd}: unknown flag {typo} (did you mean {want}?)\n"


def test_unknown_flag_far_from_all_names_gets_no_guess():
    r = run("generate", "--frobnicate", "1")
    assert r.returncode == 1
    assert r.stderr == "fdpo generate: unknown flag --frobnicate (--help lists the flags)\n"


def test_unknown_config_key_suggests_the_nearest_with_file_and_line(tmp_path):
    cfg = write(tmp_path / "bad.ini", "[train]\nlr = 1e-3\nwarmup_step = 3\n")
    r = run("pretrain", "--out", str(tmp_path / "o"), "--config", cfg, "x.txt")
    assert r.returncode == 1
    assert r.stderr == f"fdpo pretrain: {cfg}:3: unknown key 'warmup_step' (did you mean 'warmup-steps'?)\n"


def test_a_checked_value_from_a_config_file_names_its_line(tmp_path):
    """A value the library's check refuses names the file and line it came from, as a value the
    parser refuses does (`bad.ini:4: key 'steps': ...`): `--steps: -2 must be >= 0` said
    nothing of bad.ini. The command line's value overrides the file's, and its error is plain."""
    bad = write(tmp_path / "bad.ini", "[train]\nlr = 1e-3\n\nsteps = -2\n")
    r = run("pretrain", "--out", str(tmp_path / "o"), "--config", bad, "x.txt")
    assert r.returncode == 1 and r.stderr == f"fdpo pretrain: --steps: -2 must be >= 0 (from {bad}:4)\n", r.stderr
    r = run("pretrain", "--out", str(tmp_path / "o"), "--config", bad, "--steps", "-3", "x.txt")
    assert r.returncode == 1 and r.stderr == "fdpo pretrain: --steps: -3 must be >= 0\n", r.stderr
    word = write(tmp_path / "word.ini", "[train]\nlr = 1e-3\n\nsteps = abc\n")
    r = run("pretrain", "--out", str(tmp_path / "o"), "--config", word, "x.txt")
    assert r.returncode == 1 and r.stderr == f"fdpo pretrain: {word}:4: key 'steps': 'abc' is not an integer\n"
    # the last file that sets a key, under an old name too; the parser's own range check
    more = write(tmp_path / "more.ini", "# comment\nval_fraction = 2\nthreads = 4\n")
    r = run("sft", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o"), "--config", bad, "--config", more,
            "--steps", "1", "x.jsonl")
    assert r.returncode == 1 and r.stderr.splitlines() == [
        f"fdpo sft: warning: {more}: key 'val_fraction' is deprecated; use 'eval-fraction'",
        f"fdpo sft: --eval-fraction: 2 is not in [0, 1) (from {more}:2)"], r.stderr
    r = run("pretrain", "--out", str(tmp_path / "o"), "--config", write(tmp_path / "t.ini", "threads = 9999\n"), "x.txt")
    assert r.returncode == 1 and r.stderr == \
        f"fdpo pretrain: --threads: 9999 is not in [0, 4096] (0: OpenMP's default, OMP_NUM_THREADS or all cores) (from {tmp_path / 't.ini'}:1)\n", r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("text,line,err", [
    # inih reads an indented line as more of the value above: stop became "n = 3", n stayed 1
    ("[pairs]\nseed = 4\n  n = 3\n", 3, "an indented line after a key (INI reads it as more of that key's value): remove the indentation"),
    ("seed = 4\n\n\tlines = 2\n", 3, "an indented line after a key"),   # a blank line does not end the value
    # inih stops at a NUL: everything after it was dropped
    ("seed = 4\n\0seed = 5\n", 2, "a NUL byte (not INI text)"),
    # inih's reader holds 199 bytes with the newline: it reads the rest (or the newline alone)
    # as the next line
    ("seed = 4" + " " * 300 + "7\n", 1, "a line of 309 bytes; the INI reader takes lines of at most 198 bytes"),
    (";" + "x" * 199 + "\nseed = 4\n", 1, "a line of 200 bytes"),
    ("seed = 4\n\vlines = 2\n", 2, "an indented line after a key"),   # inih's isspace: \v and \f indent too
    # inih's inline comment: the value was cut at a ';' after a blank (out = samples ;v2.jsonl
    # wrote "samples"), where the flag takes the text whole (a hunt's find)
    ("seed = 4\nout = samples ;v2.jsonl\n", 2, "a ';' after a blank starts a comment in INI (the value would be "
     "read as 'samples'): put a comment on a line of its own, and give a value holding \" ;\" as its flag"),
    ("[pairs]\nseed = 4\t; the seed\n", 2, "a ';' after a blank starts a comment in INI (the value would be read as '4')"),
    ("out: a ;b\n", 1, "a ';' after a blank starts a comment in INI (the value would be read as 'a')"),
    ("out = ;x\n", 1, "a ';' after a blank starts a comment in INI (the value would be read as '')"),
    # a key and its old spelling: the command line refuses the pair, the file took the last
    ("data = a.jsonl\nsamples = b.jsonl\n", 2, "key 'data': given twice, once as 'samples' (its old spelling): give it once"),
])
def test_config_text_inih_would_misread_is_refused_with_its_line(tmp_path, text, line, err):
    cfg = tmp_path / "c.ini"
    cfg.write_bytes(text.encode())
    r = run("pairs", "--config", str(cfg), "--out", str(tmp_path / "o.jsonl"))
    assert r.returncode == 1 and f"fdpo pairs: {cfg}:{line}: {err}" in r.stderr, r.stderr
    assert not (tmp_path / "o.jsonl").exists()


def test_config_lines_inih_reads_whole_still_work(tmp_path):
    """Indented comments, blank lines with blanks, a byte order mark, CRLF, a line of 198 bytes
    (inih's reader holds it and its newline) and an indented key before any key of
    its section (inih reads it as a key) are read as before: seed = 4 is in force."""
    s = samples_file(tmp_path)
    cfg = tmp_path / "c.ini"
    cfg.write_bytes(("\ufeff; c\r\n   # indented comment\r\n  \r\n;" + "x" * 197 + "\n;" + "y" * 196 + "\r\n"
                     "[pairs]\n  seed = 4\r\n").encode())   # 198 bytes, and 198 with the CRLF's \r
    r = run("pairs", "--config", str(cfg), "--data", s, "--out", str(tmp_path / "a.jsonl"))
    assert r.returncode == 0, r.stderr
    r = run("pairs", "--data", s, "--seed", "4", "--out", str(tmp_path / "b.jsonl"))
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    r = run("pairs", "--data", s, "--seed", "5", "--out", str(tmp_path / "c.jsonl"))
    assert (tmp_path / "a.jsonl").read_bytes() != (tmp_path / "c.jsonl").read_bytes()


def test_config_values_with_a_semicolon_or_hash_inih_keeps_are_read_as_written(tmp_path):
    """'#' and a ';' not after a blank are no INI comment in a value: the file's --out is the
    line's text after "out = ", as the flag's; a comment after a [section] stays a comment."""
    s = samples_file(tmp_path)
    for name in ("o;x.jsonl", "o#x.jsonl", "o #x.jsonl"):
        cfg = write(tmp_path / "c.ini", f"[pairs] ; the pairs run\nout = {tmp_path / name}\n")
        r = run("pairs", "--config", cfg, "--data", s)
        assert r.returncode == 0 and (tmp_path / name).exists(), r.stderr


@pytest.mark.parametrize("first", [";" + "c" * 197, "seed = 4" + " " * 190, ";" + "c" * 196 + "\r",
                                   ";" + "c" * 198, ";" + "c" * 197 + "\r", ";" + "c" * 199])
def test_a_config_line_at_the_reader_limit(tmp_path, first):
    """inih's reader holds 199 bytes with the newline: a first line of 198 bytes (a CRLF's \r
    counted) leaves the next line line 2; one of 199 bytes was taken, and inih read its newline
    as a line of its own, so every later message named the line after the one at fault (a
    hunt's find). From 199 bytes on the line is refused, with its length."""
    n = len(first.encode())
    cfg = tmp_path / "c.ini"
    cfg.write_bytes((first + "\nseed = abc\nthreads = 1\n").encode())
    r = run("pairs", "--config", str(cfg), "--data", samples_file(tmp_path), "--out", str(tmp_path / "o.jsonl"))
    if n >= 199:
        assert r.returncode == 1 and r.stderr == \
            f"fdpo pairs: {cfg}:1: a line of {n} bytes; the INI reader takes lines of at most 198 bytes\n", r.stderr
        return
    assert n == 198
    assert r.returncode == 1 and r.stderr == f"fdpo pairs: {cfg}:2: key 'seed': 'abc' is not an integer\n", r.stderr
    # a value refused after the parser: line 3 of the file
    cfg.write_bytes((first + "\nseed = 4\nthreads = 5000\n").encode())
    r = run("pairs", "--config", str(cfg), "--data", samples_file(tmp_path), "--out", str(tmp_path / "o.jsonl"))
    assert r.returncode == 1 and r.stderr == \
        f"fdpo pairs: --threads: 5000 is not in [0, 4096] (0: OpenMP's default, OMP_NUM_THREADS or all cores) (from {cfg}:3)\n", r.stderr


@pytest.mark.parametrize("text,want", [
    # a syntax error, then a bad value or an unknown key: the syntax error, at its line
    ("seed = 1\ngarbage\nseed = abc\n", "2: syntax error (expected key = value)"),
    ("seed = 1\ngarbage\nsedd = 2\n", "2: syntax error (expected key = value)"),
    # keys after it are not read: no deprecation warning for line 3
    ("seed = 1\n\n[s]\ngarbage\nsamples = x.jsonl\n", "4: syntax error (expected key = value)"),
    ("garbage\nseed = 1\n", "1: syntax error (expected key = value)"),
    # an error before the syntax error is the first one
    ("sedd = 1\ngarbage\n", "1: unknown key 'sedd' (did you mean 'seed'?)"),
    ("seed = 1\nseed = x\ngarbage\nseed = y\n", "2: key 'seed': 'x' is not an integer"),
])
def test_the_first_config_error_is_said_at_its_own_line(tmp_path, text, want):
    """docs/cli.md: a config value is named with its file and line. inih reads on past a
    syntax error and returns the first failing line: "seed = abc" on line 3 was said as
    "c.ini:2: key 'seed': ...", and the syntax error on line 2 never (a hunt's find)."""
    cfg = write(tmp_path / "c.ini", text)
    r = run("pairs", "--config", cfg, "--data", samples_file(tmp_path), "--out", str(tmp_path / "o.jsonl"))
    assert r.returncode == 1 and r.stderr == f"fdpo pairs: {cfg}:{want}\n", r.stderr
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("value", ["0x10", " 5", "0x1p-3", "\t2"])
def test_numbers_are_decimal(tmp_path, value):
    """strtod reads hex, hex floats and leading blanks (strtol leading blanks): --bt-scale 0x10
    was 16 and --lr 0x10 (a typo for 0.10) trained at 16; --seed ' 5' was 5. One message for
    integers and numbers, and list items with blanks around them are read as layout."""
    for flag in ("--seed", "--bt-scale"):
        r = run("pairs", "--data", samples_file(tmp_path), flag, value, "--out", str(tmp_path / "o.jsonl"))
        assert r.returncode == 1 and f"fdpo pairs: {flag}: '{value}' is not a decimal number" in r.stderr, r.stderr
    cfg = write(tmp_path / "c.ini", f"seed = 0x10\n")
    r = run("pairs", "--data", samples_file(tmp_path), "--config", cfg, "--out", str(tmp_path / "o.jsonl"))
    assert r.returncode == 1 and f"{cfg}:1: key 'seed': '0x10' is not a decimal number" in r.stderr, r.stderr


@pytest.mark.parametrize("value,bound", [("9223372036854775808", "at most 9223372036854775807"),
                                         ("-99999999999999999999", "at least -9223372036854775808")])
def test_an_integer_past_the_range_is_said_to_be_out_of_range(tmp_path, value, bound):
    """2^63 is an integer, past what a long holds: it was called "not an integer" (docs/cli.md
    keeps "not a ..." for text that is no number and "out of range" for the range)."""
    r = run("pairs", "--data", samples_file(tmp_path), "--seed", value, "--out", str(tmp_path / "o.jsonl"))
    assert r.returncode == 1 and r.stderr == f"fdpo pairs: --seed: '{value}' is out of range ({bound})\n", r.stderr
    assert int(value) > 2 ** 63 - 1 or int(value) < -2 ** 63


def test_messages_say_what_is_wrong_with_the_value(tmp_path):
    """a vocabulary too large was "must be at least 257"; report's "--max-points must be >= 2
    and --max-prompts >= 1" named neither the flag at fault nor its value (and was the CLI's
    check, not the library's); sacpo's --help said dpo's cache place, beside --out"""
    (tmp_path / "t.txt").write_text("some text\n")
    r = run("tokenizer", "train", "--vocab-size", "4294967297", "--data", str(tmp_path / "t.txt"), "--out", str(tmp_path / "tok"))
    assert r.returncode == 1 and r.stderr == \
        "fdpo tokenizer: --vocab-size: 4294967297 must be at most 2147483647 (token ids are 32-bit)\n", r.stderr
    r = run("report", str(tmp_path), "--max-points", "1", "--out", str(tmp_path / "r.html"))
    assert r.returncode == 1 and r.stderr == \
        "fdpo report: --max-points: 1 must be >= 2 (a curve's first and last points; 0: 2000)\n", r.stderr
    assert "default: DIR/.fdpo-cache inside --out, shared by the stages" in run("sacpo", "--help").stdout


@pytest.mark.parametrize("cmd,flag", [("pretrain", "--data"), ("pairs", "--data"), ("dpo", "--data"), ("tokenizer train", "--data"),
                                      ("generate", "--model"), ("dpo", "--ref"), ("sft", "--tokenizer"),
                                      # these failed as ": cannot open" or "config.json: cannot open" (a hunt's find)
                                      ("dpo", "--eval-file"), ("merge", "--base"), ("merge", "--lora"), ("eval", "--pairs"),
                                      ("sacpo", "--reward-data"), ("sacpo", "--safety-data"), ("eval", "--lexicon"),
                                      # report's inputs: ": no such eval file" (a hunt's find)
                                      ("report", "--eval"), ("report", "--lab"), ("report", "--samples"),
                                      ("report", "--lab-frontier"), ("report", "--proxy-eval"), ("report", "--notes"),
                                      ("report", "--chartjs")])
def test_an_empty_input_path_names_its_flag(tmp_path, cmd, flag):
    """it was "fdpo pretrain: : cannot open: No such file or directory", no flag named"""
    r = run(*cmd.split(), flag, "", "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and r.stderr == f"fdpo {cmd.split()[0]}: {flag}: an empty path\n", r.stderr


@pytest.mark.parametrize("cmd", ["dpo", "merge", "tokenizer train"])
def test_an_empty_out_directory_is_an_empty_path(tmp_path, cmd):
    """docs/cli.md: an empty path is refused before any work, by name (`--out: an empty path`,
    as dpo, sft and the trainers say). merge and tokenizer train were told "give the directory
    by its name, not '.', '..' or '/' ... cd .. and give --out NAME", none of which applied
    (fdpo_dir_lock; a hunt of wave 46)."""
    text = write(tmp_path / "t.txt", "hello world\n")
    args = {"dpo": ["--model", str(tmp_path / "m"), "--data", text], "merge": ["--model", str(tmp_path / "a"), "--model",
            str(tmp_path / "b")], "tokenizer train": ["--vocab-size", "260", text]}[cmd]
    r = run(*cmd.split(), *args, "--out", "")
    assert r.returncode == 1 and r.stderr == f"fdpo {cmd.split()[0]}: --out: an empty path\n", r.stderr


def test_an_empty_report_input_from_a_config_names_its_line(tmp_path):
    """docs/cli.md: a config value is named with its file and line; "eval =" failed as
    ": no such eval file", naming neither (a hunt's find)"""
    cfg = write(tmp_path / "r.ini", f"out = {tmp_path / 'r.html'}\neval =\n")
    r = run("report", "--config", cfg)
    assert r.returncode == 1 and r.stderr == f"fdpo report: {cfg}:2: key 'eval': an empty path\n", r.stderr
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("cmd", ["pretrain --out O", "sft --out O", "tokenizer train --out O", "tokenize --tokenizer byte",
                                 "info", "report --out O/r.html"])
def test_an_empty_positional_path_is_refused_as_such(tmp_path, cmd):
    """FILE... / CKPT given as '': ": cannot open" or "config.json: cannot open", naming nothing"""
    r = run(*[str(tmp_path / "o") if a == "O" else a for a in cmd.split()], "")
    assert r.returncode == 1 and r.stderr == f"fdpo {cmd.split()[0]}: an empty argument (a path was expected)\n", r.stderr


# ---- paths that are not valid UTF-8 (JSON holds UTF-8 text only: RFC 8259 8.1) ----

BAD = b"bad\xff\xfeutf"   # 0xFF 0xFE start no UTF-8 sequence


def run_bytes(*args, cwd=None):
    return subprocess.run([a if isinstance(a, bytes) else os.fsencode(a) for a in (FDPO, *args)], capture_output=True,
                          text=True, timeout=60, cwd=cwd)


@pytest.mark.parametrize("cmd,flag", [("dpo --model M --data D", "--out"), ("sft --data D", "--out"),
                                      ("eval --model M --ref M --data D", "--out"),
                                      ("eval --model M --ref M --data D", "--samples-out"),
                                      ("eval --ref M --data D --out O", "--model"), ("eval --model M --ref M --out O", "--data"),
                                      ("rl --model M --data D --reward length", "--out"), ("info --json", "--model")])
def test_a_path_that_is_not_utf8_is_refused_naming_its_flag(tmp_path, cmd, flag):
    """Such a path was copied raw into training_state.json, e.json and every line of
    --samples-out, which Python's json (and fdpo score) then could not read (a hunt's find)"""
    m = {"M": str(tmp_path / "m"), "D": str(tmp_path / "d.txt"), "O": str(tmp_path / "o.json")}
    bad = os.fsencode(str(tmp_path)) + b"/o" + BAD
    r = run_bytes(*[m.get(a, a) for a in cmd.split()], flag, bad)
    shown = f"{tmp_path}/obad\\xFF\\xFEutf"
    assert r.returncode == 1 and r.stderr == \
        f"fdpo {cmd.split()[0]}: {flag}: the path is not valid UTF-8 ({shown}; fdpo records paths in its JSON files)\n", r.stderr
    assert not os.path.lexists(bad) and os.listdir(tmp_path) == []


def test_a_config_key_and_a_positional_that_are_not_utf8_are_refused(tmp_path):
    cfg = tmp_path / "c.ini"
    cfg.write_bytes(b"out = o" + BAD + b"\n")
    r = run_bytes("eval", "--config", str(cfg), "--model", "m", "--ref", "m", "--data", "d")
    assert r.returncode == 1 and r.stderr == (f"fdpo eval: {cfg}:1: key 'out': the path is not valid UTF-8 "
                                              "(obad\\xFF\\xFEutf; fdpo records paths in its JSON files)\n"), r.stderr
    r = run_bytes("sft", "--data", "d", "--out", "o", b"t" + BAD)
    assert r.returncode == 1 and r.stderr == ("fdpo sft: a path argument: the path is not valid UTF-8 "
                                              "(tbad\\xFF\\xFEutf; fdpo records paths in its JSON files)\n"), r.stderr
    r = run_bytes("eval", "--model", "m", "--ref", "m", "--data", "d", "--stop", b"x" + BAD)   # e.json records --stop
    assert r.returncode == 1 and r.stderr == "fdpo eval: --stop: not valid UTF-8 (fdpo records its settings in JSON files)\n"


def test_a_command_that_records_no_path_takes_one_that_is_not_utf8(tmp_path):
    """tokenize, generate, score, pairs, merge, info, lab, report and tokenizer train write no
    path into a JSON file: such a path (or a working directory with such a name) is the user's to
    use, as before the refusal of the commands that record theirs (a review's find)"""
    cwd = os.fsencode(str(tmp_path)) + b"/" + BAD
    os.mkdir(cwd)
    with open(cwd + b"/t" + BAD, "w") as f:
        f.write("hi")
    def run_raw(*args):
        return subprocess.run([a if isinstance(a, bytes) else os.fsencode(a) for a in (FDPO, *args)], capture_output=True,
                              timeout=60, cwd=cwd)
    r = run_raw("tokenize", "--tokenizer", "byte", b"t" + BAD)
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    r = run_raw("tokenizer", "train", "--vocab-size", "260", "--min-frequency", "1", "--out", b"tok" + BAD, b"t" + BAD)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(cwd + b"/tok" + BAD)) == [b"merges.txt", b"tokenizer_config.json", b"vocab.json"]


def test_a_relative_path_that_resolves_to_bytes_not_utf8_is_refused(tmp_path):
    """training_state.json records each path as given and where it resolves (KEY.resolved):
    a relative --data under a working directory named with such bytes was recorded raw"""
    cwd = os.fsencode(str(tmp_path)) + b"/" + BAD
    os.mkdir(cwd)
    with open(cwd + b"/d.jsonl", "w") as f:
        f.write('{"prompt":"a","chosen":" b","rejected":" c"}\n')
    r = run_bytes("dpo", "--model", str(tmp_path / "m"), "--data", "d.jsonl", "--out", "o", "--steps", "1", cwd=cwd)
    assert r.returncode == 1 and r.stderr == (f"fdpo dpo: --data: the path is not valid UTF-8 (it resolves to {tmp_path}/"
                                              "bad\\xFF\\xFEutf/d.jsonl; fdpo records paths in its JSON files)\n"), r.stderr
    assert os.listdir(cwd) == [b"d.jsonl"]
    # rl records its reward spec's file resolved too (lexicon:/abs/FILE)
    r = run_bytes("rl", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "p.txt"), "--reward", "lexicon:lex.txt",
                  "--out", str(tmp_path / "o"), cwd=cwd)
    assert r.returncode == 1 and r.stderr == (f"fdpo rl: --reward: the path is not valid UTF-8 (it resolves to {tmp_path}/"
                                              "bad\\xFF\\xFEutf/lex.txt; fdpo records paths in its JSON files)\n"), r.stderr


def test_list_items_may_have_blanks_around_them(tmp_path):
    """"0.5, 1, 2" is a list's layout (the decimal rule refused ' 1'); an item of blanks is empty"""
    a = run("lab", "frontier", "--n", "4", "--divergence", "rkl", "--betas", "0.5, 1,\t2 ")
    b = run("lab", "frontier", "--n", "4", "--divergence", "rkl", "--betas", "0.5,1,2")
    assert a.returncode == 0 and a.stdout == b.stdout and a.stdout.count("\n") == 4, a.stderr
    r = run("lab", "frontier", "--n", "4", "--betas", "0.5, ,2")
    assert r.returncode == 1 and "--betas: empty item in '0.5, ,2'" in r.stderr, r.stderr
    r = run("lab", "frontier", "--n", "4", "--betas", "0.5, 0x2")
    assert r.returncode == 1 and "--betas: '0x2' is not a decimal number" in r.stderr, r.stderr


def test_a_config_value_named_in_a_flag_value_message(tmp_path):
    """"--eval-every 5: ..." (the value after the flag) names the config line as "--eval-every: ..." does"""
    cfg = write(tmp_path / "a.ini", "eval-fraction = 0\neval-every = 5\n")
    r = run("pretrain", "--out", str(tmp_path / "o"), "--config", cfg, "x.txt")
    assert r.returncode == 1 and r.stderr.endswith(f"(from {cfg}:2)\n"), r.stderr
    assert r.stderr.startswith("fdpo pretrain: --eval-every 5: "), r.stderr


@pytest.mark.parametrize("sub,a,b,va,vb,msg", [
    ("frontier", "beta-min", "beta-max", "5", "1", "need 0 < min <= max (got 5, 1)"),
    ("bias", "length-min", "length-max", "50", "10", "need 0 <= min <= max (got 50, 10)"),
])
def test_a_check_of_two_flags_names_the_config_lines_of_each(tmp_path, sub, a, b, va, vb, msg):
    """docs/cli.md: a value from --config is named with its file and line wherever it is
    refused; "--beta-min/--beta-max: ..." named no line (the '/' stopped the flag's name; a
    hunt's find). Each flag the file gave is named with its line; the command line's is not."""
    cfg = write(tmp_path / "c.ini", f"threads = 1\n{a} = {va}\n{b} = {vb}\n")
    r = run("lab", sub, "--config", cfg)
    assert r.returncode == 1 and r.stderr == \
        f"fdpo lab: --{a}/--{b}: {msg} (--{a} from {cfg}:2, --{b} from {cfg}:3)\n", r.stderr
    cfg = write(tmp_path / "d.ini", f"{a} = {va}\n")
    r = run("lab", sub, "--config", cfg, f"--{b}", vb, "--threads", "1")
    assert r.returncode == 1 and r.stderr == f"fdpo lab: --{a}/--{b}: {msg} (--{a} from {cfg}:1)\n", r.stderr
    r = run("lab", sub, f"--{a}", va, f"--{b}", vb, "--threads", "1")
    assert r.returncode == 1 and r.stderr == f"fdpo lab: --{a}/--{b}: {msg}\n", r.stderr


def test_a_missing_file_a_config_named_is_said_with_its_flag_and_line(tmp_path):
    """docs/cli.md: a value from --config is named with its file and line wherever it is
    refused. A loader's "missing.jsonl: cannot open" named neither the flag nor the line in
    dpo, rm, kto, pretrain, sft, pairs, merge --base (generate, eval and rl did; a hunt's find)"""
    (tmp_path / "t.txt").write_text("the quick brown fox\n" * 8)
    m = tmp_path / "m"
    assert run("pretrain", "--threads", "1", "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--n-positions", "32",
               "--seq-len", "16", "--steps", "1", "--quiet", "--eval-every", "0", "--out", str(m),
               str(tmp_path / "t.txt")).returncode == 0
    missing = tmp_path / "missing.jsonl"
    cfg = write(tmp_path / "c.ini", f"\ndata = {missing}\n")
    for cmd in (["dpo", "--model", str(m)], ["rm", "--model", str(m)], ["kto", "--model", str(m)], ["pretrain"],
                ["pairs", "--reward", f"rm:{m}"], ["generate", "--model", str(m)]):   # pairs' --threads: an rm's
        r = run(*cmd, "--threads", "1", "--out", str(tmp_path / "o"), "--config", cfg)
        assert r.returncode == 1 and r.stderr == (f"fdpo {cmd[0]}: --data: {missing}: cannot open: No such file or "
                                                  f"directory (from {cfg}:2)\n"), r.stderr
    cfg = write(tmp_path / "b.ini", f"base = {tmp_path / 'nobase'}\n")
    r = run("merge", "--model", str(m), "--model", str(m), "--out", str(tmp_path / "o"), "--config", cfg)
    assert r.returncode == 1 and r.stderr.startswith(f"fdpo merge: --base: {tmp_path / 'nobase'}/config.json: ") and \
        r.stderr.endswith(f"(from {cfg}:1)\n"), r.stderr
    # a path under a directory a flag gave is not that flag's (a review's find: --out o1 took
    # the positional o1/missing.txt, --ref-cache-dir cc took --data cc/pairs.jsonl)
    o1 = tmp_path / "o1"
    cfg = write(tmp_path / "o.ini", f"out = {o1}\n")
    r = run("pretrain", "--config", cfg, "--steps", "1", str(o1 / "missing.txt"))
    assert r.returncode == 1 and r.stderr == f"fdpo pretrain: {o1 / 'missing.txt'}: cannot open: No such file or directory\n", r.stderr
    cc = tmp_path / "cc"
    cfg = write(tmp_path / "d.ini", f"ref-cache-dir = {cc}\ndata = {cc / 'pairs.jsonl'}\n")
    r = run("dpo", "--model", str(m), "--out", str(tmp_path / "o"), "--config", cfg)
    assert r.returncode == 1 and r.stderr == (f"fdpo dpo: --data: {cc / 'pairs.jsonl'}: cannot open: No such file or "
                                              f"directory (from {cfg}:2)\n"), r.stderr
    # a repeatable flag given twice in a file: each value names its own line (the first of two
    # got neither flag nor line: one record per flag kept the last value; a hunt's find)
    good = write(tmp_path / "good.jsonl", '{"prompt": "a", "completion": "b"}\n')
    for first, second, line in ((missing, good, 1), (good, missing, 2)):
        cfg = write(tmp_path / "s.ini", f"data = {first}\ndata = {second}\n")
        for cmd in (["sft", "--model", str(m), "--steps", "1"], ["pretrain"]):
            r = run(*cmd, "--threads", "1", "--out", str(tmp_path / "o"), "--config", cfg)
            assert r.returncode == 1 and r.stderr == (f"fdpo {cmd[0]}: --data: {missing}: cannot open: No such file or "
                                                      f"directory (from {cfg}:{line})\n"), r.stderr
    # a message "--model DIR: ..." names the line of the value DIR, not the flag's last value
    pairs = write(tmp_path / "p.jsonl", '{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    nomodel = tmp_path / "nomodel"
    cfg = write(tmp_path / "e.ini", f"model = {nomodel}\nmodel = {m}\n")
    r = run("eval", "--threads", "1", "--ref", str(m), "--data", pairs, "--n", "1", "--config", cfg)
    assert r.returncode == 1 and r.stderr == (f"fdpo eval: --model {nomodel}: {nomodel}/config.json: cannot open: No such "
                                              f"file or directory (from {cfg}:1)\n"), r.stderr


def test_info_positional_checkpoint_replaces_the_config_files_model(tmp_path):
    """docs/cli.md: positional arguments replace a config file's value as the flag does;
    `info --config c.ini CKPT` counted the file's model and CKPT as two checkpoints and was
    refused (a hunt's find). Two checkpoints of different widths: CKPT's width is read."""
    (tmp_path / "t.txt").write_text("the cat sat on the mat\n")
    for name, width in (("a", "16"), ("b", "32")):
        assert run("pretrain", "--out", str(tmp_path / name), "--data", str(tmp_path / "t.txt"), "--n-layer", "1",
                   "--n-head", "2", "--n-embd", width, "--n-positions", "32", "--seq-len", "16", "--steps", "1",
                   "--threads", "1", "--quiet", "--eval-every", "0", "--eval-fraction", "0").returncode == 0
    cfg = write(tmp_path / "i.ini", f"model = {tmp_path / 'a'}\njson = true\n")
    r = run("info", "--config", cfg, str(tmp_path / "b"))
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["checkpoint"] == str(tmp_path / "b") and got["n_embd"] == 32
    assert json.loads(run("info", "--config", cfg).stdout)["n_embd"] == 16
    r = run("info", "--config", cfg, str(tmp_path / "b"), str(tmp_path / "a"))   # still one checkpoint
    assert r.returncode == 1 and "--model: expected one checkpoint directory" in r.stderr, r.stderr


def test_a_config_value_deep_in_a_long_path_is_named_whole(tmp_path):
    """Paths up to PATH_MAX are valid: a value of a config file ~3000 bytes deep is said with
    the file's path whole and its line (the message with the line added was cut at 2560 bytes).
    A config line holds at most 198 bytes: the value is a short relative path."""
    d = tmp_path
    for c in "abcdefghijkl":
        d = d / (c * 250)
    d.mkdir(parents=True)
    cfg = write(d / "c.ini", "seed = 4\ndata = fdpo-no-such-file.jsonl\n")
    assert 3000 < len(cfg) < 4096
    r = run("pairs", "--config", cfg, "--out", str(tmp_path / "o.jsonl"))
    assert r.returncode == 1 and r.stderr == ("fdpo pairs: --data: fdpo-no-such-file.jsonl: cannot open: No such file or "
                                              f"directory (from {cfg}:2)\n"), r.stderr[-300:]


@pytest.mark.parametrize("args", [
    ["dpo", "--lrr", "1"], ["dpo", "--data", "x"], ["eval", "--n", "0"], ["pairs", "--out", "x"],
    ["generate", "--model", "/nonexistent", "--data", "/nonexistent"], ["info"], ["lab", "solve", "--bogus", "1"],
    ["report"], ["tokenize"], ["score", "--data", "x"], ["sft", "--out", "/nonexistent/o"],
    ["report", "/"],   # a directory with nothing to read: "fdpo report: report: nothing could be read"
])
def test_the_command_name_appears_once_per_error_line(args):
    r = run(*args)
    assert r.returncode == 1
    name = args[0]
    for line in r.stderr.splitlines():
        assert line.startswith(f"fdpo {name}: "), line
        assert line.count(f"{name}:") == 1 and "fdpo fdpo" not in line, line


def test_simpo_refuses_an_explicit_divergence(tmp_path):
    base = ["dpo", "--model", str(tmp_path / "none"), "--data", str(tmp_path / "none.jsonl"),
            "--out", str(tmp_path / "o"), "--loss", "simpo"]
    r = run(*base, "--divergence", "js")
    assert r.returncode == 1
    assert "--divergence js: --loss simpo ignores the divergence" in r.stderr, r.stderr
    # the default (rkl) is what SimPO runs are labelled with: accepted, the run fails later on the missing model
    r = run(*base)
    assert r.returncode == 1 and "ignores the divergence" not in r.stderr and "none" in r.stderr, r.stderr


@pytest.mark.parametrize("cmd", ["dpo", "rm", "kto"])
def test_eval_file_refuses_an_explicit_eval_fraction(tmp_path, cmd):
    """--eval-file replaces the --eval-fraction split: given together, the fraction was dropped
    without a word. Refused, on the command line or from --config; the file alone is accepted
    (the run then fails later, on the missing model)."""
    base = [cmd, "--model", str(tmp_path / "none"), "--data", str(tmp_path / "none.jsonl"),
            "--out", str(tmp_path / "o"), "--eval-file", str(tmp_path / "ev.jsonl")]
    message = (f"fdpo {cmd}: --eval-fraction: has no use with --eval-file (the file is the held-out set; "
               "the training data are not split): give one of the two")
    r = run(*base, "--eval-fraction", "0.2")
    assert r.returncode == 1 and r.stderr == message + "\n", r.stderr
    cfg = write(tmp_path / "run.ini", "eval_fraction = 0.1\n")
    r = run(*base, "--config", cfg)
    assert r.returncode == 1 and r.stderr == f"{message} (from {cfg}:1)\n", r.stderr
    r = run(*base)
    assert r.returncode == 1 and "has no use" not in r.stderr and "none" in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("cmd", ["pretrain", "sft", "dpo", "rm", "kto"])
def test_eval_flags_without_an_evaluation_are_refused(tmp_path, cmd):
    """--eval-every N with no held-out set (--eval-fraction 0) evaluated nothing, and
    --eval-max-seqs (pretrain, sft) with --eval-fraction 0 capped nothing; both were accepted
    without effect. Refused before anything is loaded; the defaults, and --eval-every 0 with a
    held-out set (every command evaluates it at the end into eval_summary.json, pretrain and sft
    on the first --eval-max-seqs sequences), are accepted (the run then fails later, on the
    missing model)."""
    base = [cmd, "--model", str(tmp_path / "none"), "--data", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o")]
    r = run(*base, "--eval-fraction", "0", "--eval-every", "5")
    tail = " and no --eval-file is given" if cmd in ("dpo", "rm", "kto") else ""
    assert r.returncode == 1 and r.stderr == \
        f"fdpo {cmd}: --eval-every 5: there is no held-out set to evaluate (--eval-fraction is 0{tail})\n", r.stderr
    ok_cases = [[], ["--eval-fraction", "0"], ["--eval-every", "0"], ["--eval-every", "0", "--eval-fraction", "0.2"]]
    if cmd in ("pretrain", "sft"):
        r = run(*base, "--eval-fraction", "0", "--eval-max-seqs", "3")
        assert r.returncode == 1 and r.stderr == \
            f"fdpo {cmd}: --eval-max-seqs: has no effect without an evaluation (--eval-fraction is 0)\n", r.stderr
        ok_cases.append(["--eval-every", "0", "--eval-max-seqs", "3"])   # it caps the final evaluation
    for ok_flags in ok_cases:
        r = run(*base, *ok_flags)
        assert r.returncode == 1 and "--eval" not in r.stderr and "none" in r.stderr, (ok_flags, r.stderr)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("cmd", ["pretrain", "sft", "dpo", "rm", "kto"])
def test_an_eval_flag_out_of_range_is_its_own_error(tmp_path, cmd):
    """--eval-fraction -0.1 read as "no held-out set": the error blamed the valid --eval-every 5
    (or --eval-max-seqs) and said "--eval-fraction is 0". The range error comes first and names
    the flag, its value and its --config line; likewise a negative --eval-every or --eval-max-seqs
    is that flag's own error, not the other's."""
    base = [cmd, "--model", str(tmp_path / "none"), "--data", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o")]
    fraction = f"fdpo {cmd}: --eval-fraction: -0.1 is not in [0, 1)"
    for other in (["--eval-every", "5"], ["--eval-every", "0"]) + ((["--eval-max-seqs", "2"],) if cmd in ("pretrain", "sft") else ()):
        r = run(*base, "--eval-fraction", "-0.1", *other)
        assert r.returncode == 1 and r.stderr == fraction + "\n", (other, r.stderr)
    cfg = write(tmp_path / "run.ini", "eval-every = 5\neval-fraction = -0.1\n")
    r = run(*base, "--config", cfg)
    assert r.returncode == 1 and r.stderr == f"{fraction} (from {cfg}:2)\n", r.stderr
    if cmd in ("pretrain", "sft"):
        r = run(*base, "--eval-fraction", "0", "--eval-every", "-1", "--eval-max-seqs", "2")
        assert r.returncode == 1 and r.stderr == f"fdpo {cmd}: --eval-every: -1 must be >= 0\n", r.stderr
        r = run(*base, "--eval-every", "0", "--eval-max-seqs", "-1")
        assert r.returncode == 1 and r.stderr == f"fdpo {cmd}: --eval-max-seqs: -1 must be >= 0\n", r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flags,msg", [
    (["--ref", "/nonexistent"], "--ref /nonexistent: --loss simpo uses no reference model; drop --ref or pick another --loss"),
    (["--ref-live"], "--ref-live: --loss simpo uses no reference model; drop --ref-live or pick another --loss"),
    (["--ref-cache-dir", "c"], "--ref-cache-dir c: --loss simpo uses no reference model (nothing is cached); drop "
                               "--ref-cache-dir or pick another --loss"),
])
def test_simpo_refuses_the_reference_flags(tmp_path, flags, msg):
    """SimPO is reference-free: --ref (even a path that does not exist) was accepted and saved as
    the run's fixed reference, --ref-live and --ref-cache-dir were ignored"""
    r = run("dpo", "--model", str(tmp_path / "none"), "--data", str(tmp_path / "none.jsonl"),
            "--out", str(tmp_path / "o"), "--loss", "simpo", *flags)
    assert r.returncode == 1 and r.stderr == f"fdpo dpo: {msg}\n", r.stderr


@pytest.mark.parametrize("loss", ["sigmoid", "hinge", "ipo"])
def test_simpo_gamma_without_simpo_is_refused(tmp_path, loss):
    """as --label-smoothing with hinge: a --simpo-gamma other than its default with a loss that has
    no gamma was accepted and unused; the default (0.5) given explicitly still passes the check"""
    base = ["dpo", "--model", str(tmp_path / "none"), "--data", str(tmp_path / "none.jsonl"),
            "--out", str(tmp_path / "o"), "--loss", loss]
    r = run(*base, "--simpo-gamma", "0.3")
    assert r.returncode == 1 and r.stderr == f"fdpo dpo: --simpo-gamma: only the simpo loss uses it, not {loss} (got 0.3)\n", r.stderr
    r = run(*base, "--simpo-gamma", "0.5")
    assert r.returncode == 1 and "--simpo-gamma" not in r.stderr and "none" in r.stderr, r.stderr
    r = run(*base[:-1], "simpo", "--simpo-gamma", "0.3")
    assert r.returncode == 1 and "--simpo-gamma" not in r.stderr and "none" in r.stderr, r.stderr


def test_pretrain_takes_data_or_positional_files_alike(tmp_path):
    text = write(tmp_path / "t.txt", "hello world, " * 200)
    small = ["--n-layer", "1", "--n-head", "1", "--n-embd", "8", "--n-positions", "16", "--seq-len", "16",
             "--steps", "2", "--batch-size", "2", "--quiet", "--threads", "1", "--eval-every", "0"]
    a = run("pretrain", "--out", str(tmp_path / "a"), "--data", text, *small)
    b = run("pretrain", "--out", str(tmp_path / "b"), *small, text)
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert (tmp_path / "a/model.safetensors").read_bytes() == (tmp_path / "b/model.safetensors").read_bytes()
    r = run("pretrain", "--out", str(tmp_path / "c"), *small)
    assert r.returncode == 1 and "--data: no input files" in r.stderr


@pytest.mark.parametrize("args", [
    ["pairs", "--reward", "length"],
    ["score", "--model", "M", "--reward", "length:words"],
    ["score", "--model", "M"],
    ["eval", "--model", "M", "--ref", "R", "--reward", "length", "--safety", "lexicon:W"],
    ["online", "--model", "M", "--reward", "cmd:true"],
    ["online", "--mode", "step", "--model", "M", "--reward", "length"],
    ["rl", "--model", "M", "--reward", "length"],
    ["sacpo", "--model", "M", "--reward", "length", "--safety", "lexicon:W", "--lambda", "1"],
])
def test_lexicon_without_an_afinn_reward_is_refused(tmp_path, args):
    """--lexicon is the AFINN file of --reward afinn; with another reward (or none) it used to
    be ignored without a word. Refused before anything is read or OUT is made."""
    out = tmp_path / "out"
    r = run(*args, "--lexicon", tmp_path / "lex.json", "--data", tmp_path / "d.jsonl", "--out", out)
    assert r.returncode == 1, r.stderr
    assert f"--lexicon {tmp_path / 'lex.json'}: only used by --reward afinn" in r.stderr
    assert not out.exists()


def test_lexicon_with_afinn_as_the_safety_spec_is_used(tmp_path):
    """eval reads --lexicon for --safety afinn too: not refused (it fails later, on the file)"""
    r = run("eval", "--model", tmp_path / "M", "--ref", tmp_path / "R", "--reward", "length", "--safety", "afinn", "--lexicon",
            tmp_path / "lex.json", "--data", tmp_path / "d.jsonl")
    assert r.returncode == 1
    assert "only used by" not in r.stderr


# ---- flags that only one choice of another flag uses: given with another, refused (docs/cli.md) ----

TIMEOUT_CMDS = [
    ["pairs"],
    ["pairs", "--reward", "length"],
    ["score", "--model", "M"],
    ["score", "--model", "M", "--reward", "afinn"],
    ["eval", "--model", "M", "--ref", "R", "--reward", "length", "--safety", "lexicon:W"],
    ["online", "--model", "M", "--reward", "afinn"],
    ["online", "--mode", "step", "--model", "M", "--reward", "length"],
    ["rl", "--model", "M", "--reward", "rm:R"],
    ["sacpo", "--model", "M", "--reward", "length", "--safety", "lexicon:W", "--lambda", "1"],
    ["sacpo", "--model", "M", "--reward-data", "p.jsonl", "--safety-data", "s.jsonl", "--lambda", "1"],
]


@pytest.mark.parametrize("value", ["30", "0", "-1"])
@pytest.mark.parametrize("args", TIMEOUT_CMDS)
def test_reward_timeout_without_a_cmd_reward_is_refused(tmp_path, args, value):
    """--reward-timeout bounds a cmd: reward and nothing else; with another reward (or none) any
    value, a negative or zero one included, was accepted and unused. Refused when given (the
    library cannot tell 60 given from its default), in every command that has the flag, before
    anything is read or OUT is made."""
    out = tmp_path / "out"
    r = run(*args, "--reward-timeout", value, "--data", str(tmp_path / "d.jsonl"), "--out", str(out))
    assert r.returncode == 1
    assert r.stderr == f"fdpo {args[0]}: --reward-timeout {value}: only used by a cmd:PROGRAM reward\n", r.stderr
    assert not out.exists()


@pytest.mark.parametrize("args", [
    ["pairs", "--reward", "cmd:true"],
    ["eval", "--model", "M", "--ref", "R", "--reward", "length", "--safety", "cmd:true"],
    ["rl", "--model", "M", "--reward", "cmd:true"],
    ["online", "--model", "M", "--reward", "cmd:true"],
])
def test_reward_timeout_with_a_cmd_reward_is_used_and_must_be_positive(tmp_path, args):
    (tmp_path / "d.jsonl").write_text('{"prompt": "a", "completion": "b", "reward": 1}\n')
    r = run(*args, "--reward-timeout", "5", "--data", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and "--reward-timeout" not in r.stderr, r.stderr   # fails later, on M
    r = run(*args, "--reward-timeout", "0", "--data", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and "--reward-timeout: 0 seconds; must be > 0" in r.stderr, r.stderr


def test_grpo_eps_is_refused_with_rloo(tmp_path):
    """--grpo-eps is GRPO's advantage epsilon: with --algo rloo it was accepted and unused"""
    base = ["rl", "--model", str(tmp_path / "M"), "--data", str(tmp_path / "p.txt"), "--reward", "length",
            "--out", str(tmp_path / "o"), "--grpo-eps", "0.001"]
    for algo in ([], ["--algo", "rloo"]):
        r = run(*base, *algo)
        assert r.returncode == 1 and r.stderr == "fdpo rl: --grpo-eps 0.001: only used by --algo grpo\n", r.stderr
    r = run(*base, "--algo", "grpo")
    assert r.returncode == 1 and "--grpo-eps" not in r.stderr and "p.txt" in r.stderr, r.stderr


@pytest.mark.parametrize("args", [
    ["online", "--model", "M", "--reward", "length"],
    ["online", "--mode", "step", "--model", "M", "--reward", "length"],
    ["sacpo", "--model", "M", "--reward", "length", "--safety", "lexicon:W", "--lambda", "1"],
])
def test_bt_scale_is_refused_without_all_bt_pairing(tmp_path, args):
    """--bt-scale is the temperature of --pairing all-bt's Bradley-Terry labels: with the default
    best-worst pairing it was accepted and unused"""
    base = [*args, "--data", str(tmp_path / "p.txt"), "--out", str(tmp_path / "o"), "--bt-scale", "2"]
    for pairing in ([], ["--pairing", "best-worst"]):
        r = run(*base, *pairing)
        assert r.returncode == 1 and r.stderr == f"fdpo {args[0]}: --bt-scale 2: only used by --pairing all-bt\n", r.stderr
    r = run(*base, "--pairing", "all-bt")
    assert r.returncode == 1 and "--bt-scale" not in r.stderr, r.stderr


@pytest.mark.parametrize("reward", [[], ["--reward", "length"], ["--reward", "afinn"], ["--reward", "cmd:true"],
                                    ["--reward", "words:W"], ["--reward", "lexicon:W"]])
def test_pairs_threads_without_an_rm_reward_is_refused(tmp_path, reward):
    """pairs' --threads are the threads of an rm: reward model: with another reward (or none)
    any value was accepted and the output was byte-identical, while --lexicon and
    --reward-timeout are refused without their reward. Refused when given (flag or config)."""
    out = tmp_path / "out.jsonl"
    args = ["pairs", *reward, "--data", str(tmp_path / "d.jsonl"), "--out", str(out)]
    r = run(*args, "--threads", "7")
    assert r.returncode == 1 and r.stderr == "fdpo pairs: --threads 7: only used by an rm:DIR reward\n", r.stderr
    cfg = tmp_path / "c.ini"
    cfg.write_text("threads = 0\n")
    r = run(*args, "--config", str(cfg))
    assert r.returncode == 1 and r.stderr.startswith("fdpo pairs: --threads 0: only used by an rm:DIR reward"), r.stderr
    assert not out.exists()
    r = run("pairs", "--reward", "rm:R", "--data", str(tmp_path / "d.jsonl"), "--out", str(out), "--threads", "7")
    assert r.returncode == 1 and "--threads" not in r.stderr, r.stderr   # fails later, on the files


@pytest.mark.parametrize("args", [
    ["dpo", "--model", "M", "--data", "d.jsonl"],
    ["rm", "--model", "M", "--data", "d.jsonl"],
    ["kto", "--model", "M", "--data", "d.jsonl"],
    ["sacpo", "--model", "M", "--reward-data", "r.jsonl", "--safety-data", "s.jsonl", "--lambda", "1"],
])
def test_max_prompt_length_is_refused_without_on_long_truncate(tmp_path, args):
    """--max-prompt-length is where a too-long pair's prompt is cut (docs/dpo.md): with --on-long
    skip or error the pair is skipped or refused instead, and any value was accepted and unused.
    Refused before anything is read or OUT is made; with truncate it passes (fails later, on M)."""
    out = tmp_path / "out"
    base = [*args, "--out", str(out), "--max-length", "16", "--max-prompt-length", "4"]
    for policy in ("skip", "error"):
        r = subprocess.run([FDPO, *base, "--on-long", policy], capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert r.returncode == 1
        assert r.stderr == f"fdpo {args[0]}: --max-prompt-length 4: only used by --on-long truncate (got --on-long {policy})\n", \
            r.stderr
        assert not out.exists()
    for policy in (["--on-long", "truncate"], []):
        r = subprocess.run([FDPO, *base, *policy], capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert r.returncode == 1 and "--max-prompt-length" not in r.stderr, r.stderr


@pytest.mark.parametrize("value", ["-h", "--help", "--config"])
def test_a_flags_value_that_reads_as_help_or_config_is_the_value(tmp_path, value):
    """the item after a flag that takes a value is that value (pass 2 took it so): pass 1 read
    `--out -h` as --help, printed the usage and exited 0 without running (generate --stop -h)"""
    r = subprocess.run([FDPO, "lab", "solve", "--n", "5", "--divergence", "rkl", "--out", value], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("divergence,beta,"), r.stdout + r.stderr
    assert (tmp_path / value).read_text().startswith("pi_ref,reward,pi\n")
    r = run("lab", "solve", "--n", "5", "--divergence", value)
    assert r.returncode == 1 and f"--divergence: unknown divergence '{value}'" in r.stderr, r.stdout + r.stderr
    # after a boolean flag (it takes no value) and after an `=` value, -h is still help
    for args in (["constrained", "--stepwise", "-h"], ["constrained", "--out=x", "-h"]):
        r = run("lab", *args)
        assert r.returncode == 0 and r.stdout.startswith("usage: fdpo lab constrained"), r.stdout + r.stderr


def test_version_to_a_full_stdout_fails_as_help_does():
    """--version to /dev/full exited 0 having written nothing (--help exited 1 there)"""
    for args in (["--version"], ["--help"]):
        with open("/dev/full", "w") as full:
            r = subprocess.run([FDPO, *args], stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
        assert r.returncode == 1 and r.stderr == "fdpo: <stdout>: write error\n", (args, r.stderr)


def reward_specs_of_docs():
    """the specs of docs/eval.md's reward table (its first column), FILE/DIR/PROGRAM as written there"""
    text = (Path(__file__).resolve().parents[2] / "docs" / "eval.md").read_text()
    section = text.split("## Rewards (`--reward SPEC`, `--safety SPEC`)", 1)[1].split("\n## ", 1)[0]
    return [re.match(r"\| `([^`]+)`", l).group(1) for l in section.splitlines() if re.match(r"\| `", l)]


@pytest.mark.parametrize("cmd", ["eval", "score", "pairs", "rl", "online", "sacpo"])
def test_every_reward_flag_lists_every_reward(cmd):
    """rl, online, pairs and sacpo listed only some of the rewards their --reward takes (no afinn:sum,
    no length:words or words:FILE), and rl/online/pairs' --lexicon named afinn alone"""
    specs = reward_specs_of_docs()
    assert {"afinn", "afinn:sum", "words:FILE", "length:words"} <= set(specs), specs
    line = [l for l in helptext(cmd).splitlines() if l.startswith("  --reward ")]
    assert len(line) == 1, line
    for spec in specs:
        assert spec in line[0], (spec, line[0])


def test_info_takes_a_path_that_is_not_utf8_and_info_json_refuses_it(tmp_path):
    """plain info prints key: value lines and records nothing, so it reads such a checkpoint as
    before; only --json puts the path in JSON (docs/cli.md: "info in its --json"; a review's find)"""
    (tmp_path / "cfg.json").write_text(json.dumps({"vocab_size": 257, "n_positions": 16, "n_embd": 16, "n_layer": 2,
                                                   "n_head": 2, "model_type": "gpt2"}))
    ckpt = os.fsencode(str(tmp_path)) + b"/c" + BAD
    r = subprocess.run([HARNESS, "model-init", "--config", str(tmp_path / "cfg.json"), "--seed", "1", "--out", ckpt],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([os.fsencode(FDPO), b"info", ckpt], capture_output=True, timeout=60)   # prints the raw bytes
    assert r.returncode == 0 and b"checkpoint: " + ckpt + b"\n" in r.stdout and b"model_type: gpt2\n" in r.stdout, r.stderr
    r = run_bytes("info", "--json", ckpt)
    assert r.returncode == 1 and r.stdout == "" and r.stderr == (
        f"fdpo info: a path argument: the path is not valid UTF-8 ({tmp_path}/cbad\\xFF\\xFEutf; "
        "fdpo records paths in its JSON files)\n"), r.stderr
