"""Preference data loading (include/fdpo/pref.h, docs/dpo.md): prompt extraction, chat
template, truncation and the skip/error policy, checked token by token against an
independent Python implementation of the documented rules (byte-level tokenizer), and every
bad input against its error message."""
import json
import math
import os

import pytest

from dpo_common import EOT, fdpo, harness, save_byte_tokenizer, tokenize_pair, write_jsonl

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
    # at (24, 10): the prompt is cut to 10 and chosen (13 + EOT) fills the budget of 14 exactly,
    # so no completion is cut (counting one passed; mutation review)
    {"prompt": "P" * 30, "chosen": "c" * 13, "rejected": "r"},
]


def load(tmp_path, rows, *args, check=True):
    p = tmp_path / "d.jsonl"
    write_jsonl(p, rows)
    r = harness("dpo-data", "--data", p, *args, check=check)
    return (json.loads(r.stdout) if r.returncode == 0 else None), r, str(p)


# (25, 0): the default prompt limit of an odd max-length is floor(25 / 2) = 12
@pytest.mark.parametrize("max_len,max_prompt", [(0, 0), (24, 10), (24, 0), (25, 0)])
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
     "chosen[0].content: missing or not a string"),
    ('{"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "user", "content": "x"}], '
     '"rejected": [{"role": "assistant", "content": "y"}]}', 1, "chosen[0] must be an assistant turn"),
    # conversational, no prompt, chosen == rejected: both completions empty (was memcmp(NULL, NULL, 0), UBSan)
    ('{"chosen": [{"role": "assistant", "content": "x"}], "rejected": [{"role": "assistant", "content": "x"}]}', 1,
     "identical"),
    # NUL: cJSON cuts the string there, so chosen and rejected would both read "b"
    (r'{"prompt": "a", "chosen": "b\u0000x", "rejected": "b\u0000y"}', 1, "field 'chosen' contains a NUL character"),
    ('{"prompt": "a", "chosen": "ok", "rejected": "b"}\n' r'{"prompt": "q\u0000tail", "chosen": "b", "rejected": "c"}', 2,
     "field 'prompt' contains a NUL character"),
    ('{"prompt": "a", "chosen": "b\x00x", "rejected": "c"}', 1, "field 'chosen' contains a NUL character"),  # raw 0 byte
    (r'{"prompt": "a", "chosen\u0000x": "b", "rejected": "c"}', 1,  # the key would read as "chosen"
     "field 'chosen\\u0000... (a key)' contains a NUL character"),
    (r'{"chosen": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "x\u0000"}], '
     r'"rejected": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "y"}]}', 1,
     "field 'chosen[1].content' contains a NUL character"),
    # a misspelt prompt silently became TRL's implicit prompt, its text dropped
    ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"promt": "Q: what?", "chosen": " yes", "rejected": " no"}', 2,
     "no field 'prompt', but 'promt': a misspelling?"),
    ('{"Prompt": "Q", "chosen": " yes", "rejected": " no"}', 1, "no field 'prompt', but 'Prompt': a misspelling?"),
    ('{"PROPMT": "Q", "chosen": " yes", "rejected": " no"}', 1, "no field 'prompt', but 'PROPMT': a misspelling?"),
    # a prompt string that is a message list (how samples carry one) is checked as the list
    # form is: it rendered role 'tool', and a "\u0000" in it cut the content
    (r'{"prompt": "[{\"role\":\"tool\",\"content\":\"hi\"}]", "chosen": "a", "rejected": "b"}', 1,
     "prompt[0].role is 'tool'; expected system, user or assistant"),
    (r'{"prompt": "[{\"role\":\"user\",\"content\":\"h\\u0000i\"}]", "chosen": "a", "rejected": "b"}', 1,
     "field 'prompt[0].content' contains a NUL character"),
    # a key twice in a prompt string's messages: refused as in the list form (cJSON's lookup read
    # the first "content", Python's json.loads of the string the last)
    (r'{"prompt": "[{\"role\":\"user\",\"content\":\"a\",\"content\":\"b\"}]", "chosen": "x", "rejected": "y"}', 1,
     'prompt: key "content" appears twice in one object (readers differ on which one counts)'),
    # TRL refuses a prompt that ends with a system message ("Invalid role in the last message")
    ('{"prompt": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"}], '
     '"chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]}', 1,
     "prompt[1] is a system message"),
    ('{"chosen": [{"role": "system", "content": "s"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "x"}], '
     '"rejected": [{"role": "system", "content": "s"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "y"}]}', 1,
     "no field 'prompt', and the messages chosen and rejected share end with a system message (chosen[0])"),
    # implicit conversational prompts that differ from the first message said "chosen[0] must be an assistant turn"
    ('{"chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}], '
     '"rejected": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "y"}]}', 1,
     "no field 'prompt', and chosen and rejected start with different messages"),
    # a tool call was dropped from the text: the turn trained as empty
    ('{"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "", '
     '"tool_calls": [{"id": "c1", "type": "function"}]}], "rejected": [{"role": "assistant", "content": "b"}]}', 1,
     "chosen[0].tool_calls: tool calls are not rendered by fdpo's chat templates"),
    # raw control characters: Python's json (so datasets/TRL) refuses the line, cJSON took it
    ('{"prompt": "a\tb", "chosen": "x", "rejected": "y"}', 1,
     "invalid JSON: a raw control character (U+0009) inside a string at column 14"),
    ('\x01{"prompt": "a", "chosen": "x", "rejected": "y"}', 1,
     "invalid JSON: a raw control character (U+0001) between values at column 1"),
]


