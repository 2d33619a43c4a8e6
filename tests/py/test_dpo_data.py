"""Preference data loading (include/fdpo/pref.h, docs/dpo.md): prompt extraction, chat
template, truncation and the skip/error policy, checked token by token against an
independent Python implementation of the documented rules (byte-level tokenizer), and every
bad input against its error message."""
import json

import pytest

from dpo_common import EOT, harness, tokenize_pair, write_jsonl

ROWS = [
    {"prompt": "Hi", "chosen": " there", "rejected": " you"},
    {"chosen": "The answer is 4.", "rejected": "The answer is five."},       # implicit: space goes to completions
    {"chosen": "na\u00efve cat", "rejected": "na\u00f6ve dog"},              # common prefix ends mid code point
    {"chosen": "abc", "rejected": "xyz"},                                     # empty implicit prompt -> [EOT]
    {"prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}],
     "chosen": [{"role": "assistant", "content": "Hello!"}],
     "rejected": [{"role": "assistant", "content": "What?"}]},
    {"chosen": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
                {"role": "user", "content": "thanks"}],
     "rejected": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"}]},
    {"prompt": "P" * 30, "chosen": "c" * 30, "rejected": "r" * 5},           # both prompt and chosen cut
    {"prompt": "tiny", "chosen": "x" * 40, "rejected": "y" * 40},             # only completions cut
    {"prompt": "has <|endoftext|> inside", "chosen": " a", "rejected": " b"},  # literal special is text
]


def load(tmp_path, rows, *args, check=True):
    p = tmp_path / "d.jsonl"
    write_jsonl(p, rows)
    r = harness("dpo-data", "--data", p, *args, check=check)
    return (json.loads(r.stdout) if r.returncode == 0 else None), r, str(p)


@pytest.mark.parametrize("max_len,max_prompt", [(0, 0), (24, 10), (24, 0)])
def test_tokens_match_documented_rules(tmp_path, max_len, max_prompt):
    out, _, _ = load(tmp_path, ROWS, "--max-length", max_len, "--max-prompt-length", max_prompt)
    assert len(out["pairs"]) == len(ROWS)
    for row, got, line in zip(ROWS, out["pairs"], range(1, 100)):
        P, C, R = tokenize_pair(row, max_len, max_prompt)
        assert got["line"] == line
        assert (got["prompt"], got["chosen"], got["rejected"]) == (P, C, R), row
    full = [tokenize_pair(row) for row in ROWS]
    cut = [tokenize_pair(row, max_len, max_prompt) for row in ROWS]
    s = out["summary"]
    assert s["truncated_prompt"] == sum(len(a[0]) != len(b[0]) for a, b in zip(full, cut))
    assert s["truncated_completion"] == sum(len(a[1]) != len(b[1]) or len(a[2]) != len(b[2]) for a, b in zip(full, cut))
    assert (s["truncated_prompt"] > 0) == (max_len > 0) and (s["truncated_completion"] > 0) == (max_len > 0)
    assert s["conversational"] == 2 and s["implicit_prompt"] == 4


def test_specific_tokens(tmp_path):
    """A few hand-written expectations, so the rules are pinned down independently of the
    reference implementation above."""
    out, _, _ = load(tmp_path, ROWS[:5])
    p = out["pairs"]
    b = lambda s: list(s.encode())
    assert p[0]["prompt"] == b("Hi") and p[0]["chosen"] == b(" there") + [EOT]
    assert p[1]["prompt"] == b("The answer is") and p[1]["chosen"] == b(" 4.") + [EOT]
    assert p[2]["prompt"] == b("na") and p[2]["chosen"] == b("\u00efve cat") + [EOT]
    assert p[3]["prompt"] == [EOT] and p[3]["rejected"] == b("xyz") + [EOT]
    assert p[4]["prompt"] == b("<|system|>\nBe kind.\n<|user|>\nHi\n<|assistant|>\n")
    assert p[4]["chosen"] == b("Hello!\n") + [EOT]


