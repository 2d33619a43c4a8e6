"""fdpo report reads its whole-file JSON inputs (eval files, lab JSON, a run's settings, an
online round's training_state.json) as Python's json reads them, or says why not: a key
twice (cJSON's lookups took the first copy, json.loads keeps the last) and text after the
value (json.loads raises "Extra data"; cJSON dropped the second document) are warnings
naming FILE:LINE, and the file is skipped. A NUL in a sample's text (json.loads keeps it,
cJSON cut the string there) and a number past a double's range (json.loads reads inf, which
no panel can draw) are warnings too. Every expected value here comes from Python's json."""
import json
import math
import os
import re
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from test_report import chart, parse, run  # noqa: E402

FRONTIER = "Reward\u2013KL frontier"


def warnings(stderr):
    return [ln[len("fdpo report: warning: "):] for ln in stderr.splitlines() if ln.startswith("fdpo report: warning: ")]


def frontier_points(charts):
    return sorted(p for s in chart(charts, FRONTIER)["series"] for p in s["points"])


def extra_data_at(text):
    """Where json.loads stops with "Extra data": (line, column)."""
    with pytest.raises(json.JSONDecodeError) as e:
        json.loads(text)
    assert e.value.msg == "Extra data"
    return e.value.lineno, e.value.colno


def good_eval(tmp_path):
    g = tmp_path / "good.json"
    g.write_text(json.dumps({"policies": [{"name": "G", "divergence": "js", "beta": 0.1,
                                           "reward_mean": 3.0, "kl_seq_mean": 1.0}]}))
    return g


def test_eval_file_with_a_key_twice_is_skipped_with_a_warning(tmp_path):
    dup = tmp_path / "dup.json"
    text = '{"policies":[{"name":"A","divergence":"js","beta":0.1,"reward_mean":1.0,"reward_mean":7.0,"kl_seq_mean":0.5}]}\n'
    dup.write_text(text)
    nested = tmp_path / "nested.json"   # at any depth: a nested metrics object
    nested.write_text('{"policies":[{"name":"B","metrics":{"reward_mean":2.0,"kl_seq_mean":0.1,\n"kl_seq_mean":4.0}}]}')
    assert json.loads(text)["policies"][0]["reward_mean"] == 7.0          # Python keeps the last copy
    assert json.loads(nested.read_text())["policies"][0]["metrics"]["kl_seq_mean"] == 4.0
    out = tmp_path / "r.html"
    r = run("--eval", str(dup), "--eval", str(nested), "--eval", str(good_eval(tmp_path)), "--out", str(out))
    assert r.returncode == 0, r.stderr
    w = warnings(r.stderr)
    assert f'{dup}:1: key "reward_mean" appears twice in one object (readers differ on which one counts), ' \
           "eval file skipped" in w, r.stderr
    # the line of the second copy (the message said line 1 for every file)
    assert f'{nested}:2: key "kl_seq_mean" appears twice in one object (readers differ on which one counts), ' \
           "eval file skipped" in w, r.stderr
    _, _, charts = parse(out)
    assert frontier_points(charts) == [[1.0, 3.0]]   # only G: neither A at (0.5, 1) nor B at (0.1, 2)