def test_a_prompt_string_with_text_after_a_message_list_is_text(tmp_path):
    """A prompt string that starts with a message list and goes on was read as that list, the
    text after it dropped; it is plain text (only a string that is wholly a list is one)."""
    rows = [{"prompt": '[{"role":"user","content":"hi"}] Translate the JSON above.', "chosen": " a", "rejected": " b"},
            {"prompt": '[{"role":"user","content":"hi"}]  ', "chosen": " a", "rejected": " b"}]
    out, _, _ = load(tmp_path, rows)
    assert out["pairs"][0]["prompt"] == list(rows[0]["prompt"].encode())
    assert out["pairs"][1]["prompt"] == list(b"<|user|>\nhi\n<|assistant|>\n")   # blanks after the list: still one


@pytest.mark.parametrize("text,line,msg", BAD)
def test_bad_lines_name_file_and_line(tmp_path, text, line, msg):
    p = tmp_path / "bad.jsonl"
    p.write_text(text + "\n")
    r = harness("dpo-data", "--data", p, check=False)
    assert r.returncode != 0
    assert f"{p}:{line}:" in r.stderr and msg in r.stderr, r.stderr


def test_a_conversation_kept_as_text_with_a_key_twice_is_refused(tmp_path):
    """A plain-text prompt line that is a conversation's JSON text is refused when a message
    holds a key twice, as the JSONL list form is (docs/dpo.md: at any depth): fdpo rendered the
    first "content", Python's json keeps the last."""
    text = '[{"role":"user","content":"a","content":"b"}]'
    assert json.loads(text) == [{"role": "user", "content": "b"}]
    p = tmp_path / "p.txt"
    p.write_text(text + "\n")
    r = harness("data-chat-prompts", "byte", "plain", p, check=False)
    assert r.returncode != 0 and f'{p}:1: prompt: key "content" appears twice in one object' in r.stderr, r.stdout + r.stderr
    p.write_text('[{"role":"user","content":"a"}]\n')   # the same without the second key renders
    r = harness("data-chat-prompts", "byte", "plain", p)
    assert json.loads(r.stdout)["ids"] == [list(b"<|user|>\na\n<|assistant|>\n")]


def trl_extract_prompt(chosen, rejected):
    """TRL's extract_prompt for strings (huggingface/trl trl/data_utils.py), as published."""
    for idx in range(min(len(chosen), len(rejected))):
        if chosen[idx] != rejected[idx]:
            if chosen[idx - 1] == " ":
                idx -= 1
            break
    return {"prompt": chosen[:idx], "chosen": chosen[idx:], "rejected": rejected[idx:]}


@pytest.mark.parametrize("chosen,rejected", [("Yes", "Yes, definitely"), ("na\u00efve cat", "na\u00efve")])
def test_implicit_prompt_swallowing_a_completion_says_so(tmp_path, chosen, rejected):
    """A pair without "prompt" whose one completion is a prefix of the other: the documented
    implicit prompt, the longest common prefix, is the whole of it, so that completion is empty.
    The error said only "empty chosen completion (after the prompt)" for a pair with a non-empty
    chosen and no prompt (hunt of wave 46); it names the prefix and the difference from TRL's
    extract_prompt, which keeps one character back."""
    short = "chosen" if len(chosen) < len(rejected) else "rejected"
    other = "rejected" if short == "chosen" else "chosen"
    common = os.path.commonprefix([chosen, rejected])
    assert common == min(chosen, rejected, key=len)                     # the documented rule: all of it
    trl = trl_extract_prompt(chosen, rejected)
    assert trl[short] == common[-1] and trl["prompt"] == common[:-1]     # TRL: its last character stays
    p = tmp_path / "pre.jsonl"
    p.write_text(json.dumps({"chosen": chosen, "rejected": rejected}) + "\n")
    r = harness("dpo-data", "--data", p, check=False)
    assert r.returncode == 1 and (f"{p}:1: empty {short} completion: no field 'prompt', and {short} is a prefix of "
                                  f"{other}, so the implicit prompt (their longest common prefix) is the whole of "
                                  f"{short} (TRL's extract_prompt keeps its last character as the completion)") in r.stderr, r.stderr
    p.write_text(json.dumps({"chosen": chosen, "rejected": rejected}) + "\n"
                 + json.dumps({"prompt": "q", "chosen": " a", "rejected": " b"}) + "\n")
    r = harness("dpo-data", "--data", p, "--bad-pairs", "skip", check=False)
    assert r.returncode == 0 and json.loads(r.stdout)["summary"]["skipped"]["empty_completion"] == 1, r.stdout + r.stderr


@pytest.mark.parametrize("msgs,token", [
    ([{"role": "user", "content": "hi", "score": float("nan")}], "NaN"),
    ([{"role": "user", "content": "hi", "score": float("-inf")}], "-Infinity"),
    ([{"role": "user", "content": "hi \ud83d"}], "\\ud83d"),
])
def test_a_message_list_only_python_reads_is_refused_not_text(tmp_path, msgs, token):
    """A prompt string that Python's json.dumps wrote for a message list holding NaN, Infinity
    or a lone surrogate was read as literal plain text (hunt of wave 46): Python's json.loads
    reads it as the conversation (docs/training.md: such a string is read as the conversation
    it stands for), cJSON refuses it. It is refused by FILE:LINE, the byte where Python's
    extension starts named, in a prompt file and as a pair's prompt."""
    text = json.dumps(msgs)
    m = json.loads(text)[0]                                             # Python reads the conversation,
    assert m["role"] == "user" and any(                                # a value no JSON text holds in it
        (isinstance(v, float) and not math.isfinite(v)) or (isinstance(v, str) and any(0xD800 <= ord(c) <= 0xDFFF for c in v))
        for v in m.values())
    at = text.index(token) + 1
    want = (f"prompt: its messages' JSON text has NaN, Infinity or a lone surrogate escape (\\uD800-\\uDFFF) "
            f"at byte {at}, which Python's json reads and JSON does not")
    p = tmp_path / "p.txt"
    p.write_text(text + "\n")
    r = harness("data-chat-prompts", "byte", "plain", p, check=False)
    assert r.returncode == 1 and f"{p}:1: {want}" in r.stderr, r.stdout + r.stderr
    d = tmp_path / "d.jsonl"
    d.write_text(json.dumps({"prompt": "a", "chosen": "x", "rejected": "y"}) + "\n"
                 + json.dumps({"prompt": text, "chosen": "a", "rejected": "b"}) + "\n")
    r = harness("dpo-data", "--data", d, check=False)
    assert r.returncode == 1 and f"{d}:2: {want}" in r.stderr, r.stdout + r.stderr