def test_truncation_keeps_prompt_end_and_completion_start(tmp_path):
    out, _, _ = load(tmp_path, [{"prompt": "0123456789", "chosen": "abcdefgh", "rejected": "ABC"}],
                     "--max-length", 10, "--max-prompt-length", 4)
    p = out["pairs"][0]
    assert p["prompt"] == list(b"6789")
    assert p["chosen"] == list(b"abcdef") and p["rejected"] == list(b"ABC") + [EOT]
    assert p["truncated"]


BAD = [
    ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b" "rejected": "c"}', 2, "invalid JSON"),
    ('{"prompt": "a", "chosen": "b"}', 1, "missing field 'rejected'"),
    ('{"prompt": "a", "rejected": "b"}', 1, "missing field 'chosen'"),
    ('{"prompt": "a", "chosen": 3, "rejected": "c"}', 1, "field 'chosen' must be a string"),
    ('{"prompt": 1, "chosen": "b", "rejected": "c"}', 1, "field 'prompt' must be a string"),
    ('\n\n{"prompt": "a", "chosen": "", "rejected": "c"}', 3, "empty chosen completion"),
    ('{"chosen": "same", "rejected": "same"}', 1, "identical"),
    ('{"chosen": "ab", "rejected": "abc"}', 1, "empty chosen completion"),
    ('[1, 2]', 1, "expected a JSON object"),
    ('{"prompt": "a", "chosen": "b", "rejected": "c"} {"x": 1}', 1, "unexpected text after the JSON object"),
    ('{"chosen": [{"role": "user", "content": "x"}], "rejected": "y"}', 1, "field 'rejected' must be a list"),
    ('{"chosen": [{"role": "robot", "content": "x"}], "rejected": [{"role": "assistant", "content": "y"}]}', 1,
     "chosen[0].role is 'robot'"),
    ('{"chosen": [{"role": "user"}], "rejected": [{"role": "assistant", "content": "y"}]}', 1,
     "missing field 'chosen[0].content'"),
    ('{"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "user", "content": "x"}], '
     '"rejected": [{"role": "assistant", "content": "y"}]}', 1, "chosen[0] must be an assistant turn"),
]


@pytest.mark.parametrize("text,line,msg", BAD)
def test_bad_lines_name_file_and_line(tmp_path, text, line, msg):
    p = tmp_path / "bad.jsonl"
    p.write_text(text + "\n")
    r = harness("dpo-data", "--data", p, check=False)
    assert r.returncode != 0
    assert f"{p}:{line}:" in r.stderr and msg in r.stderr, r.stderr


def test_too_long_error_and_skip(tmp_path):
    rows = [{"prompt": "p", "chosen": "c" * 20, "rejected": "r"}, {"prompt": "p", "chosen": "c", "rejected": "r"}]
    _, r, path = load(tmp_path, rows, "--max-length", 8, "--on-long", "error", check=False)
    assert r.returncode != 0 and f"{path}:1:" in r.stderr and "--max-length 8" in r.stderr
    out, _, _ = load(tmp_path, rows, "--max-length", 8, "--on-long", "skip")
    assert [p["line"] for p in out["pairs"]] == [2]
    assert out["summary"]["skipped"]["too_long"] == 1


def test_skip_policy_counts_every_dropped_pair(tmp_path):
    rows = [{"prompt": "p", "chosen": "", "rejected": "r"},
            {"prompt": "p", "chosen": "same", "rejected": "same"},
            {"prompt": "p", "chosen": "ok", "rejected": "no"},
            {"prompt": "p", "chosen": "abcdefXX", "rejected": "abcdefYY"}]   # identical once cut to 6
    out, _, _ = load(tmp_path, rows, "--bad-pairs", "skip", "--max-length", 7, "--max-prompt-length", 1)
    s = out["summary"]
    assert [p["line"] for p in out["pairs"]] == [3]
    assert s["lines"] == 4 and s["pairs"] == 1
    assert s["skipped"] == {"empty_completion": 1, "identical": 1, "too_long": 0, "identical_after_truncation": 1}


def test_invalid_options_name_the_flag(tmp_path):
    _, r, _ = load(tmp_path, ROWS[:1], "--max-length", 8, "--max-prompt-length", 8, check=False)
    assert r.returncode != 0 and "--max-prompt-length 8" in r.stderr
    _, r, _ = load(tmp_path, ["", "  "], check=False)
    assert r.returncode != 0 and "no usable preference pairs" in r.stderr