@pytest.mark.parametrize("tail", ['\n{"policies":[{"name":"B","reward_mean":2.0,"kl_seq_mean":1.0}]}\n', "  garbage\n"])
def test_eval_file_with_text_after_the_object_is_skipped_with_a_warning(tmp_path, tail):
    e = tmp_path / "eval2.json"
    text = '{"policies":[{"name":"A","divergence":"js","beta":0.1,"reward_mean":1.0,"kl_seq_mean":0.5}]}' + tail
    e.write_text(text)
    line, col = extra_data_at(text)
    out = tmp_path / "r.html"
    r = run("--eval", str(e), "--eval", str(good_eval(tmp_path)), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert f"{e}:{line}: unexpected text after the JSON value at column {col}, eval file skipped" in warnings(r.stderr), \
        r.stderr
    _, _, charts = parse(out)
    assert frontier_points(charts) == [[1.0, 3.0]]


def test_run_settings_with_a_key_twice_are_not_read(tmp_path):
    d = tmp_path / "run1"
    d.mkdir()
    (d / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n')
    text = '{"divergence": "js", "beta": 0.1, "beta": 0.5}\n'
    (d / "run.json").write_text(text)
    assert json.loads(text)["beta"] == 0.5
    out = tmp_path / "r.html"
    r = run(str(d), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert f'{d / "run.json"}:1: key "beta" appears twice in one object (readers differ on which one counts), ' \
           "not read for the run's settings" in warnings(r.stderr), r.stderr
    _, _, charts = parse(out)
    labels = [s["label"] for s in chart(charts, "Training loss")["series"]]
    assert labels == ["run1"], labels   # not "run1 (js, β=0.1)", the copy Python does not read


def test_other_json_files_of_a_run_directory_are_passed_over_without_a_word(tmp_path):
    """Every *.json of a run directory is looked at for settings. A file the strict reader
    refuses but which holds no setting is passed over silently, as before: a trainer_state.json
    as transformers writes it (NaN grad_norm, which Python's json reads) and a tokenizer.json
    whose vocabulary has keys that differ after a U+0000 (cJSON's strings end there, so the two
    looked like one key twice). Both warned once the settings reader became strict (a review's
    find)."""
    d = tmp_path / "run1"
    d.mkdir()
    (d / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n')
    state = {"global_step": 10, "log_history": [{"grad_norm": float("nan"), "loss": 1.0, "step": 5}]}
    (d / "trainer_state.json").write_text(json.dumps(state, indent=2))
    assert math.isnan(json.loads((d / "trainer_state.json").read_text())["log_history"][0]["grad_norm"])
    tok = '{"model": {"type": "BPE", "vocab": {"\\u0000": 0, "\\u0000\\u0001": 1, "a": 2}, "merges": []}}'
    (d / "tokenizer.json").write_text(tok)
    assert len(json.loads(tok)["model"]["vocab"]) == 3
    r = run(str(d), "--out", str(tmp_path / "r.html"))
    assert r.returncode == 0 and warnings(r.stderr) == [], r.stderr


def test_a_key_twice_spelt_with_escapes_is_named_at_the_files_first_line(tmp_path):
    """A key written with an escape is not matched by its text: the duplicate-key line was that
    of another key (a newline key's, for the backslash-n key named; a review's find). Such a key
    is named at line 1; one written plainly at the line of its second copy."""
    text = '{"\\n": {"\\\\n": 1,\n\n "\\\\n": 2},\n\n\n "\\n": 0}'
    doc = json.loads(text)
    assert doc["\n"] == 0 and doc.get("\\n") is None   # Python keeps the last copies
    bad = tmp_path / "bsn.json"
    bad.write_text(text)
    out = tmp_path / "r.html"
    r = run("--eval", str(bad), "--eval", str(good_eval(tmp_path)), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert any(w.startswith(f"{bad}:1: key ") and "appears twice" in w for w in warnings(r.stderr)), r.stderr


def test_online_round_state_with_a_key_twice_is_not_read(tmp_path):
    d = tmp_path / "on"
    (d / "round-0").mkdir(parents=True)
    (d / "metrics.jsonl").write_text('{"round": 0, "objective/scores": 0.0}\n{"round": 1, "objective/scores": 1.0}\n')
    text = '{"settings": {"divergence": "js", "beta": 0.1, "beta": 0.7}}'
    (d / "round-0" / "training_state.json").write_text(text)
    assert json.loads(text)["settings"]["beta"] == 0.7
    out = tmp_path / "r.html"
    r = run(str(d), "--out", str(out))
    assert r.returncode == 0, r.stderr
    state = d / "round-0" / "training_state.json"
    assert f'{state}:1: key "beta" appears twice in one object (readers differ on which one counts), ' \
           "not read for the online run's settings" in warnings(r.stderr), r.stderr
    page, _, _ = parse(out)
    assert "\u03b2=0.1" not in page


def test_lab_json_with_a_key_twice_or_a_second_array_is_skipped(tmp_path):
    dup = tmp_path / "labdup.json"
    dup_text = '[{"divergence": "reverse_kl", "beta": 0.1, "kl": 1.0, "expected_reward": 2.0, "kl": 9.0}]\n'
    dup.write_text(dup_text)
    assert json.loads(dup_text)[0]["kl"] == 9.0
    cat = tmp_path / "labcat.json"
    cat_text = ('[{"divergence": "reverse_kl", "beta": 0.1, "kl": 1.0, "expected_reward": 2.0}]\n'
                '[{"divergence": "reverse_kl", "beta": 0.2, "kl": 0.5, "expected_reward": 1.0}]\n')
    cat.write_text(cat_text)
    line, col = extra_data_at(cat_text)
    out = tmp_path / "r.html"
    r = run("--lab", str(dup), "--lab", str(cat), "--eval", str(good_eval(tmp_path)), "--out", str(out))
    assert r.returncode == 0, r.stderr
    w = warnings(r.stderr)
    assert f'{dup}:1: key "kl" appears twice in one object (readers differ on which one counts), lab file skipped' in w, \
        r.stderr
    assert f"{cat}:{line}: unexpected text after the JSON value at column {col}, lab file skipped" in w, r.stderr
    _, _, charts = parse(out)
    assert not [c for c in charts if c["title"].startswith("Lab:")]


def test_a_nul_in_a_samples_line_skips_the_line_with_a_warning(tmp_path):
    s = tmp_path / "s.jsonl"
    lines = ['{"policy": "G", "prompt": "p1", "completion": "good\\u0000 HIDDEN", "reward": 1}',
             '{"policy": "G", "prompt": "p\\u00002", "completion": "fine", "reward": 2}',
             '{"policy": "G", "prompt": "p3", "completion": "shown", "reward": 3}']
    s.write_text("\n".join(lines) + "\n")
    rows = [json.loads(x) for x in lines]
    assert rows[0]["completion"] == "good\x00 HIDDEN" and rows[1]["prompt"] == "p\x002"   # Python keeps the NUL
    out = tmp_path / "r.html"
    r = run("--eval", str(good_eval(tmp_path)), "--samples", str(s), "--out", str(out))
    assert r.returncode == 0, r.stderr
    w = warnings(r.stderr)
    assert any(x.startswith(f"{s}:1: field 'completion' contains a NUL character") and "line skipped" in x for x in w), w
    assert any(x.startswith(f"{s}:2: field 'prompt' contains a NUL character") and "line skipped" in x for x in w), w
    page, _, _ = parse(out)
    cells = [x.strip() for x in re.findall(r'<td class="completion">([^<]*)', page)]
    assert cells == ["shown"], cells   # not "good" (the text cut at the NUL) nor "fine"


def test_a_nul_in_an_eval_files_samples_skips_the_file_with_a_warning(tmp_path):
    e = tmp_path / "eval_nul.json"
    doc = {"policies": [{"name": "A", "divergence": "js", "beta": 0.1, "reward_mean": 1.0, "kl_seq_mean": 0.5,
                         "samples": [{"prompt": "p", "completion": "ok"},
                                     {"prompt": "p", "completion": "good\x00 HIDDEN"}]}]}
    e.write_text(json.dumps(doc))   # json.dumps writes the NUL as \u0000
    assert "\\u0000" in e.read_text()
    assert json.loads(e.read_text())["policies"][0]["samples"][1]["completion"] == "good\x00 HIDDEN"
    out = tmp_path / "r.html"
    r = run("--eval", str(e), "--eval", str(good_eval(tmp_path)), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert any(x.startswith(f"{e}: field 'policies[0].samples[1].completion' contains a NUL character")
               and x.endswith(", eval file skipped") for x in warnings(r.stderr)), r.stderr
    page, _, charts = parse(out)
    assert frontier_points(charts) == [[1.0, 3.0]]
    assert "HIDDEN" not in page and '<td class="completion">good' not in page


def test_a_number_past_a_doubles_range_in_an_eval_file_is_said(tmp_path):
    e = tmp_path / "big.json"
    text = ('{"policies": [\n'
            '{"name": "A", "divergence": "js", "beta": 0.1, "reward_mean": 1e400, "kl_seq_mean": 0.5},\n'
            '{"name": "C", "divergence": "js", "beta": 0.3, "reward_mean": 3, "kl_seq_mean": 1},\n'
            '{"name": "D", "divergence": "js", "beta": 0.5, "reward_mean": -1e400, "kl_seq_mean": 2}]}')
    e.write_text(text)
    pols = json.loads(text)["policies"]
    assert math.isinf(pols[0]["reward_mean"]) and math.isinf(pols[2]["reward_mean"])   # Python: inf, not a value
    finite = sorted([p["kl_seq_mean"], p["reward_mean"]] for p in pols if math.isfinite(p["reward_mean"]))
    out = tmp_path / "r.html"
    r = run("--eval", str(e), "--out", str(out))
    assert r.returncode == 0, r.stderr
    said = [x for x in warnings(r.stderr) if "reward_mean" in x]
    assert said == [f"{e}:2: reward_mean: '1e400' is not a finite number (past a double's range); left out, as null is "
                    "(said once for the key in this file)"], r.stderr
    _, _, charts = parse(out)
    assert frontier_points(charts) == finite


def test_a_number_past_a_doubles_range_in_metrics_is_said_once_per_key(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    rows = ['{"step": 1, "loss": 0.5, "grad_norm": 1.0}', '{"step": 2, "loss": 1e400, "grad_norm": 1.0}',
            '{"step": 3, "loss": -1e400, "grad_norm": 1E+999}', '{"step": 4, "loss": 0.25, "grad_norm": 1.0}',
            '{"step": 5, "loss": 1e400, "grad_norm": 1.0}']
    (d / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    parsed = [json.loads(x) for x in rows]
    first = {}
    for i, row in enumerate(parsed, 1):
        for k, v in row.items():
            if not math.isfinite(v):
                first.setdefault(k, (i, rows[i - 1].split(f'"{k}": ')[1].split(",")[0].rstrip("}")))
    assert first == {"loss": (2, "1e400"), "grad_norm": (3, "1E+999")}
    out = tmp_path / "r.html"
    r = run(str(d), "--out", str(out))
    assert r.returncode == 0, r.stderr
    said = [x for x in warnings(r.stderr) if "finite" in x]
    assert said == [f"{d / 'metrics.jsonl'}:{ln}: {k}: '{lit}' is not a finite number (past a double's range); left out, "
                    "as null is (said once for the key in this file)" for k, (ln, lit) in first.items()], r.stderr
    _, _, charts = parse(out)
    loss = chart(charts, "Training loss")["series"][0]["points"]
    assert loss == [[row["step"], row["loss"]] for row in parsed if math.isfinite(row["loss"])]


def test_a_number_past_a_doubles_range_in_lab_json_is_said(tmp_path):
    lab = tmp_path / "lab.json"
    text = ('[{"divergence": "reverse_kl", "beta": 0.1, "kl": 1.0, "expected_reward": 2.0},\n'
            ' {"divergence": "reverse_kl", "beta": 0.2, "kl": 1e400, "expected_reward": 1.0}]')
    lab.write_text(text)
    assert math.isinf(json.loads(text)[1]["kl"])
    out = tmp_path / "r.html"
    r = run("--lab", str(lab), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert [x for x in warnings(r.stderr) if "finite" in x] == [
        f"{lab}:2: kl: '1e400' is not a finite number (past a double's range); left out, as null is "
        "(said once for the key in this file)"], r.stderr