@pytest.mark.parametrize("ctl", ["\t", "\x01", "\x1f"])
def test_a_message_list_with_a_raw_control_character_is_refused_not_a_conversation(tmp_path, ctl):
    """The other direction of the rule above (review of wave 46): a message list holding a raw
    control character inside a string is no JSON, Python's json.loads refuses it (so by the
    docs' rule it would be plain text), cJSON read it and fdpo rendered it as a conversation.
    Refused by FILE:LINE with the character and its byte, as a JSONL line holding one is."""
    text = '[{"role": "user", "content": "a' + ctl + 'b"}]'
    with pytest.raises(json.JSONDecodeError, match="Invalid control character"):
        json.loads(text)
    at = text.index(ctl) + 1
    want = (f"prompt: its messages' JSON text has a raw control character (U+{ord(ctl):04X}) inside a string "
            f"at byte {at}, which JSON and Python's json refuse")
    d = tmp_path / "d.jsonl"
    d.write_text(json.dumps({"prompt": "a", "chosen": "x", "rejected": "y"}) + "\n"
                 + json.dumps({"prompt": text, "chosen": "a", "rejected": "b"}) + "\n")
    r = harness("dpo-data", "--data", d, check=False)
    assert r.returncode == 1 and f"{d}:2: {want}" in r.stderr, r.stdout + r.stderr
    # escaped, as json.dumps writes it, the same list is the conversation it stands for
    d.write_text(json.dumps({"prompt": json.dumps(json.loads(text.replace(ctl, "\\u%04x" % ord(ctl)))),
                             "chosen": "a", "rejected": "b"}) + "\n")
    got = json.loads(harness("dpo-data", "--data", d).stdout)
    assert len(got["pairs"]) == 1, got


# numbers outside JSON's grammar in a message list's text: cJSON read 01, -01.5, 0. and 1.e5
# (strtod); +1, .5 and 0x10 neither reader takes
@pytest.mark.parametrize("num,cjson_reads", [("01", True), ("-01.5", True), ("1.", True), ("1.e5", True),
                                             ("+1", False), (".5", False), ("0x10", False)])
def test_a_message_list_that_python_json_refuses_for_a_number_is_no_conversation(tmp_path, num, cjson_reads):
    """A prompt string holding a message list whose text has a number Python's json refuses
    (01, 1.) was read as the conversation because cJSON parses it; Python's json.loads refuses
    the text, so a Python pipeline has no message list there. Whether it is one is now decided
    by JSON's grammar, the JSONL line's rule (as for a raw control character): refused by
    FILE:LINE, the number and its byte named, where cJSON alone read it; plain text where
    neither reads it. The same list with a JSON number is the conversation."""
    text = '[{"role": "user", "content": "a", "n": ' + num + '}]'
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    d = tmp_path / "d.jsonl"
    d.write_text(json.dumps({"prompt": "a", "chosen": "x", "rejected": "y"}) + "\n"
                 + json.dumps({"prompt": text, "chosen": "a", "rejected": "b"}) + "\n")
    r = harness("dpo-data", "--data", d, check=False)
    p = tmp_path / "p.txt"
    p.write_text(text + "\n")
    rp = harness("data-chat-prompts", "byte", "plain", p, check=False)
    if cjson_reads:
        want = (f"prompt: its messages' JSON text has the number '{num}' at byte {text.index(num) + 1}, which has ")
        assert r.returncode == 1 and f"{d}:2: {want}" in r.stderr, r.stdout + r.stderr
        assert rp.returncode == 1 and f"{p}:1: {want}" in rp.stderr, rp.stdout + rp.stderr
    else:   # plain text: the prompt's tokens are its bytes, no template
        got = json.loads(r.stdout)
        assert got["summary"]["conversational"] == 0 and got["pairs"][1]["prompt"] == list(text.encode()), got
        assert rp.returncode == 0, rp.stderr
    # a JSON number there: the conversation it stands for
    good = '[{"role": "user", "content": "a", "n": 1}]'
    assert json.loads(good)[0]["role"] == "user"
    d.write_text(json.dumps({"prompt": good, "chosen": "a", "rejected": "b"}) + "\n")
    assert json.loads(harness("dpo-data", "--data", d).stdout)["summary"]["conversational"] == 1


def test_other_columns_named_like_prompt_keep_the_implicit_prompt(tmp_path):
    """Only a misspelt "prompt" is refused: a dataset's other columns that start with it
    (prompt_id, promptId, prompts) leave a pair without "prompt" to TRL's implicit prompt."""
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps({key: "x1", "chosen": "Q: yes", "rejected": "Q: no"}) + "\n"
                         for key in ("prompt_id", "promptId", "prompts", "system_prompt")))
    got = json.loads(harness("dpo-data", "--data", p).stdout)
    assert len(got["pairs"]) == 4, got


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


def test_escaped_backslash_before_u0000_is_text(tmp_path):
    """An escaped backslash followed by the text u0000 is not a NUL: it stays text."""
    rows = [{"prompt": "a\\u0000", "chosen": " b\\", "rejected": " c"}]
    out, _, _ = load(tmp_path, rows)
    P, C, R = tokenize_pair(rows[0])
    assert (out["pairs"][0]["prompt"], out["pairs"][0]["chosen"], out["pairs"][0]["rejected"]) == (P, C, R)
    assert out["pairs"][0]["prompt"] == list(b"a\\u0000")


def test_byte_order_mark_is_not_data(tmp_path):
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps(r) for r in ROWS[:4]).encode() + b"\n")
    out = json.loads(harness("dpo-data", "--data", p).stdout)
    for row, got in zip(ROWS[:4], out["pairs"]):
        assert (got["prompt"], got["chosen"], got["rejected"]) == tokenize_pair(row)


# ---- prompts (generate/eval) and SFT readers: BOM and NUL, against Python's json ----

def test_prompts_with_byte_order_mark(tmp_path):
    rows = [{"prompt": "Once upon a time"}, {"prompt": "caf\u00e9 \"quoted\""}]
    p = tmp_path / "p.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps(r) for r in rows).encode() + b"\n")
    got = json.loads(harness("data-prompts", p).stdout)["prompts"]
    assert got == [r["prompt"] for r in rows]  # was: the whole first line as a plain-text prompt
    p.write_bytes(b"\xef\xbb\xbfplain one\r\nplain two\n")
    assert json.loads(harness("data-prompts", p).stdout)["prompts"] == ["plain one", "plain two"]


@pytest.mark.parametrize("text,msg", [
    ('{"prompt": "a"}\n{"prompt": "b"} {"prompt": "c"}', "2: unexpected text after the JSON object at column 17"),
    ('{"prompt": "a"}\n{"prompt": 3}', "2: field \"prompt\" must be a string"),
    ('{"prompt": "a"}\n{"prompt": "b"', "2: invalid JSON"),
])
def test_bad_prompt_lines_name_file_and_line(tmp_path, text, msg):
    p = tmp_path / "p.jsonl"
    p.write_text(text + "\n")
    r = harness("data-prompts", p, check=False)
    assert r.returncode == 1 and f"{p}:{msg}" in r.stderr, r.stderr


@pytest.mark.parametrize("line", [r'{"prompt": "keep the tail\u0000 of this"}', '{"prompt": "raw\x00byte"}'])
def test_prompts_with_nul_are_refused(tmp_path, line):
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "fine"}\n' + line + "\n")
    r = harness("data-prompts", p, check=False)
    assert r.returncode == 1 and f"{p}:2: field 'prompt' contains a NUL character" in r.stderr, r.stderr


def test_plain_text_prompts_with_nul_are_refused_and_json_lines_said(tmp_path):
    """A plain-text prompt file cut a prompt at a raw 0 byte ("hel" of "hel\\0lo"); and a file
    read as text because its first line is not JSON kept its JSON lines as literal prompts
    without a word."""
    p = tmp_path / "p.txt"
    p.write_bytes(b"fine\nhel\x00lo world\n")
    r = harness("data-prompts", p, check=False)
    assert r.returncode == 1 and f"{p}:2: a NUL character at column 4" in r.stderr, r.stderr
    p.write_text('# my prompts\n{"prompt": "x"}\nplain\n{"prompt": "y"}\n{not json\n')
    assert json.loads(harness("data-prompts", p).stdout)["prompts"] == [
        "# my prompts", '{"prompt": "x"}', "plain", '{"prompt": "y"}', "{not json"]
    from fdpo_ref.gpt2 import GPT2
    GPT2(257, 32, 16, 1, 2, seed=5).save_hf(str(tmp_path / "m"))
    save_byte_tokenizer(str(tmp_path / "m"))
    gen = ["generate", "--model", tmp_path / "m", "--max-new-tokens", 1, "--threads", 1, "--out", tmp_path / "g.jsonl"]
    r = fdpo(*gen, "--data", p)
    assert (f"{p}: read as plain text, one prompt per line (its first line is not a JSON object), yet 2 lines (line 2 "
            "first) are JSON objects, kept as literal text") in r.stderr, r.stderr
    p.write_text("plain\nlines only\n")
    assert "read as plain text" not in fdpo(*gen, "--data", p).stderr
    # a JSONL line with two shapes reads its prompt, and says so (as sft's lines with two shapes)
    both = tmp_path / "both.jsonl"
    both.write_text('{"prompt": "a"}\n{"prompt": "b", "messages": [{"role": "user", "content": "c"}]}\n')
    r = fdpo(*gen, "--data", both)
    assert (f'{both}: 1 line (line 2 first) with both "prompt" and "messages": the prompt is read, the messages are '
            "not") in r.stderr, r.stderr


def sft_reference(row):
    """Byte-level tokens and target weights of one SFT example (include/fdpo/data.h)."""
    if "text" in row:
        t = list(row["text"].encode()) + [EOT]
        return t, [0.0] + [1.0] * (len(t) - 1)
    p, c = list(row["prompt"].encode()) or [EOT], list(row["completion"].encode())
    return p + c + [EOT], [0.0] * len(p) + [1.0] * (len(c) + 1)


def test_sft_with_byte_order_mark(tmp_path):
    rows = [{"prompt": "Q: hi", "completion": " A: hello"}, {"text": "plain text"}]
    p = tmp_path / "s.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps(r) for r in rows).encode() + b"\n")
    got = json.loads(harness("data-sft", p).stdout)["sequences"]
    assert [(g["tokens"], g["weights"]) for g in got] == [sft_reference(r) for r in rows]


def test_sft_line_with_two_shapes_reads_one_and_counts_it(tmp_path):
    """A line with keys of two example shapes read one and ignored the other without a word
    (and ultrachat's {"prompt", "prompt_id", "messages"} was refused for want of a
    completion). It reads {"messages"}, else {"prompt", "completion"} (TRL's conversational
    reading), and the lines are counted with the first named."""
    p = tmp_path / "s.jsonl"
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    rows = [{"text": "plain"}, {"prompt": "q", "prompt_id": "x1", "messages": msgs},
            {"prompt": "p", "completion": " c", "text": "ignored"}, {"text": "t", "messages": msgs}]
    write_jsonl(p, rows)
    got = json.loads(harness("data-sft", p).stdout)
    assert (got["two_shapes"], got["first_two_shapes"]) == (3, f"{p}:2"), got
    alone = tmp_path / "alone.jsonl"
    write_jsonl(alone, [rows[0], {"messages": msgs}, {"prompt": "p", "completion": " c"}, {"messages": msgs}])
    want = json.loads(harness("data-sft", alone).stdout)
    assert got["sequences"] == want["sequences"] and want["two_shapes"] == 0


def test_sft_counts_the_examples_it_cuts(tmp_path):
    """An example longer than --seq-len + 1 tokens was cut at the end (the rest of its
    completion and <|endoftext|> untrained) without a word, while dpo and kto count their
    truncations. The loader counts them (the harness reads at --seq-len 64) and names the
    first; an example with nothing left to learn is counted as dropped only."""
    p = tmp_path / "s.jsonl"
    rows = [{"prompt": "hi", "completion": " ok"}, {"prompt": "Q", "completion": " " + "abcdefghij" * 10},
            {"text": "t" * 70}, {"prompt": "p" * 80, "completion": " late"}]
    write_jsonl(p, rows)
    got = json.loads(harness("data-sft", p).stdout)
    assert (got["cut"], got["first_cut"], got["dropped"], got["first_dropped"]) == (2, f"{p}:2", 1, f"{p}:4"), got
    assert [len(s["tokens"]) for s in got["sequences"]] == [len("hi ok") + 1, 65, 65]


@pytest.mark.parametrize("line,field", [
    (r'{"prompt": "a", "completion": "b\u0000c"}', "completion"),
    (r'{"text": "\u0000"}', "text"),
    ('{"text": "x\x00 y"}', "text"),   # a raw 0 byte (the fuzzer's find: an empty text, silently dropped)
    (r'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a\u0000"}]}',
     "messages[1].content"),
])
def test_sft_with_nul_is_refused(tmp_path, line, field):
    p = tmp_path / "s.jsonl"
    p.write_text('{"text": "ok"}\n' + line + "\n")
    r = harness("data-sft", p, check=False)
    assert r.returncode == 1 and f"{p}:2: field '{field}' contains a NUL character" in r.stderr, r.stderr


def test_fifo_data_is_refused_not_waited_on(tmp_path):
    p = tmp_path / "fifo.jsonl"
    os.mkfifo(p)
    for args in (("dpo-data", "--data", p), ("data-prompts", p), ("data-sft", p)):
        r = harness(*args, check=False, timeout=20)
        assert r.returncode == 1 and f"{p}: not a regular file (a FIFO)" in r.stderr, r.stderr


def test_samples_with_nul_are_refused(tmp_path):
    """fdpo pairs reads generate/score output: a completion cut at a NUL would become a
    different preference pair than the one that was scored."""
    s = tmp_path / "s.jsonl"
    s.write_text('{"prompt": "p", "completion": "a", "reward": 1}\n'
                 r'{"prompt": "p", "completion": "b\u0000c", "reward": 0}' "\n")
    r = fdpo("pairs", "--samples", s, "--out", tmp_path / "o.jsonl", check=False)
    assert r.returncode == 1 and f"{s}:2: field 'completion' contains a NUL character" in r.stderr, r.stderr
    os.remove(s)
    os.mkfifo(s)
    r = fdpo("pairs", "--samples", s, "--out", tmp_path / "o.jsonl", check=False, timeout=30)
    assert r.returncode == 1 and f"{s}: not a regular file (a FIFO)" in r.stderr, r.stderr


# ---- one JSONL line reader (fdpo_jsonl_parse_object) behind every JSONL format ----

# reader: (a valid line, what the object should hold (after "expected a JSON object"), the run)
def _run_pref(tmp, p): return harness("dpo-data", "--data", p, check=False)
def _run_prompts(tmp, p): return harness("data-prompts", p, check=False)
def _run_sft(tmp, p): return harness("data-sft", p, check=False)
def _run_samples(tmp, p): return fdpo("pairs", "--data", p, "--out", tmp / "o.jsonl", check=False)
def _run_tokenize(tmp, p): return fdpo("tokenize", "--tokenizer", "byte", "--jsonl-field", "prompt", "--data", p, check=False)


def _run_unpaired(tmp, p):
    tok = tmp / "tok"
    tok.mkdir(exist_ok=True)
    save_byte_tokenizer(tok)   # the data is read (and refused) before any model is loaded
    return harness("kto-grad", "--model", tok, "--ref", tok, "--data", p, "--out", tmp / "o",
                   "--divergence", "rkl", "--beta", "0.1", check=False)


JSONL_READERS = {
    "pref": ('{"prompt": "a", "chosen": "b", "rejected": "c"}', ' {"prompt", "chosen", "rejected"}', _run_pref),
    "prompts": ('{"prompt": "a"}', "", _run_prompts),
    "sft": ('{"prompt": "a", "completion": "b"}', "", _run_sft),
    "unpaired": ('{"prompt": "a", "completion": "b", "label": true}', ' {"prompt", "completion", "label"}', _run_unpaired),
    "samples": ('{"prompt": "a", "completion": "b", "reward": 1}', ' {"prompt", "completion", "reward"}', _run_samples),
    "tokenize": ('{"prompt": "a"}', "", _run_tokenize),
}


def _line_cases(good, expect):
    n = len(good)
    return [
        (good + " trailing", f"unexpected text after the JSON object at column {n + 2}"),
        (good + "\t" + good, f"unexpected text after the JSON object at column {n + 2}"),   # was dropped silently
        ('["prompt", "a"]', f"expected a JSON object{expect}, got an array"),
        ('"a prompt"', f"expected a JSON object{expect}, got a string"),
        ('{"prompt": "a" "x": 1}', "invalid JSON near column 16"),   # the missing comma: "x" is at column 16
        # cJSON's lookups took the first, Python's json the last: another record there
        (good[:-1] + ', "prompt": "z"}', 'key "prompt" appears twice in one object (readers differ on which one counts)'),
        ('{"prompt": [{"role": "user", "role": "assistant", "content": "x"}]}',
         'key "role" appears twice in one object (readers differ on which one counts)'),
    ] + [
        # numbers outside JSON's grammar (cJSON reads them with strtod; Python's json refuses
        # the line, checked in the test), at any depth
        (good[:-1] + f', "n": {num}}}', f"invalid JSON: the number '{tok}' at column {n + len(pre)} has {why} "
         "(not a JSON number: Python's json refuses the line)")
        for num, tok, pre, why in [("01", "01", ', "n": ', "a leading zero"),
                                   ("-01.5", "-01.5", ', "n": ', "a leading zero"),
                                   ("[1, 0.]", "0.", ', "n": [1, ', "no digit after the '.'"),
                                   ('{"w": 1.e5}', "1.e5", ', "n": {"w": ', "no digit after the '.'")]
    ]


@pytest.mark.parametrize("reader", sorted(JSONL_READERS))
def test_every_jsonl_reader_refuses_a_bad_line_the_same_way(tmp_path, reader):
    """Line 2 of FILE is bad: every reader says FILE:2: and the same words, with the column
    where one is known (sft said "not valid JSON" with no column, also for trailing text;
    prompts had no column for invalid JSON; tokenize said "not a JSON object" and dropped what
    followed the object)."""
    good, expect, run = JSONL_READERS[reader]
    for bad, msg in _line_cases(good, expect):
        if "the number" in msg:
            with pytest.raises(ValueError):
                json.loads(bad)
        p = tmp_path / "d.jsonl"
        p.write_text(good + "\n" + bad + "\n")
        r = run(tmp_path, p)
        assert r.returncode != 0 and f"{p}:2: {msg}\n" in r.stderr, (bad, r.stderr)


def _python_refuses(line: bytes):
    """The exception Python (open(..., encoding='utf-8') and json, so datasets/TRL) raises on one line."""
    try:
        json.loads(line.decode("utf-8"))
    except ValueError as e:   # UnicodeDecodeError and JSONDecodeError both are
        return e
    raise AssertionError(f"Python's json reads {line!r}")


@pytest.mark.parametrize("reader", sorted(JSONL_READERS))
def test_every_jsonl_reader_refuses_a_byte_order_mark_inside_the_file(tmp_path, reader):
    """A BOM at the start of line 2 (cat a.jsonl b.jsonl, b saved with one): cJSON skipped it on
    every line and the line was read; Python's json refuses it. The file's own BOM is still skipped."""
    good, _, run = JSONL_READERS[reader]
    e = _python_refuses(b"\xef\xbb\xbf" + good.encode())
    assert "Unexpected UTF-8 BOM" in str(e)
    p = tmp_path / "d.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + good.encode() + b"\n\xef\xbb\xbf" + good.encode() + b"\n")
    r = run(tmp_path, p)
    assert r.returncode != 0 and f"{p}:2: a UTF-8 byte order mark at the start of the line, column 1 " in r.stderr, r.stderr


# a plain-text prompts file (its first line does not start with '{') keeps a second BOM as text
@pytest.mark.parametrize("reader", sorted(set(JSONL_READERS) - {"prompts"}))
def test_every_jsonl_reader_refuses_a_second_byte_order_mark_at_the_start(tmp_path, reader):
    """EF BB BF EF BB BF at the start of the file: the readers skipped the file's BOM and cJSON
    the second, silently. Python decodes the file with utf-8-sig (one BOM gone) and its json
    refuses the line at column 1 ("Unexpected UTF-8 BOM"); fdpo says FILE:1 and column 1."""
    good, _, run = JSONL_READERS[reader]
    raw = b"\xef\xbb\xbf\xef\xbb\xbf" + good.encode() + b"\n" + good.encode() + b"\n"
    with pytest.raises(json.JSONDecodeError) as e:
        json.loads(raw.decode("utf-8-sig").splitlines()[0])
    assert "Unexpected UTF-8 BOM" in str(e.value) and (e.value.lineno, e.value.colno) == (1, 1)
    p = tmp_path / "d.jsonl"
    p.write_bytes(raw)
    r = run(tmp_path, p)
    assert r.returncode != 0 and f"{p}:1: a UTF-8 byte order mark at the start of the line, column 1 " in r.stderr, \
        r.stderr
    p.write_bytes(raw[3:])   # the file's own BOM alone is still skipped (some runs stop later, at the model)
    r = run(tmp_path, p)
    assert "byte order mark" not in r.stderr and ":1:" not in r.stderr, r.stderr


@pytest.mark.parametrize("reader", sorted(JSONL_READERS))
def test_every_jsonl_reader_refuses_invalid_utf8_anywhere_on_a_line(tmp_path, reader):
    """A cp1252 "café" in a column no reader uses, or in a key: dpo, rm, kto and pairs read the line
    (they checked only the fields they use), sft and prompt files refused it. Python's decoder
    refuses the file; every reader now says FILE:LINE, the byte and its column, in the same words."""
    good, _, run = JSONL_READERS[reader]
    for bad in (good[:-1].encode() + b', "source": "caf\xe9"}', good[:-1].encode() + b', "sourc\xe9": 1}'):
        e = _python_refuses(bad)
        assert isinstance(e, UnicodeDecodeError)
        p = tmp_path / "d.jsonl"
        p.write_bytes(good.encode() + b"\n" + bad + b"\n")
        r = run(tmp_path, p)
        want = f"{p}:2: invalid UTF-8 (byte 0x{bad[e.start]:02X} at column {e.start + 1})\n"
        assert r.returncode != 0 and want in r.stderr, (bad, r.stderr)


@pytest.mark.parametrize("reader", sorted(JSONL_READERS))
def test_every_jsonl_reader_refuses_a_raw_nul_between_values(tmp_path, reader):
    """A 0 byte outside a string: cJSON skipped it as whitespace (U+0001..U+001F there were
    refused); Python's json refuses the line at that column."""
    good, _, run = JSONL_READERS[reader]
    for bad in (good[:-1] + ',\0"x": 1}', "\0" + good):
        e = _python_refuses(bad.encode())
        assert isinstance(e, json.JSONDecodeError) and bad[e.pos] == "\0"
        p = tmp_path / "d.jsonl"
        p.write_text(good + "\n" + bad + "\n")
        r = run(tmp_path, p)
        want = f"{p}:2: invalid JSON: a raw control character (U+0000) between values at column {e.colno}"
        assert r.returncode != 0 and want in r.stderr, (bad, r.stderr)


def test_a_long_line_of_nul_escapes_is_refused(tmp_path):
    """A line of 80,000 \\u0000 escapes is refused naming the field (no timing asserted here: the
    NUL search, once quadratic, is now one pass over the line)."""
    p = tmp_path / "d.jsonl"
    p.write_text('{"prompt": "' + "\\u0000" * 80000 + '", "chosen": "b", "rejected": "c"}\n')
    assert "\0" * 80000 == json.loads(p.read_text())["prompt"]
    r = harness("dpo-data", "--data", p, check=False, timeout=60)
    assert r.returncode == 1 and f"{p}:1: field 'prompt' contains a NUL character" in r.stderr, r.stderr


def test_numbers_json_allows_are_read(tmp_path):
    """The number check refuses only what JSON's grammar does: these all parse in Python."""
    line = '{"prompt": "a", "chosen": "b", "rejected": "c", "n": [0, -0, 10, 1.5e-3, 2E+10, -0.0, 1e5, 0.25]}'
    assert json.loads(line)["n"][3] == 1.5e-3
    p = tmp_path / "d.jsonl"
    p.write_text(line + "\n")
    r = harness("dpo-data", "--data", p)
    assert len(json.loads(r.stdout)["pairs"]) == 1


@pytest.mark.parametrize("reader", sorted(JSONL_READERS))
def test_every_jsonl_reader_names_a_long_path_whole(tmp_path, reader):
    """A file ~3000 bytes deep (paths up to PATH_MAX are valid): its errors name the whole path
    and the line. A conversational message lost the file name and the line past 500 bytes of
    path (fdpo_error_context cut its prefix there), and a NUL's "PATH:LINE" was cut at 1100
    bytes (a hunt's find)."""
    d = tmp_path
    for c in "abcdefghijkl":
        d = d / (c * 250)
    d.mkdir(parents=True)
    p = d / "d.jsonl"
    assert 3000 < len(str(p)) < 4096
    good, _, run = JSONL_READERS[reader]
    row = json.loads(good)
    bad = [({**row, "prompt": "a\u0000b"}, "field 'prompt' contains a NUL character")]
    bot = [{"role": "bot", "content": "x"}]
    if reader in ("pref", "prompts", "unpaired"):   # a prompt string that is a message list is one
        bad.append(({**row, "prompt": json.dumps(bot)}, "prompt[0].role is 'bot'; expected system, user or assistant"))
    if reader == "sft":
        bad.append(({"messages": bot}, "messages[0].role is 'bot'; expected system, user or assistant"))
    for obj, msg in bad:
        p.write_text(good + "\n" + json.dumps(obj) + "\n")
        r = run(tmp_path, p)
        assert r.returncode != 0 and f": {p}:2: {msg}" in r.stderr, (msg, r.stderr[-300:])


# A \u escape without four hex digits: cJSON read it as U+0000 and the string ended there
# without a word (the rest of a completion, prompt or content dropped, a key read as its
# start); Python's json (so datasets/TRL) refuses the line. Every JSONL reader shares the check.
BAD_U_ESCAPE = [
    (("dpo-data", "--data"), r'{"prompt": "Q", "chosen": "good\uZZZZ HIDDEN TEXT", "rejected": "bad answer"}'),
    (("dpo-data", "--data"), r'{"pro\uZZZZmpt": "Q", "chosen": "a", "rejected": "b"}'),
    (("data-sft",), r'{"prompt": "Q\u12G4 rest of the prompt", "completion": "A"}'),
    (("data-sft",), r'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a\u 123 b"}]}'),
    (("data-prompts",), r'{"messages": [{"role": "user", "content": "hi\u00g0 HIDDEN"}]}'),
    (("data-prompts",), r'{"prompt": "hi\u-123"}'),
    (("fdpo", "pairs", "--out", "OUT", "--samples"), r'{"prompt": "Q", "completion": "x\u+123 y", "reward": 0.5}'),
    (("fdpo", "tokenize", "--tokenizer", "byte", "--jsonl-field", "completion"),
     r'{"prompt": "Q", "completion": "x\uD83 y", "reward": 0.5}'),
]


@pytest.mark.parametrize("cmd,line", BAD_U_ESCAPE)
def test_an_invalid_u_escape_is_refused_where_python_json_refuses_it(tmp_path, cmd, line):
    good = {"prompt": "Q", "chosen": "a", "rejected": "b", "completion": "c", "reward": 1.0}
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps(good) + "\n" + line + "\n")
    with pytest.raises(json.JSONDecodeError) as e:
        json.loads(line)
    assert e.value.msg == "Invalid \\uXXXX escape"
    args = [str(tmp_path / "o.jsonl") if a == "OUT" else a for a in cmd]
    r = fdpo(*args[1:], p, check=False) if args[0] == "fdpo" else harness(*args, p, check=False)
    want = f"{p}:2: invalid JSON: the \\u escape at column {e.value.colno} needs four hex digits"
    assert r.returncode == 1 and want in r.stderr, r.stderr


def test_a_conversation_kept_as_text_with_an_invalid_u_escape_is_refused(tmp_path):
    """A prompt kept as its messages' JSON text (valid outer JSON): the inner text's bad
    escape cut the content ("hi" of "hi\\uZZZZ HIDDEN"); json.loads of that text refuses it."""
    inner = r'[{"role": "user", "content": "hi\uZZZZ HIDDEN"}]'
    with pytest.raises(json.JSONDecodeError) as e:
        json.loads(inner)
    p, q = tmp_path / "p.jsonl", tmp_path / "q.jsonl"
    p.write_text(json.dumps({"prompt": inner}) + "\n")
    q.write_text(json.dumps({"prompt": inner, "chosen": "a", "rejected": "b"}) + "\n")
    want = f"prompt (its messages' JSON text): invalid JSON: the \\u escape at column {e.value.colno} needs four"
    for f, r in ((p, harness("data-chat-prompts", "byte", "plain", p, check=False)),
                 (q, harness("dpo-data", "--data", q, check=False))):
        assert r.returncode == 1 and f"{f}:1: {want}" in r.stderr, r.stderr


def test_escapes_that_are_valid_or_escaped_stay_text(tmp_path):
    """Four hex digits in either case, and a backslash escaped before a u, are read as Python reads them."""
    line = r'{"prompt": "a\u00E9\u00e9 \\uZZZZ \\\u0041", "chosen": " b", "rejected": " c"}'
    p = tmp_path / "d.jsonl"
    p.write_text(line + "\n")
    out = json.loads(harness("dpo-data", "--data", p).stdout)
    assert out["pairs"][0]["prompt"] == list(json.loads(line)["prompt"].encode())


def _python_invalid_utf8(raw: bytes):
    """FILE:LINE's line and column (bytes from 1) of the byte Python's UTF-8 decoder refuses, and that byte."""
    with pytest.raises(UnicodeDecodeError) as e:
        raw.decode("utf-8")
    at = e.value.start
    return raw.count(b"\n", 0, at) + 1, at - (raw.rfind(b"\n", 0, at) + 1) + 1, raw[at]


def test_invalid_utf8_is_worded_alike_by_jsonl_lexicon_and_generation_config(tmp_path):
    """A Latin-1 "café" on line 2: the JSONL readers said "FILE:2: invalid UTF-8 (byte 0xE9 at
    column C)", --lexicon "FILE:2: not valid UTF-8 (byte offset N)" and generation_config.json
    "FILE:2: not UTF-8 at column C (byte 0xE9; ...)". One function words all three, the line and
    column where Python's decoder stops."""
    from test_generate import make_model
    cases = {
        "jsonl": b'{"prompt": "a"}\n{"prompt": "caf\xe9"}\n',
        "lexicon": b'\xef\xbb\xbf{"good": 3,\n "caf\xe9": 1}\n',   # columns from after the BOM, as utf-8-sig
        "generation_config": b'{"eos_token_id": 256,\n  "note": "caf\xe9"}\n',
    }
    make_model(tmp_path / "gm", 257, seed=3, n_positions=64, byte_tokenizer=True)
    paths = {"jsonl": tmp_path / "p.jsonl", "lexicon": tmp_path / "lex.json",
             "generation_config": tmp_path / "gm" / "generation_config.json"}
    for k, raw in cases.items():
        paths[k].write_bytes(raw)
    (tmp_path / "rows.jsonl").write_text(json.dumps({"prompt": "p", "completion": "good"}) + "\n")
    (tmp_path / "q.txt").write_text("a prompt\n")
    runs = {
        "jsonl": harness("data-prompts", paths["jsonl"], check=False),
        "lexicon": harness("eval-reward", "afinn", tmp_path / "rows.jsonl", "--lexicon", paths["lexicon"], check=False),
        "generation_config": fdpo("generate", "--model", tmp_path / "gm", "--data", paths["jsonl"].with_name("q.txt"),
                                  "--max-new-tokens", 1, "--threads", 1, check=False),
    }
    for k, raw in cases.items():
        line, col, byte = _python_invalid_utf8(raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw)
        want = f"{paths[k]}:{line}: invalid UTF-8 (byte 0x{byte:02X} at column {col})"
        assert want in runs[k].stderr, (k, want, runs[k].stderr)
        if k != "generation_config":   # a model's generation_config.json is left out with a warning
            assert runs[k].returncode != 0, k
