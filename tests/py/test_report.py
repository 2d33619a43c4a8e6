"""fdpo report: fixture run directories -> one self-contained HTML file.

The fixtures are written here (metrics.jsonl in TRL's names, run configs in three formats,
eval JSON, a lab CSV), so the test checks the numbers that reach the page, not just that a
page appears. The browser test opens the page in headless Chromium from file:// and reads
back <body data-charts-ready>, which the page's script sets after Chart.js drew every chart.
"""
import html
import csv
import json
import math
import os
import random
import re
import shutil
import struct
import subprocess
import tempfile
from html.parser import HTMLParser

import pytest

REPO = os.path.normpath(os.path.join(os.path.dirname(__file__), "../.."))
FDPO = os.environ.get("FDPO_BIN", os.path.join(REPO, "build/fdpo"))
OUT_DIR = os.environ.get("FDPO_TEST_OUTPUT", os.path.join(REPO, "build/test-output"))
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)

# divergence, beta, final KL, final reward, entropy: the frontier the fixture encodes
POLICIES = [
    ("rkl", 0.1, 8.0, 0.80, 1.10),
    ("rkl", 0.5, 2.0, 0.55, 2.30),
    ("fkl", 0.1, 5.0, 0.70, 2.00),
    ("js", 0.1, 4.0, 0.72, 2.10),
    ("alpha:0.5", 0.1, 6.0, 0.75, 1.80),
]
N_STEPS = 30
EXPECTED_CHARTS = 4 + 3 + 4  # training (loss, margin, accuracy, chosen/rejected), eval frontiers + safety, lab


def run(*args, timeout=120):
    return subprocess.run([FDPO, "report", *args], capture_output=True, text=True, timeout=timeout)


def run_name(div, beta):
    return f"{div.replace(':', '')}-b{beta}"


def metrics_rows(k, n=N_STEPS):
    """Deterministic DPO-style metrics for run k (loss falls, margins grow)."""
    rows = []
    for s in range(1, n + 1):
        m = 0.05 * s * (k + 1)
        row = {"step": s, "epoch": s / n, "loss": round(0.6931 - 0.01 * s - 0.001 * k, 6),
               "learning_rate": 1e-4, "grad_norm": 1.5, "tokens_per_sec": 900.0,
               "rewards/chosen": round(0.01 * s, 6), "rewards/rejected": round(-m + 0.01 * s, 6),
               "rewards/margins": round(m, 6), "rewards/accuracies": round(min(1.0, 0.5 + 0.015 * s * (1 - 0.15 * k)), 6),
               "logps/chosen": -40.0, "logps/rejected": -45.0 - s,
               "scores/chosen": 0.1, "scores/rejected": -0.1}
        if s % 10 == 0:
            row.update({"eval_loss": round(0.70 - 0.005 * s, 6), "eval_rewards/margins": round(0.8 * m, 6),
                        "eval_rewards/accuracies": 0.6})
        rows.append(row)
    return rows


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def policy_eval(name, kl, reward, entropy, k, prompt_texts):
    return {
        "name": name, "reward_mean": reward, "reward_stderr": 0.02, "kl_seq": kl, "kl_token": kl / 10,
        "entropy": entropy, "distinct_1": round(0.3 + 0.01 * k, 4), "distinct_2": round(0.6123 + 0.01 * k, 4),
        "distinct_3": 0.8, "distinct_4": 0.9, "ead": 0.55, "self_bleu_3": 0.31, "self_bleu_4": 0.2,
        "len_tokens_mean": 20 + k, "reward_length_corr": 0.12,
        "safety_mean": round(-0.1 * k, 4), "safety_se": 0.01, "safety_threshold": -0.25, "safety_frac_safe": 0.9,
        "samples": [{"prompt": p, "completion": f"{name} says {p.lower()} #{k}", "reward": 0.5} for p in prompt_texts],
    }


def make_fixture(root):
    """Five DPO runs (configs in three formats), one SFT run, a reference eval and a lab CSV."""
    runs = []
    prompts = ["The movie was", "I think that"]
    for k, (div, beta, kl, reward, ent) in enumerate(POLICIES):
        d = os.path.join(root, run_name(div, beta))
        os.makedirs(d)
        write_jsonl(os.path.join(d, "metrics.jsonl"), metrics_rows(k))
        if k % 3 == 0:    # flat JSON config
            cfg = {"divergence": div, "beta": beta, "loss": "sigmoid"}
            json.dump(cfg, open(os.path.join(d, "run.json"), "w"))
        elif k % 3 == 1:  # nested JSON, alpha given apart
            base, _, a = div.partition(":")
            cfg = {"command": "dpo", "args": {"divergence": base, "beta": beta, "loss_type": "sigmoid"}}
            if a:
                cfg["args"]["alpha"] = float(a)
            json.dump(cfg, open(os.path.join(d, "config_dpo.json"), "w"))
        else:             # the INI of --config
            base, _, a = div.partition(":")
            with open(os.path.join(d, "run.ini"), "w") as f:
                f.write(f"[dpo]\ndivergence = {base}\nbeta = {beta}\nloss = sigmoid\n" + (f"alpha = {a}\n" if a else ""))
        # a checkpoint's config.json must not be mistaken for the run config
        json.dump({"model_type": "gpt2", "n_layer": 2}, open(os.path.join(d, "config.json"), "w"))
        json.dump({"policies": [policy_eval(run_name(div, beta), kl, reward, ent, k, prompts)]},
                  open(os.path.join(d, "eval.json"), "w"))
        runs.append(d)
    sft = os.path.join(root, "sft-base")
    os.makedirs(sft)
    write_jsonl(os.path.join(sft, "metrics.jsonl"),
                [{"step": s, "loss": 3.0 - 0.05 * s, "val_loss": 3.1 - 0.04 * s} for s in range(1, 21)])
    runs.append(sft)
    ref = os.path.join(root, "ref_eval.json")
    json.dump({"policies": [dict(policy_eval("reference", 0.0, 0.30, 2.60, 9, prompts), kl_seq=0.0)]},
              open(ref, "w"))
    lab = os.path.join(root, "frontier.csv")
    with open(lab, "w") as f:
        f.write("divergence,beta,expected_reward,entropy,kl,f_divergence,support\n")
        for div in ["rkl", "fkl", "js", "alpha:0.5", "chi2"]:
            for beta in [0.05, 0.1, 0.5, 1.0]:
                kl = round(1.0 / beta / (2 if div == "fkl" else 1), 4)
                sup = 10 if div != "chi2" else max(1, int(10 * beta))
                f.write(f"{div},{beta},{round(1 - beta / 2, 4)},{round(2 - 1 / (1 + 10 * beta), 4)},{kl},{kl / 2},{sup}\n")
    return runs, ref, lab


class Page(HTMLParser):
    """Collects external references and the chart JSON."""

    def __init__(self):
        super().__init__()
        self.external, self.script_srcs, self.links = [], [], []
        self.body_attrs, self.in_charts, self.charts_text, self.tables = {}, False, "", set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body_attrs = a
        if tag == "table" and a.get("id"):
            self.tables.add(a["id"])
        if tag == "script" and "src" in a:
            self.script_srcs.append(a["src"])
        if tag == "link":
            self.links.append(a)
        for k in ("src", "href", "data", "srcset", "poster", "action"):
            v = (a.get(k) or "").strip().lower()
            if v.startswith(("http://", "https://", "//", "ftp:")):
                self.external.append((tag, k, v))
        if tag == "script" and a.get("id") == "fdpo-charts":
            self.in_charts = True

    def handle_endtag(self, tag):
        if tag == "script":
            self.in_charts = False

    def handle_data(self, data):
        if self.in_charts:
            self.charts_text += data


def parse(path):
    p = Page()
    with open(path, encoding="utf-8") as f:
        text = f.read()
    p.feed(text)
    return text, p, json.loads(p.charts_text)


def flat(points):
    """[[x, y], ...] -> [x, y, ...] (pytest.approx takes flat sequences)."""
    return [v for p in points for v in p]


def chart(charts, title):
    hits = [c for c in charts if c["title"] == title]
    assert len(hits) == 1, f"no single chart titled {title!r}: {[c['title'] for c in charts]}"
    return hits[0]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("report"))
    runs, ref, lab = make_fixture(root)
    out = os.path.join(root, "report.html")
    r = run(*runs, "--eval", ref, "--lab", lab, "--out", out, "--title", "fixture <report>")
    assert r.returncode == 0, r.stderr
    return root, runs, out, r


def test_help_lists_every_flag_with_default():
    r = run("--help")
    assert r.returncode == 0
    for flag, default in [("--out", "report.html"), ("--eval", "none"), ("--lab", "none"), ("--samples", "none"), ("--title", "fdpo report"),
                          ("--chartjs", "none"), ("--max-points", "2000"), ("--max-prompts", "6")]:
        assert re.search(rf"^\s+{re.escape(flag)} .*\[{re.escape(default)}\]$", r.stdout, re.M), (flag, r.stdout)


def test_report_is_written_and_self_contained(report):
    root, runs, out, r = report
    assert "warning:" not in r.stderr and "0 warnings" in r.stderr, r.stderr
    assert "11 charts" in r.stderr and "6 policies" in r.stderr and "6 runs" in r.stderr, r.stderr
    text, page, charts = parse(out)
    assert text.startswith("<!DOCTYPE html>")
    assert page.external == [], page.external
    assert page.script_srcs == [], "every script must be inline"
    assert not [link for link in page.links if "stylesheet" in (link.get("rel") or "")]
    assert "Chart.js v4" in text          # the library itself is inlined
    assert "sourceMappingURL" not in text  # and asks for nothing else
    assert page.body_attrs.get("data-charts-expected") == str(EXPECTED_CHARTS)
    assert len(charts) == EXPECTED_CHARTS
    assert "<title>fixture &lt;report&gt;</title>" in text


def test_training_curves_carry_the_metrics(report):
    root, runs, out, _ = report
    _, _, charts = parse(out)
    loss = chart(charts, "Training loss")
    assert [c["x"]["title"] for c in [loss]] == ["step"]
    by_label = {s["label"]: s for s in loss["series"]}
    # labels come from the three config formats, alpha joined to its parameter
    for div, beta, *_ in POLICIES:
        label = f"{run_name(div, beta)} ({div}, \u03b2={beta:g})"
        assert label in by_label, (label, list(by_label))
    assert "sft-base" in by_label and "sft-base (held out)" in by_label
    for k, (div, beta, *_ ) in enumerate(POLICIES):
        s = by_label[f"{run_name(div, beta)} ({div}, \u03b2={beta:g})"]
        want = [[r["step"], r["loss"]] for r in metrics_rows(k)]
        assert flat(s["points"]) == pytest.approx(flat(want)), s["label"]
        assert s["line"] and not s["dash"]
        held = by_label[s["label"] + " (held out)"]
        assert held["dash"] and [p[0] for p in held["points"]] == [10, 20, 30]
    acc = chart(charts, "Preference accuracy")
    assert acc["y"]["title"] == "accuracy"
    margins = chart(charts, "Reward margin")
    s0 = [s for s in margins["series"] if s["label"].startswith("rkl-b0.1 ")][0]
    assert s0["points"][-1] == pytest.approx([N_STEPS, 0.05 * N_STEPS])
    # the SFT run has no DPO metrics: no margin line for it
    assert not [s for s in margins["series"] if s["label"].startswith("sft-base")]
    cr = chart(charts, "Implicit rewards: chosen (solid) and rejected (dashed)")
    assert len(cr["series"]) == 2 * len(POLICIES)


def test_frontiers_group_by_divergence(report):
    _, _, out, _ = report
    _, _, charts = parse(out)
    fr = chart(charts, "Reward\u2013KL frontier")
    series = {s["label"]: s for s in fr["series"]}
    assert set(series) == {"reverse KL (DPO)", "forward KL", "Jensen\u2013Shannon", "alpha:0.5", "reference"}
    # two rkl policies, joined in order of KL: (2.0, 0.55) then (8.0, 0.80)
    assert flat(series["reverse KL (DPO)"]["points"]) == pytest.approx([2.0, 0.55, 8.0, 0.80])
    assert series["reverse KL (DPO)"]["line"]
    assert flat(series["reference"]["points"]) == pytest.approx([0.0, 0.30])
    assert "\u03b2=0.5" in series["reverse KL (DPO)"]["tips"][0]
    ent = chart(charts, "Reward\u2013entropy frontier")
    e = {s["label"]: s for s in ent["series"]}
    assert flat(e["forward KL"]["points"]) == pytest.approx([2.0, 0.70])
    assert fr["x"]["title"].startswith("KL") and fr["y"]["title"] == "mean reward"


def test_reward_vs_safety_panel(report):
    _, _, out, _ = report
    _, _, charts = parse(out)
    sp = chart(charts, "Reward vs safety")
    series = {s["label"]: s for s in sp["series"]}
    # one labelled point per policy (reward_mean, safety_mean), the threshold as a dashed line
    assert flat(series["rkl-b0.5"]["points"]) == pytest.approx([0.55, -0.1])
    assert flat(series["reference"]["points"]) == pytest.approx([0.30, -0.9])
    assert len(series) == len(POLICIES) + 2
    t = series["threshold -0.25"]
    assert t["line"] and t["dash"] and flat(t["points"]) == pytest.approx([0.30, -0.25, 0.80, -0.25])
    assert sp["x"]["title"] == "mean reward" and sp["y"]["title"] == "mean safety"


def test_tables_and_samples(report):
    _, _, out, _ = report
    text, page, _ = parse(out)
    assert {"runs-table", "eval-table", "diversity-table", "samples-table"} <= page.tables
    div_table = text[text.index('id="diversity-table"'):]
    div_table = div_table[:div_table.index("</table>")]
    for col in ["distinct_1", "distinct_2", "ead", "self_bleu_3", "self_bleu_4"]:
        assert f"<th>{col}</th>" in div_table
    for k in range(len(POLICIES)):
        assert f'<td class="num">{0.6123 + 0.01 * k:.4g}</td>' in div_table
    length = text[text.index('id="length-table"'):]
    length = length[:length.index("</table>")]
    assert "<th>len_tokens_mean</th>" in length and "<th>reward_length_corr</th>" in length
    assert '<td class="num">24</td>' in length  # len_tokens_mean of policy 4
    ev = text[text.index('id="eval-table"'):]
    assert "0.8 \u00b1 0.02" in ev[:ev.index("</table>")]
    samples = text[text.index('id="samples-table"'):]
    samples = samples[:samples.index("</table>")]
    assert "The movie was" in samples and "I think that" in samples
    for k, (div, beta, *_ ) in enumerate(POLICIES):
        assert f"{run_name(div, beta)} says the movie was #{k}" in samples
    assert "reference says i think that #9" in samples


def test_lab_panels(report):
    _, _, out, _ = report
    _, _, charts = parse(out)
    fr = chart(charts, "Lab: exact reward\u2013KL frontier")
    assert len(fr["series"]) == 5
    chi2 = [s for s in chart(charts, "Lab: support size vs \u03b2")["series"] if s["label"] == "\u03c7\u00b2"][0]
    assert flat(chi2["points"]) == pytest.approx([0.05, 1, 0.1, 1, 0.5, 5, 1.0, 10])
    ent = chart(charts, "Lab: entropy of the optimum vs \u03b2")
    assert ent["x"]["log"] is True


def test_truncated_metrics_warns_with_line_and_still_renders(tmp_path):
    d = tmp_path / "rkl-broken"
    d.mkdir()
    rows = metrics_rows(0, 6)
    lines = [json.dumps(r) for r in rows]
    lines[2] = lines[2][:25]              # line 3: cut in the middle
    lines[4] = "{not json at all"         # line 5
    (d / "metrics.jsonl").write_text("\n".join(lines[:5]) + "\n" + lines[5][:30])  # line 6: truncated, no newline
    (d / "run.json").write_text('{"divergence": "rkl", "beta": 0.1}')
    good = tmp_path / "fkl-ok"
    good.mkdir()
    write_jsonl(good / "metrics.jsonl", metrics_rows(1, 5))
    out = tmp_path / "r.html"
    r = run(str(d), str(good), "--out", str(out))
    assert r.returncode == 0, r.stderr
    mpath = str(d / "metrics.jsonl")
    for line in (3, 5, 6):
        assert re.search(rf"warning: {re.escape(mpath)}:{line}: ", r.stderr), r.stderr
    assert not re.search(rf"{re.escape(mpath)}:(1|2|4): ", r.stderr)
    text, _, charts = parse(out)
    loss = {s["label"]: s for s in chart(charts, "Training loss")["series"]}
    assert [p[0] for p in loss["rkl-broken (rkl, \u03b2=0.1)"]["points"]] == [1, 2, 4]
    assert len(loss["fkl-ok"]["points"]) == 5
    assert f"{html.escape(mpath)}:3:" in text      # listed on the page too
    assert "(3 skipped)" in text


def test_bad_jsonl_lines_warn_in_the_words_of_every_jsonl_reader(tmp_path):
    """metrics.jsonl and a samples JSONL are read line by line like the training data
    (fdpo_jsonl_parse_object): the column, and a second object on a line is not kept in
    silence (the samples reader kept the first and lost the second)."""
    d = tmp_path / "run"
    d.mkdir()
    (d / "metrics.jsonl").write_text('{"step": 1, "loss": 1.5}\n{"step": 2, "loss": 1.25} {"step": 3, "loss": 1}\n'
                                     '{"step": 4 "loss": 1}\n[4, 1]\n{"step": 5, "lo')
    s = tmp_path / "samples.jsonl"
    s_lines = ['{"prompt": "p", "completion": "kept"}',
               '{"prompt": "p", "completion": "a"} {"prompt": "p", "completion": "LOST"}', '{"prompt": "p" "completion": "b"}',
               '{"prompt": "p", "compl']     # no newline: the file ends inside the line
    s.write_text("\n".join(s_lines))
    r = run(str(d), "--samples", str(s), "--out", str(tmp_path / "r.html"))
    assert r.returncode == 0, r.stderr
    m = d / "metrics.jsonl"
    for want in (f"{m}:2: unexpected text after the JSON object at column 27, line skipped: ",
                 f"{m}:3: invalid JSON near column 12, line skipped: ",
                 f"{m}:4: expected a JSON object, got an array, line skipped: [4, 1]",
                 f"{m}:5: invalid JSON near column 14 (the file ends there: truncated?), line skipped: ",
                 # the samples reader says it in the same words, the line's start included (docs/report.md)
                 f"{s}:2: unexpected text after the JSON object at column 36, line skipped: {s_lines[1][:40]}...\n",
                 f"{s}:3: invalid JSON near column 16, line skipped: {s_lines[2]}\n",
                 f"{s}:4: invalid JSON near column 18 (the file ends there: truncated?), line skipped: {s_lines[3]}\n"):
        assert f"warning: {want}" in r.stderr, (want, r.stderr)
    text, _, _ = parse(tmp_path / "r.html")
    assert "kept" in text and "LOST" not in text


def test_missing_run_dir_is_an_error(tmp_path):
    missing = str(tmp_path / "no-such-run")
    r = run(missing, "--out", str(tmp_path / "r.html"))
    assert r.returncode != 0
    assert missing in r.stderr and "no such run directory" in r.stderr
    assert not (tmp_path / "r.html").exists()


def test_nothing_readable_is_an_error(tmp_path):
    d = tmp_path / "garbage"
    d.mkdir()
    (d / "metrics.jsonl").write_text("{{{\nnot json\n")
    r = run(str(d), "--out", str(tmp_path / "r.html"))
    assert r.returncode != 0
    assert "nothing could be read" in r.stderr
    assert f"{d}/metrics.jsonl:1:" in r.stderr and f"{d}/metrics.jsonl:2:" in r.stderr
    assert not (tmp_path / "r.html").exists()


def test_no_inputs_and_bad_flags(tmp_path):
    r = run("--out", str(tmp_path / "r.html"))
    assert r.returncode != 0 and "no inputs" in r.stderr
    r = run(str(tmp_path), "--frobnicate")
    assert r.returncode != 0 and "--frobnicate" in r.stderr
    r = run("--eval", str(tmp_path / "missing.json"), "--out", str(tmp_path / "r.html"))
    assert r.returncode != 0 and "missing.json" in r.stderr


def test_bad_eval_and_lab_content_warn(tmp_path):
    d = tmp_path / "run1"
    d.mkdir()
    write_jsonl(d / "metrics.jsonl", metrics_rows(0, 3))
    (d / "eval.json").write_text('{"policies": [\n  {"name": "x", "reward_mean": 0.5,\n  oops}\n]}')
    lab = tmp_path / "lab.csv"
    lab.write_text("divergence,beta,expected_reward,kl\nrkl,0.1,0.9,3\nrkl,0.5\nfkl,0.1,0.8,2\n")
    out = tmp_path / "r.html"
    r = run(str(d), "--lab", str(lab), "--out", str(out))
    assert r.returncode == 0, r.stderr
    with pytest.raises(json.JSONDecodeError) as e:
        json.loads((d / "eval.json").read_text())
    assert e.value.lineno == 3
    assert re.search(rf"{re.escape(str(d / 'eval.json'))}:3: invalid JSON near column \d+, eval file skipped", r.stderr), r.stderr
    assert f"{lab}:3: 2 fields, header has 4" in r.stderr
    _, _, charts = parse(out)
    fr = chart(charts, "Lab: exact reward\u2013KL frontier")
    assert sorted(s["label"] for s in fr["series"]) == ["forward KL", "reverse KL (DPO)"]


def test_a_quote_inside_a_lab_csv_field_is_a_character(tmp_path):
    """A '"' inside an unquoted field opened a quoted region that took the rest of the file
    into one cell, with no warning: the fkl rows vanished from the charts. It is a character
    there (RFC 4180, Python's csv); a quoted field left open at the end of the file is a
    warning naming its line, its rows skipped."""
    lab = tmp_path / "lab.csv"
    lab.write_text('divergence,beta,expected_reward,kl,note\nrkl,0.1,1.5,0.3,ab"c\n'
                   'fkl,0.1,2.5,0.4,"x, y"\nfkl,1,2.0,0.2,\n')
    out = tmp_path / "r.html"
    r = run("--lab", str(lab), "--out", str(out))
    assert r.returncode == 0 and "0 warnings" in r.stderr, r.stderr
    _, _, charts = parse(out)
    fr = {s["label"]: s["points"] for s in chart(charts, "Lab: exact reward\u2013KL frontier")["series"]}
    assert fr == {"reverse KL (DPO)": [[0.3, 1.5]], "forward KL": [[0.2, 2.0], [0.4, 2.5]]}, fr
    assert list(csv.reader(open(lab)))[1][4] == 'ab"c'   # the reference reader agrees
    lab.write_text('divergence,beta,expected_reward,kl\nrkl,0.1,1.5,0.3\nrkl,1,1.0,"0.2\nfkl,0.1,2.5,0.4\n')
    r = run("--lab", str(lab), "--out", str(out))
    assert r.returncode == 0 and (f"{lab}:3: a quoted field opened on this line is not closed by the end of the "
                                  "file; lines 3-4 skipped") in r.stderr, r.stderr


def test_repeated_flags_eval_formats_and_run_dir_discovery(tmp_path):
    # eval as {name: metrics}, as a bare list, and found under RUN_DIR/eval/; lab CSV under RUN_DIR/lab/
    a = tmp_path / "a.json"
    a.write_text(json.dumps({"pol-a": {"reward_mean": 1.5, "kl_seq": 3.0, "entropy": 1.0, "divergence": "js", "beta": 0.2}}))
    b = tmp_path / "b.json"
    b.write_text(json.dumps([{"policy": "pol-b", "metrics": {"reward_mean": 1.25, "kl_token": 0.5}, "divergence": "fkl"}]))
    d = tmp_path / "only-evals"
    (d / "eval").mkdir(parents=True)
    (d / "eval" / "final.json").write_text(json.dumps({"policies": {"pol-c": {"reward_mean": 0.75, "kl_seq": 1.0}}}))
    (d / "lab").mkdir()
    (d / "lab" / "f.csv").write_text("divergence,beta,support\nrkl,0.1,4\nrkl,1,4\n")
    (d / "run.json").write_text('{"divergence": "rkl", "beta": 1.0}')
    out = tmp_path / "r.html"
    r = run(str(d), "--eval", str(a), f"--eval={b}", "--out", str(out))
    assert r.returncode == 0, r.stderr
    _, _, charts = parse(out)
    fr = {s["label"]: s["points"] for s in chart(charts, "Reward\u2013KL frontier")["series"]}
    assert fr == {"reverse KL (DPO)": [[1.0, 0.75]], "Jensen\u2013Shannon": [[3.0, 1.5]], "forward KL": [[0.5, 1.25]]}
    assert [c["title"] for c in charts if c["title"].startswith("Lab")] == ["Lab: support size vs \u03b2"]


def test_settings_merge_across_config_files_and_fall_back_to_the_name(tmp_path):
    d = tmp_path / "merged"
    d.mkdir()
    write_jsonl(d / "metrics.jsonl", metrics_rows(0, 2))
    (d / "a.json").write_text('{"beta": 0.3, "loss": "ipo"}')          # beta and loss only
    (d / "b.json").write_text('{"divergence": "js", "loss": "sigmoid"}')  # the divergence
    bare = tmp_path / "bare"
    bare.mkdir()
    write_jsonl(bare / "metrics.jsonl", metrics_rows(1, 2))
    (bare / "config.json").write_text('{"model_type": "gpt2", "beta": 9}')   # a checkpoint config: ignored
    out = tmp_path / "r.html"
    r = run(str(d), str(bare), "--out", str(out))
    assert r.returncode == 0, r.stderr
    _, _, charts = parse(out)
    labels = [s["label"] for s in chart(charts, "Training loss")["series"] if not s["dash"]]
    assert labels == ["merged (js, \u03b2=0.3)", "bare"]


def test_one_eval_file_over_several_runs_links_policies_by_path(tmp_path):
    """fdpo eval names a policy by the checkpoint path it was given: the report finds the run
    (or, for a directory not given as a run, its training_state.json) and takes its settings."""
    runs = {}
    for div, beta in [("rkl", "0.1"), ("fkl", "0.1"), ("js", "0.5")]:
        d = tmp_path / "runs" / f"{div}-{beta}"
        d.mkdir(parents=True)
        write_jsonl(d / "metrics.jsonl", metrics_rows(0, 2))
        (d / "training_state.json").write_text(json.dumps({"kind": "dpo", "fixed": {"divergence": div, "beta": beta}}))
        runs[div] = d
    sft = tmp_path / "runs" / "sft"
    sft.mkdir()
    (sft / "training_state.json").write_text(json.dumps({"kind": "sft", "fixed": {"lr": "1e-4"}}))
    ev = tmp_path / "eval.json"
    pols = [{"name": str(runs["rkl"]), "reward_mean": 0.5, "kl_seq_mean": 2.0},
            {"name": "runs/fkl-0.1", "reward_mean": 0.25, "kl_seq_mean": 1.0},   # relative, matched by name
            {"name": str(runs["js"]), "reward_mean": 0.75, "kl_seq_mean": 3.0},
            {"name": str(sft), "reward_mean": 0.125, "kl_seq_mean": 0.0}]
    ev.write_text(json.dumps({"config": {"divergence": "rkl", "beta": 0.1}, "policies": pols}))
    out = tmp_path / "r.html"
    # the js run is not given as a run directory: its settings come from its own files
    r = run(str(runs["rkl"]), str(runs["fkl"]), "--eval", str(ev), "--out", str(out))
    assert r.returncode == 0, r.stderr
    _, _, charts = parse(out)
    fr = {s["label"]: s["points"] for s in chart(charts, "Reward\u2013KL frontier")["series"]}
    assert fr == {"reverse KL (DPO)": [[2.0, 0.5]], "forward KL": [[1.0, 0.25]],
                  "Jensen\u2013Shannon": [[3.0, 0.75]], "reference": [[0, 0.125]]}


def test_lab_json_format(tmp_path):
    """`fdpo lab --format json`: an array of flat objects, non-finite numbers as null."""
    lab = tmp_path / "frontier.json"
    lab.write_text(json.dumps([{"divergence": "rkl", "beta": 0.1, "kl": 2.0, "expected_reward": 0.5, "support": 4},
                               {"divergence": "rkl", "beta": 1.0, "kl": 0.5, "expected_reward": 0.25, "support": 4},
                               {"divergence": "chi2", "beta": 0.1, "kl": None, "expected_reward": 0.75, "support": 2}]))
    bad = tmp_path / "bad.json"
    bad.write_text('[{"divergence": "rkl",\n "beta": }]')
    out = tmp_path / "r.html"
    r = run("--lab", str(lab), "--lab", str(bad), "--out", str(out))
    assert r.returncode == 0, r.stderr
    with pytest.raises(json.JSONDecodeError) as e:
        json.loads(bad.read_text())
    assert e.value.lineno == 2
    assert re.search(rf"{re.escape(str(bad))}:2: invalid JSON near column \d+, lab file skipped", r.stderr), r.stderr
    _, _, charts = parse(out)
    fr = {s["label"]: s["points"] for s in chart(charts, "Lab: exact reward\u2013KL frontier")["series"]}
    assert fr == {"reverse KL (DPO)": [[0.5, 0.25], [2.0, 0.5]]}   # chi2 has no KL: no point
    sup = {s["label"]: s["points"] for s in chart(charts, "Lab: support size vs \u03b2")["series"]}
    assert sup["\u03c7\u00b2"] == [[0.1, 2]]


def test_long_runs_are_thinned_keeping_the_last_step(tmp_path):
    d = tmp_path / "long"
    d.mkdir()
    write_jsonl(d / "metrics.jsonl", [{"step": s, "loss": 1.0 / s} for s in range(1, 5001)])
    out = tmp_path / "r.html"
    r = run(str(d), "--out", str(out), "--max-points", "100")
    assert r.returncode == 0, r.stderr
    _, _, charts = parse(out)
    pts = chart(charts, "Training loss")["series"][0]["points"]
    # exactly --max-points, evenly spread, the first and the last among them (a stride plus
    # "keep the last" drew 101; this test allowed 50..101)
    assert [p[0] for p in pts] == [1 + int(k * 4999 / 99 + 0.5) for k in range(100)]
    r = run(str(d), "--out", str(out), "--max-points", "2")
    assert r.returncode == 0, r.stderr
    assert [p[0] for p in chart(parse(out)[2], "Training loss")["series"][0]["points"]] == [1, 5000]


def test_hostile_text_is_escaped(tmp_path):
    evil = "</script><script>alert(1)</script><b>x</b>"
    d = tmp_path / "run-x"
    d.mkdir()
    write_jsonl(d / "metrics.jsonl", metrics_rows(0, 2))
    (d / "eval.json").write_text(json.dumps({"policies": [{"name": evil, "reward_mean": 1, "kl_seq": 1,
                                                           "samples": [{"prompt": evil, "completion": evil}]}]}))
    (d / "run.json").write_text(json.dumps({"divergence": evil, "beta": 0.1}))
    out = tmp_path / "r.html"
    r = run(str(d), "--out", str(out))
    assert r.returncode == 0, r.stderr
    text, page, charts = parse(out)
    assert "alert(1)" in text and "<script>alert(1)" not in text
    assert "<b>x</b>" not in text
    assert page.script_srcs == []
    assert any(evil in s["label"] for c in charts for s in c["series"])  # intact inside the JSON


def test_fdpo_native_run_dir_eval_and_samples(tmp_path):
    """The files fdpo itself writes: settings in training_state.json ("fixed", values as text),
    a checkpoint config.json and eval_summary.json beside them, fdpo eval's metric names
    (reward_se, kl_seq_mean, *_per_input / *_across_input, nulls) and a samples JSONL."""
    d = tmp_path / "dpo-js"
    d.mkdir()
    rows = [{"step": 0, "eval_loss": 0.69, "eval_rewards/margins": 0.0, "eval_rewards/accuracies": 0.5}]
    rows += [{"step": s, "epoch": s / 4, "loss": 0.7 - 0.05 * s, "rewards/margins": 0.1 * s,
              "rewards/accuracies": 0.5 + 0.1 * s, "grad_norm": None} for s in range(1, 5)]
    write_jsonl(d / "metrics.jsonl", rows)
    (d / "training_state.json").write_text(json.dumps({
        "format": "fdpo-training-state", "kind": "dpo", "step": 4, "total_steps": 4,
        "data": {"n_items": 3, "order": [2, 0, 1]},
        "fixed": {"divergence": "js", "beta": "0.25", "loss": "sigmoid", "lr": "1e-4"}}))
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    (d / "eval_summary.json").write_text(json.dumps({"pairs": 8, "loss": 0.6, "rewards/accuracies": 0.75,
                                                     "initial": {"pairs": 8, "loss": 0.69}}))
    pol = {"name": "dpo-js", "n_prompts": 2, "k": 2, "n_samples": 4, "reward_mean": 0.625, "reward_std": 0.1,
           "reward_se": 0.05, "reward_length_corr": None, "kl_seq_mean": 3.5, "kl_seq_se": 0.2, "kl_tok_mean": 0.25,
           "fdiv_seq_js_mean": 0.125, "entropy": 1.75, "len_tokens_mean": 12.5, "len_words_mean": 9.0,
           "distinct_1_per_input": 0.5, "distinct_1_across_input": 0.875, "self_bleu_3_per_input": 0.375,
           "self_bleu_3_across_input": None, "pref_accuracy": 0.75}
    (d / "eval.json").write_text(json.dumps({"policies": [pol]}))
    with open(d / "samples.jsonl", "w") as f:
        for i, p in enumerate(["Once upon", "The cat"]):
            f.write(json.dumps({"policy": "dpo-js", "prompt_index": i, "sample_index": 0, "prompt": p,
                                "completion": f"a time {i}", "n_tokens": 3, "reward": 0.5 + i, "tokens": [1, 2]}) + "\n")
    out = tmp_path / "r.html"
    r = run(str(d), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "warning:" not in r.stderr, r.stderr      # eval_summary.json is not an eval file
    assert "1 policy" in r.stderr, r.stderr
    text, page, charts = parse(out)
    runs = text[text.index('id="runs-table"'):]
    runs = runs[:runs.index("</table>")]
    assert "<td>dpo</td><td>js</td>" in runs
    assert f'<td title="{html.escape(str(d / "training_state.json"))}">training_state.json</td>' in runs
    loss = {s["label"]: s for s in chart(charts, "Training loss")["series"]}
    assert [p[0] for p in loss["dpo-js (js, \u03b2=0.25)"]["points"]] == [1, 2, 3, 4]
    assert [p[0] for p in loss["dpo-js (js, \u03b2=0.25) (held out)"]["points"]] == [0]
    fr = {s["label"]: s for s in chart(charts, "Reward\u2013KL frontier")["series"]}
    assert fr["Jensen\u2013Shannon"]["points"] == [[3.5, 0.625]]
    assert "\u00b1 0.05" in fr["Jensen\u2013Shannon"]["tips"][0]
    ev = text[text.index('id="eval-table"'):]
    ev = ev[:ev.index("</table>")]
    assert "<th>kl_seq_mean</th>" in ev and "<th>fdiv_seq_js_mean</th>" in ev and "0.625 \u00b1 0.05" in ev
    assert "<th>kl_seq_se</th>" not in ev
    per = text[text.index('id="diversity-per-input-table"'):]
    per = per[:per.index("</table>")]
    assert "<th>distinct_1</th>" in per and "<th>self_bleu_3</th>" in per and '<td class="num">0.5</td>' in per
    across = text[text.index('id="diversity-across-input-table"'):]
    across = across[:across.index("</table>")]
    assert '<td class="num">0.875</td>' in across
    assert "<th>self_bleu_3</th>" not in across          # null everywhere: no column
    samples = text[text.index('id="samples-table"'):]
    assert "a time 0" in samples and "a time 1" in samples and "[1.5]" in samples


def test_lab_gap_coverage_and_bias_tables(tmp_path):
    gap = tmp_path / "gap.csv"
    with open(gap, "w") as f:
        f.write("noise,divergence,beta,reward_gap,objective_gap,bound,bound_held\n")
        for noise in (0.1, 0.5):
            for div in ("rkl", "fkl"):
                for beta in (0.1, 1.0):
                    f.write(f"{noise},{div},{beta},{noise * beta},{noise / beta},{noise * 10},1\n")
    cov = tmp_path / "coverage.csv"
    with open(cov, "w") as f:
        f.write("data_policy,n_comparisons,divergence,beta,reward_gap,objective_gap,pistar_coverage,fit_rmse\n")
        for dp in ("pi_ref", "pi_star"):
            for n in (10, 100, 1000):
                f.write(f"{dp},{n},rkl,0.1,{1 / n},{2 / n},0.5,0.1\n")
    bias = tmp_path / "bias.csv"
    bias.write_text("bias,divergence,beta,length_pistar,length_pihat,length_increase,reward_gap\n"
                    "0.005,rkl,0.1,50,60,10,0.1\n0.005,rkl,1,50,52,2,0.01\n0.005,js,0.1,50,55,5,0.05\n")
    out = tmp_path / "r.html"
    r = run("--lab", str(gap), "--lab", str(cov), "--lab", str(bias), "--out", str(out))
    assert r.returncode == 0, r.stderr
    _, page, charts = parse(out)
    titles = [c["title"] for c in charts]
    assert titles == ["Lab: true-reward gap from reward error vs \u03b2", "Lab: regularised-objective gap vs \u03b2",
                      "Lab: reward gap vs number of comparisons", "Lab: length increase under a length-biased reward vs \u03b2"]
    g = {s["label"]: s for s in charts[0]["series"]}
    assert set(g) == {"reverse KL (DPO), noise=0.1", "reverse KL (DPO), noise=0.5", "forward KL, noise=0.1", "forward KL, noise=0.5"}
    assert g["reverse KL (DPO), noise=0.1"]["dash"] == 0 and g["reverse KL (DPO), noise=0.5"]["dash"] == 1
    assert flat(g["forward KL, noise=0.5"]["points"]) == pytest.approx([0.1, 0.05, 1.0, 0.5])
    c = {s["label"]: s for s in charts[2]["series"]}
    assert set(c) == {"reverse KL (DPO), data_policy=pi_ref", "reverse KL (DPO), data_policy=pi_star"}
    assert charts[2]["x"]["log"] is True
    assert flat(c["reverse KL (DPO), data_policy=pi_star"]["points"]) == pytest.approx([10, 0.1, 100, 0.01, 1000, 0.001])
    assert page.body_attrs.get("data-charts-expected") == "4"


def test_invalid_utf8_input_gives_valid_utf8_page(tmp_path):
    d = tmp_path / "bytes"
    d.mkdir()
    (d / "metrics.jsonl").write_bytes(b'{"step": 1, "loss": 1.5}\n' + "é".encode() * 19 + b"\xc3\xff junk\n"
                                      + b'{"step": 2, "loss": 1.25, "note": "\xff\xfe"}\n')
    lab = tmp_path / "lab.csv"
    lab.write_bytes(b"divergence,beta,support\nrkl\xff,0.1,3\nrkl\xff,1,3\n")
    out = tmp_path / "r.html"
    r = subprocess.run([FDPO, "report", str(d), "--lab", str(lab), "--out", str(out)], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"{d}/metrics.jsonl:2: ".encode() in r.stderr
    text, _, charts = parse(out)      # raises if the page is not UTF-8
    assert "rkl\ufffd" in text
    assert [p[0] for p in chart(charts, "Training loss")["series"][0]["points"]] == [1, 2]


# ---------------------------------------------------------------- browser ----

def chromium(args, timeout=180):
    prof = tempfile.mkdtemp(prefix="fdpo-chromium-")
    try:
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={prof}",
               "--enable-logging=stderr", "--v=0", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    finally:
        shutil.rmtree(prof, ignore_errors=True)


CONSOLE_ERROR = re.compile(r"Uncaught|CONSOLE.*(error|Error)|fdpo report:|net::ERR_|Failed to load resource")


def body_attr(dom, name):
    tag = re.search(r"<body\b[^>]*>", dom)  # the first one: the page's body, not text inside scripts
    m = re.search(r"\s" + re.escape(name) + r'="([^"]*)"', tag.group(0)) if tag else None
    return m.group(1) if m else None


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", head[16:24])


requires_chromium = pytest.mark.skipif(
    CHROMIUM is None or os.environ.get("FDPO_SANITIZED") == "1",
    reason="chromium is not installed (scripts/deps.sh installs it; Debian package 'chromium')" if CHROMIUM is None
    else "the ASan build: the browser runs no fdpo code, and the other tests write the same report files under ASan")


@requires_chromium
def test_browser_draws_every_chart_offline(report):
    root, _, out, _ = report
    url = "file://" + os.path.abspath(out)
    r = chromium(["--virtual-time-budget=10000", "--dump-dom", url])
    dom = r.stdout
    assert "<body" in dom, r.stderr[-3000:]
    assert body_attr(dom, "data-charts-error") is None, body_attr(dom, "data-charts-error")
    assert body_attr(dom, "data-charts-ready") == str(EXPECTED_CHARTS), r.stderr[-3000:]
    bad = [line for line in r.stderr.splitlines() if CONSOLE_ERROR.search(line)]
    assert not bad, bad
    # screenshot for people (and for the test's own sanity check)
    os.makedirs(OUT_DIR, exist_ok=True)
    shot = os.path.join(OUT_DIR, "report.png")
    if os.path.exists(shot):
        os.remove(shot)
    r = chromium(["--virtual-time-budget=10000", f"--screenshot={shot}", "--window-size=1280,2400", url])
    assert os.path.exists(shot), r.stderr[-3000:]
    assert png_size(shot) == (1280, 2400)
    shutil.copy(out, os.path.join(OUT_DIR, "report.html"))
    try:
        from PIL import Image
    except ImportError:
        assert os.path.getsize(shot) > 60000, "screenshot looks blank"
        return
    img = Image.open(shot).convert("RGB")
    # the first chart row sits in the top third: it must hold many colours (lines, text), not a blank
    colours = img.crop((0, 0, 1280, 1600)).getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200, "screenshot looks blank"
    # the run colours (Chart.js drew the lines)
    rgb = {c for _, c in colours}
    assert (31, 119, 180) in rgb and (214, 39, 40) in rgb


@requires_chromium
def test_browser_check_catches_a_broken_chart_library(tmp_path):
    """Control for the test above: with a Chart.js that throws, the page must say so."""
    d = tmp_path / "r1"
    d.mkdir()
    write_jsonl(d / "metrics.jsonl", metrics_rows(0, 3))
    fake = tmp_path / "fake-chart.js"
    fake.write_text("/* not Chart.js */ window.Chart = function () { throw new Error('boom'); };\n")
    out = tmp_path / "r.html"
    r = run(str(d), "--out", str(out), "--chartjs", str(fake))
    assert r.returncode == 0, r.stderr
    r = chromium(["--virtual-time-budget=5000", "--dump-dom", "file://" + str(out)])
    assert body_attr(r.stdout, "data-charts-ready") == "0"
    assert "boom" in (body_attr(r.stdout, "data-charts-error") or "")
    assert [line for line in r.stderr.splitlines() if CONSOLE_ERROR.search(line)]


@pytest.mark.parametrize("max_prompts", [1, 2, 5, 6, 7, 10, 11])
def test_max_prompts_shows_exactly_that_many_prompts_in_first_seen_order(tmp_path, max_prompts):
    # two policies whose samples overlap: prompts are taken in first-seen order across policies
    first = [f"prompt {i:02d}" for i in range(6)]
    second = [f"prompt {i:02d}" for i in range(4, 10)]
    pols = [{"name": name, "reward_mean": 0.5, "kl_seq": 1.0,
             "samples": [{"prompt": p, "completion": f"{name} on {p}"} for p in ps for _ in range(2)]}
            for name, ps in [("pol-a", first), ("pol-b", second)]]
    ev = tmp_path / "eval.json"
    ev.write_text(json.dumps({"policies": pols}))
    out = tmp_path / "r.html"
    r = run("--eval", str(ev), "--max-prompts", str(max_prompts), "--out", str(out))
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    table = text[text.index('id="samples-table"'):]
    table = table[:table.index("</table>")]
    shown = re.findall(r'<td class="prompt">([^<]*)</td>', table)
    assert shown == [f"prompt {i:02d}" for i in range(min(max_prompts, 10))]


def test_lab_frontier_is_drawn_on_the_evaluation_reward_kl_axes(tmp_path):
    """--lab-frontier: each divergence's exact (KL, expected_reward) over beta, read from the
    CSV, becomes a dashed "exact (lab)" line on the measured reward-KL panel (same colour as
    the divergence's measured frontier), and is not drawn a second time in the lab section."""
    runs, ref, lab = make_fixture(str(tmp_path))
    out = str(tmp_path / "r.html")
    r = run(*runs, "--eval", ref, "--lab-frontier", lab, "--out", out)
    assert r.returncode == 0, r.stderr
    text, _, charts = parse(out)
    fr = chart(charts, "Reward\u2013KL frontier")
    series = {s["label"]: s for s in fr["series"]}
    rows = [l.split(",") for l in open(lab).read().split("\n")[1:] if l]
    for div, title in [("rkl", "reverse KL (DPO)"), ("fkl", "forward KL"), ("chi2", "\u03c7\u00b2")]:
        want = sorted((float(x[4]), float(x[2])) for x in rows if x[0] == div)
        s = series[f"{title} exact (lab)"]
        assert flat(s["points"]) == pytest.approx(flat(want))
        assert s["line"] and s["dash"]
        assert "\u03b2=" in s["tips"][0] and "exact" in s["tips"][0]
    assert series["forward KL exact (lab)"]["color"] == series["forward KL"]["color"]
    assert not series["reverse KL (DPO)"]["dash"]  # the measured line stays solid
    assert "Dashed, &quot;exact (lab)&quot;" in text or 'Dashed, "exact (lab)"' in text  # the panel says what the dashes are
    assert not [c for c in charts if c["title"] == "Lab: exact reward\u2013KL frontier"]
    assert chart(charts, "Lab: entropy of the optimum vs \u03b2")  # the other lab panels stay


def test_lab_frontier_without_its_columns_is_an_error(tmp_path):
    bad = tmp_path / "gap.csv"
    bad.write_text("divergence,beta,reward_gap\nrkl,0.1,0.5\n")
    r = run("--lab-frontier", str(bad), "--out", str(tmp_path / "r.html"))
    assert r.returncode != 0
    assert "--lab-frontier" in r.stderr and str(bad) in r.stderr and '"kl"' in r.stderr
    r = run("--lab-frontier", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "r.html"))
    assert r.returncode != 0 and "missing.csv" in r.stderr and "--lab-frontier" in r.stderr
    assert not (tmp_path / "r.html").exists()


def test_safety_panel_joins_sacpo_models_in_lambda_order(tmp_path):
    """An fdpo sacpo run's models (DIR/reward = lambda 0, DIR/lambda-L) are joined in order of
    lambda, whatever their order in the eval file; merges, the base model and another run's
    models are points only; every point is labelled by its path's last component."""
    s = tmp_path / "sacpo"
    pols = [{"name": "/runs/base", "reward_mean": 0.02, "safety_mean": -0.12},
            {"name": f"{s}/lambda-0.3", "reward_mean": 0.013, "safety_mean": -0.02},
            {"name": f"{s}/merge-0.03-0.3-w0.5", "reward_mean": 0.03, "safety_mean": -0.1},
            {"name": f"{s}/reward", "reward_mean": 0.10, "safety_mean": -0.51},
            {"name": f"{s}/lambda-0.03", "reward_mean": 0.049, "safety_mean": -0.19},
            {"name": "/other/sacpo/lambda-1", "reward_mean": 0.0, "safety_mean": 0.0}]
    for p in pols:
        p.update({"safety_se": 0.01, "safety_threshold": -0.12, "safety_frac_safe": 0.9})
    ev = tmp_path / "eval_safety.json"
    ev.write_text(json.dumps({"policies": pols}))
    out = tmp_path / "r.html"
    r = run("--eval", str(ev), "--out", str(out))
    assert r.returncode == 0, r.stderr
    _, _, charts = parse(out)
    series = {x["label"]: x for x in chart(charts, "Reward vs safety")["series"]}
    path = series.pop("SACPO, \u03bb = 0 \u2192 0.3")
    assert path["line"] and not path["dash"]
    assert flat(path["points"]) == pytest.approx([0.10, -0.51, 0.049, -0.19, 0.013, -0.02])
    assert series.pop("threshold -0.12")["dash"]
    assert sorted(series) == sorted(["base", "lambda-0.3", "merge-0.03-0.3-w0.5", "reward", "lambda-0.03", "lambda-1"])
    assert all(not x["line"] and len(x["points"]) == 1 for x in series.values())
    assert f"{s}/lambda-0.03" in series["lambda-0.03"]["tips"][0]


def test_proxy_eval_draws_gold_and_proxy_reward_against_kl(tmp_path):
    """--proxy-eval: the policies a proxy-reward eval file shares (by name) with the gold eval
    files become two lines against the gold file's KL, each reward as its gain over the
    reference (the policy with KL 0) in units of the reference's reward standard deviation;
    the proxy file's policies are not added to the evaluation tables."""
    names = ["runs/base", "online/round-0", "online/round-1", "online/round-2"]
    kl = [0.0, 1.5, 3.25, 6.0]
    gold = [(0.02, 0.1, 0.004), (0.05, 0.12, 0.005), (0.06, 0.13, 0.006), (0.045, 0.14, 0.006)]
    proxy = [(-0.5, 2.0, 0.09), (1.0, 2.5, 0.1), (2.5, 2.2, 0.1), (4.0, 2.1, 0.1)]

    def pol(n, k, m, sd, se):
        return {"name": n, "kl_seq_mean": k, "kl_seq_se": 0.1, "reward_mean": m, "reward_std": sd, "reward_se": se}
    g = tmp_path / "gold.json"
    g.write_text(json.dumps({"policies": [pol(n, k, *v) for n, k, v in zip(names, kl, gold)]}))
    p = tmp_path / "proxy.json"
    # the proxy file's own KL values differ: the panel uses the gold file's
    p.write_text(json.dumps({"config": {"reward": "rm:runs/rm"},
                             "policies": [pol(n, 0.0 if i == 0 else 99.0, *v) for i, (n, v) in enumerate(zip(names, proxy))]}))
    out = tmp_path / "r.html"
    r = run("--eval", str(g), "--proxy-eval", str(p), "--out", str(out))
    assert r.returncode == 0, r.stderr
    text, _, charts = parse(str(out))
    c = chart(charts, "Reward over-optimisation: gold vs proxy reward")
    s = {x["label"]: x for x in c["series"]}
    want_gold = [(k, (m - gold[0][0]) / gold[0][1]) for k, (m, _, _) in zip(kl, gold)]
    want_proxy = [(k, (m - proxy[0][0]) / proxy[0][1]) for k, (m, _, _) in zip(kl, proxy)]
    assert flat(s["gold reward"]["points"]) == pytest.approx(flat(want_gold), rel=1e-12, abs=1e-12)
    assert flat(s["proxy reward"]["points"]) == pytest.approx(flat(want_proxy), rel=1e-12, abs=1e-12)
    assert "0.045" in s["gold reward"]["tips"][3] and "\u00b1" in s["proxy reward"]["tips"][2]
    assert "4 evaluated policies" in text  # the proxy file adds no policy
    # the panel's text was UTF-8 encoded twice ("KL(\u00cf\u0080 \u00e2\u0080\u0096 ...", "\u00c2\u00b1")
    html = out.read_text(encoding="utf-8")
    assert "KL(\u03c0 \u2016 \u03c0_ref) (nats)" in html and "KL(\u03c0\u2016\u03c0_ref) from the gold evaluation" in html
    assert not any(m in html for m in ("\u00c2\u00b1", "\u00cf\u0080", "\u00e2\u0080"))
    assert all("\u00c2" not in t for x in s.values() for t in x["tips"])


def test_proxy_eval_without_a_reference_warns_and_draws_nothing(tmp_path):
    g = tmp_path / "gold.json"
    g.write_text(json.dumps({"policies": [{"name": "a", "kl_seq_mean": 1.0, "reward_mean": 0.1, "reward_std": 0.1}]}))
    p = tmp_path / "proxy.json"
    p.write_text(json.dumps({"policies": [{"name": "a", "kl_seq_mean": 1.0, "reward_mean": 2.0, "reward_std": 1.0}]}))
    out = tmp_path / "r.html"
    r = run("--eval", str(g), "--proxy-eval", str(p), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "--proxy-eval: no reference policy" in r.stderr
    _, _, charts = parse(str(out))
    assert not [c for c in charts if c["title"].startswith("Reward over-optimisation")]
    r = run("--eval", str(g), "--proxy-eval", str(tmp_path / "missing.json"), "--out", str(out))
    assert r.returncode != 0 and "missing.json" in r.stderr and "--proxy-eval" in r.stderr


def test_proxy_eval_without_a_gold_evaluation_is_refused(tmp_path):
    """--proxy-eval with a run directory or a lab table as the only other input: the file was
    read, then left out of the page (no panel, no warning, exit 0). It is refused naming the
    flag, and nothing is written; a run directory whose eval/ files hold the gold evaluation
    is one (the panel is drawn from it)."""
    p = tmp_path / "proxy.json"
    p.write_text(json.dumps({"policies": [{"name": "ref", "kl_seq_mean": 0.0, "reward_mean": 1.0, "reward_std": 0.5},
                                          {"name": "a", "kl_seq_mean": 2.0, "reward_mean": 3.0, "reward_std": 0.5}]}))
    lab = tmp_path / "lab.csv"
    lab.write_text("divergence,beta,support\nrkl,0.1,4\nrkl,1,4\n")
    d = tmp_path / "run"
    d.mkdir()
    write_jsonl(d / "metrics.jsonl", metrics_rows(0, 2))
    out = tmp_path / "r.html"
    for inputs in (["--lab", str(lab)], [str(d)], [str(d), "--lab", str(lab)]):
        r = run(*inputs, "--proxy-eval", str(p), "--out", str(out))
        assert r.returncode == 1, r.stderr
        assert r.stderr == (f"fdpo report: --proxy-eval {p}: no gold evaluation to set it against: the over-optimisation "
                            "panel draws the proxy reward next to the gold reward of the same policies (give their "
                            "--eval files, or a RUN_DIR with eval/ files)\n"), r.stderr
        assert not out.exists()
    (d / "eval").mkdir()
    (d / "eval" / "gold.json").write_text(json.dumps({"policies": [
        {"name": "ref", "kl_seq_mean": 0.0, "reward_mean": 0.25, "reward_std": 0.25},
        {"name": "a", "kl_seq_mean": 1.5, "reward_mean": 0.75, "reward_std": 0.25}]}))
    r = run(str(d), "--proxy-eval", str(p), "--out", str(out))
    assert r.returncode == 0, r.stderr
    _, _, charts = parse(str(out))
    s = {x["label"]: x for x in chart(charts, "Reward over-optimisation: gold vs proxy reward")["series"]}
    # gains over the reference in its s.d.: gold (0.75 - 0.25) / 0.25, proxy (3 - 1) / 0.5, at the gold KL
    assert flat(s["gold reward"]["points"]) == [0.0, 0.0, 1.5, 2.0]
    assert flat(s["proxy reward"]["points"]) == [0.0, 0.0, 1.5, 4.0]


def test_proxy_eval_with_samples_but_no_gold_evaluation_is_refused(tmp_path):
    """A samples file (--samples, or a RUN_DIR's *samples*.jsonl) adds policies without metrics:
    the refusal keyed on the policy count let `--samples S --proxy-eval P` through (exit 0, no
    panel, a warning about gold eval files there were none of). Only an eval file is a gold
    evaluation; with one beside the samples the panel is drawn as before (the demo's form)."""
    p = tmp_path / "proxy.json"
    p.write_text(json.dumps({"policies": [{"name": "ref", "kl_seq_mean": 0.0, "reward_mean": 1.0, "reward_std": 0.5},
                                          {"name": "a", "kl_seq_mean": 2.0, "reward_mean": 3.0, "reward_std": 0.5}]}))
    samples = tmp_path / "samples.jsonl"
    write_jsonl(samples, [{"policy": n, "prompt": "q", "completion": "x", "reward": 0.5} for n in ("ref", "a")])
    d = tmp_path / "run"
    d.mkdir()
    write_jsonl(d / "metrics.jsonl", metrics_rows(0, 2))
    shutil.copy(samples, d / "samples.jsonl")
    out = tmp_path / "r.html"
    for inputs in (["--samples", str(samples)], [str(tmp_path / "run"), "--samples", str(samples)], [str(d)]):
        r = run(*inputs, "--proxy-eval", str(p), "--out", str(out))
        assert r.returncode == 1, (inputs, r.stderr)
        assert r.stderr.startswith(f"fdpo report: --proxy-eval {p}: no gold evaluation to set it against"), r.stderr
        assert not out.exists()
    g = tmp_path / "gold.json"
    g.write_text(json.dumps({"policies": [
        {"name": "ref", "kl_seq_mean": 0.0, "reward_mean": 0.25, "reward_std": 0.25},
        {"name": "a", "kl_seq_mean": 1.5, "reward_mean": 0.75, "reward_std": 0.25}]}))
    (d / "eval").mkdir()
    shutil.copy(g, d / "eval" / "gold.json")
    for inputs in (["--eval", str(g), "--samples", str(samples)], [str(d)]):
        r = run(*inputs, "--proxy-eval", str(p), "--out", str(out))
        assert r.returncode == 0, (inputs, r.stderr)
        _, _, charts = parse(str(out))
        s = {x["label"]: x for x in chart(charts, "Reward over-optimisation: gold vs proxy reward")["series"]}
        # gains over the reference in its s.d.: gold (0.75 - 0.25) / 0.25, proxy (3 - 1) / 0.5, at the gold KL
        assert flat(s["gold reward"]["points"]) == [0.0, 0.0, 1.5, 2.0]
        assert flat(s["proxy reward"]["points"]) == [0.0, 0.0, 1.5, 4.0]
        out.unlink()


def test_a_run_resumed_across_the_eval_loss_rename_keeps_one_held_out_curve(tmp_path):
    """pretrain/sft wrote val_loss before wave 28 and eval_loss since: a run resumed across
    the change has both in one metrics.jsonl; the report reads val_loss as eval_loss, so the
    held-out curve keeps every point and the runs table has one column (it plotted only the
    eval_loss points and showed a stale 'final val_loss' beside 'final eval_loss')."""
    d = tmp_path / "sft-resumed"
    d.mkdir()
    rows = [{"step": s, "loss": 3.0 - 0.1 * s} for s in range(1, 11)]
    for row in rows:
        if row["step"] % 2 == 0:
            row["val_loss" if row["step"] <= 6 else "eval_loss"] = 4.0 - 0.1 * row["step"]
    write_jsonl(d / "metrics.jsonl", rows)
    out = tmp_path / "r.html"
    r = run(str(d), "--out", str(out))
    assert r.returncode == 0, r.stderr
    text, _, charts = parse(out)
    loss = {s["label"]: s for s in chart(charts, "Training loss")["series"]}
    held = loss["sft-resumed (held out)"]["points"]
    assert flat(held) == pytest.approx(flat([[s, 4.0 - 0.1 * s] for s in (2, 4, 6, 8, 10)]))
    runs = text[text.index('id="runs-table"'):]
    runs = runs[:runs.index("</table>")]
    assert "<th>final eval_loss</th>" in runs and "final val_loss" not in runs


def test_constrained_lab_table_gets_its_own_panels(tmp_path):
    """`fdpo lab constrained --frontier LO:HI:K` was drawn as a beta frontier (the reward-KL and
    against-beta panels, every point stacked at x = beta). It gets E[reward], E[safety] and lambda*
    against the threshold, one line per divergence, with the CSV's numbers (infeasible rows,
    NaN, left out), and none of the beta-frontier panels."""
    import csv as csv_mod
    prob = tmp_path / "p.csv"
    prob.write_text("pi_ref,reward,safety\n0.4,1.0,-1.0\n0.3,0.5,0.0\n0.2,-0.5,1.0\n0.1,0.0,0.5\n")
    cf = tmp_path / "cf.csv"
    lab = subprocess.run([FDPO, "lab", "constrained", "--data", str(prob), "--frontier", "-1:1.5:6",
                          "--divergence", "rkl,fkl", "--beta", "0.2", "--out", str(cf)], capture_output=True, text=True)
    assert lab.returncode == 0, lab.stderr
    rows = list(csv_mod.DictReader(open(cf)))
    assert any(r["feasible"] == "0" for r in rows) and any(r["active"] == "1" for r in rows)
    out = tmp_path / "r.html"
    r = run("--lab", str(cf), "--out", str(out))
    assert r.returncode == 0, r.stderr
    _, _, charts = parse(out)
    titles = [c["title"] for c in charts]
    for t in ["Lab: exact reward\u2013KL frontier", "Lab: entropy of the optimum vs \u03b2",
              "Lab: support size vs \u03b2", "Lab: D_f(\u03c0*\u2016\u03c0_ref) vs \u03b2"]:
        assert t not in titles, titles
    for title, col in [("Lab: constrained optimum: expected reward vs safety threshold", "expected_reward"),
                       ("Lab: constrained optimum: expected safety vs safety threshold", "expected_safety"),
                       ("Lab: multiplier \u03bb* vs safety threshold", "lambda")]:
        c = chart(charts, title)
        assert c["x"]["log"] is False
        got = {s["label"]: s["points"] for s in c["series"]}
        for div, label in [("rkl", "reverse KL (DPO)"), ("fkl", "forward KL")]:
            want = [[float(x["min_safety"]), float(x[col])] for x in rows
                    if x["divergence"] == div and math.isfinite(float(x[col]))]
            assert len(want) == sum(x["divergence"] == div and x["feasible"] == "1" for x in rows)
            assert flat(got[label]) == pytest.approx(flat(sorted(want)), rel=1e-12), (title, div)
        assert sorted(got) == ["forward KL", "reverse KL (DPO)"]
    # as --lab-frontier it would be a "beta frontier" on the reward-KL axes: refused, naming --lab
    r = run("--lab-frontier", str(cf), "--out", str(tmp_path / "r2.html"))
    assert r.returncode == 1 and f"--lab-frontier {cf}: a `fdpo lab constrained` table" in r.stderr, r.stderr
    assert "give it to --lab" in r.stderr and not (tmp_path / "r2.html").exists()


def test_lab_cells_and_run_settings_are_read_by_the_one_number_rule(tmp_path):
    """A lab cell or a run's β is a number only as fdpo_parse_number reads one (decimal, finite,
    not a nonzero rounding to 0): strtod took "0x10" as 16 and "1e-400" as 0, both drawn or
    shown without a word. Refused cells are kept as text and named FILE:LINE and column; the
    nan/inf `fdpo lab` writes stay empty cells, silently."""
    lab = tmp_path / "lab.csv"
    lab.write_text("divergence,beta,kl,expected_reward\nrkl,0.5,0.5,0.5\nrkl,0.6,0x10,0.6\nrkl,0.7,1e-400,0.7\n"
                   "rkl,0.8,inf,0.8\nrkl,0.9,0.25,nan\n")
    runs = []
    for name, fname, text in [("ini1", "run.ini", "[train]\ndivergence = rkl\nbeta = 0x10\n"),
                              ("ini2", "run.json", '{"divergence": "rkl", "beta": "1e-400"}'),
                              ("ok", "run.json", '{"divergence": "rkl", "beta": "0.25"}')]:
        d = tmp_path / name
        d.mkdir()
        write_jsonl(d / "metrics.jsonl", [{"step": 1, "loss": 0.5}])
        (d / fname).write_text(text)
        runs.append(str(d))
    out = tmp_path / "r.html"
    r = run(*runs, "--lab", str(lab), "--out", str(out))
    assert r.returncode == 0, r.stderr
    for want in (f'{lab}:3: column "kl": \'0x10\' is not a decimal number; kept as text',
                 f'{lab}:4: column "kl": \'1e-400\' is out of range',
                 f"{runs[0]}/run.ini:3: beta: '0x10' is not a decimal number; not used",
                 f"{runs[1]}/run.json: beta: '1e-400' is out of range"):
        assert f"warning: {want}" in r.stderr, (want, r.stderr)
    assert "inf" not in r.stderr and "nan" not in r.stderr and r.stderr.count("warning:") == 4, r.stderr
    _, _, charts = parse(out)
    # the reference: the rows Python's float() reads as finite decimals in both columns
    rows = list(csv.DictReader(open(lab)))
    ok = [[float(x["kl"]), float(x["expected_reward"])] for x in rows
          if all(re.fullmatch(r"[0-9.]+", x[k]) and float(x[k]) != 0 for k in ("kl", "expected_reward"))]
    fr = {s["label"]: s["points"] for s in chart(charts, "Lab: exact reward\u2013KL frontier")["series"]}
    assert fr == {"reverse KL (DPO)": ok} and ok == [[0.5, 0.5]]
    labels = [s["label"] for s in chart(charts, "Training loss")["series"]]
    assert labels == ["ini1 (rkl)", "ini2 (rkl)", "ok (rkl, \u03b2=0.25)"]


def test_lab_csv_byte_order_mark_is_not_data(tmp_path):
    """A UTF-8 BOM before the header (as every other fdpo reader skips it): it made the first
    column "\ufeffdivergence", so the table drew nothing and --lab-frontier found no column."""
    body = "divergence,beta,kl,expected_reward\nrkl,0.1,1,2\nrkl,0.2,2,3\n"
    lab = tmp_path / "bom.csv"
    lab.write_bytes(b"\xef\xbb\xbf" + body.encode())
    out = tmp_path / "r.html"
    r = run("--lab", str(lab), "--out", str(out))
    assert r.returncode == 0, r.stderr
    _, _, charts = parse(out)
    rows = list(csv.DictReader(body.splitlines()))
    fr = {s["label"]: s["points"] for s in chart(charts, "Lab: exact reward\u2013KL frontier")["series"]}
    assert fr == {"reverse KL (DPO)": [[float(x["kl"]), float(x["expected_reward"])] for x in rows]}
    ev = tmp_path / "ev.json"
    ev.write_text(json.dumps({"policies": [{"name": "a", "reward_mean": 1, "kl_seq_mean": 2}]}))
    r = run(str(ev), "--lab-frontier", str(lab), "--out", str(out))
    assert r.returncode == 0 and "no column" not in r.stderr, r.stderr


def test_reference_is_told_by_its_own_name_as_a_word(tmp_path):
    """A policy evaluated beside others inherits the run's settings unless its own name (last
    path component) has ref/sft/base/init as a word: "preference-exps/js-final" contains
    "ref" only inside a parent directory's word, and lost its divergence and beta."""
    d = tmp_path / "run"
    d.mkdir()
    write_jsonl(d / "metrics.jsonl", [{"step": 1, "loss": 1}])
    (d / "run.json").write_text('{"divergence": "js", "beta": 0.2}')
    names = {"/data/preference-exps/js-final": True, "/data/other-exps/js-final": True, "refined": True,
             "runs/sft/final": True, "policy": True,
             "/data/x/base": False, "ref": False, "sft-model": False, "base_ref": False, "gpt2.init": False,
             "runs/SFT": False, "runs/base/": False,
             # whole words that name a reference too (a review's find: they had become policies)
             "reference": False, "baseline": False, "initial": False, "Reference model": False, "ref1": False,
             "sft0": False, "gpt2 (base)": False}
    (d / "eval.json").write_text(json.dumps({"policies": [
        {"name": n, "reward_mean": i, "kl_seq_mean": i} for i, n in enumerate(names)]}))
    out = tmp_path / "r.html"
    r = run(str(d), "--out", str(out))
    assert r.returncode == 0, r.stderr
    _, _, charts = parse(out)
    fr = {s["label"]: s["points"] for s in chart(charts, "Reward\u2013KL frontier")["series"]}
    want_js = sorted([i, i] for i, n in enumerate(names) if names[n])
    want_ref = sorted([i, i] for i, n in enumerate(names) if not names[n])
    assert {k: sorted(v) for k, v in fr.items()} == {"Jensen\u2013Shannon": want_js, "reference": want_ref}


def test_an_empty_metrics_file_is_named(tmp_path):
    """An empty metrics.jsonl gets a warning naming it, as an empty samples or eval file does:
    alone the error said "0 warnings above"; beside a good run it was a run of 0 rows, unsaid."""
    d = tmp_path / "run"
    d.mkdir()
    (d / "metrics.jsonl").write_text("")
    r = run(str(d), "--out", str(tmp_path / "r.html"))
    assert r.returncode == 1 and "(1 warning above)" in r.stderr, r.stderr
    assert f"warning: {d}/metrics.jsonl: no metrics found (the file is empty)" in r.stderr, r.stderr
    ok = tmp_path / "ok"
    ok.mkdir()
    write_jsonl(ok / "metrics.jsonl", [{"step": 1, "loss": 1}])
    r = run(str(d), str(ok), "--out", str(tmp_path / "r.html"))
    assert r.returncode == 0 and f"warning: {d}/metrics.jsonl: no metrics found" in r.stderr, r.stderr


def test_rows_without_step_are_drawn_at_their_line_number(tmp_path):
    """docs/report.md: x is `step`, else the line number; a blank or skipped line before a
    step-less row moved it left (x counted the rows that parsed)."""
    d = tmp_path / "r"
    d.mkdir()
    lines = ['{"loss": 1}', '', '{"loss": 2}', '[1, 2]', '{"loss": 4}', '{"step": 9, "loss": 8}']
    (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "r.html"
    r = run(str(d), "--out", str(out))
    assert r.returncode == 0, r.stderr
    _, _, charts = parse(out)
    want = []
    for no, t in enumerate(lines, 1):
        o = json.loads(t) if t else None
        if isinstance(o, dict):
            want.append([o.get("step", no), o["loss"]])
    assert chart(charts, "Training loss")["series"][0]["points"] == want == [[1, 1], [3, 2], [5, 4], [9, 8]]


def test_a_lab_file_given_twice_adds_its_rows_once(tmp_path):
    """--lab F --lab ./F drew every point twice (the read-once rule covered eval and samples
    files only); the second is a warning and the panel holds the CSV's rows once (Python's
    csv is the reference)."""
    lab = tmp_path / "lab.csv"
    lab.write_text("divergence,beta,expected_reward,kl\nrkl,0.1,1.5,0.3\nrkl,1,1.0,0.2\nfkl,0.1,2.5,0.4\n")
    want = {}
    for row in csv.DictReader(open(lab)):
        label = {"rkl": "reverse KL (DPO)", "fkl": "forward KL"}[row["divergence"]]
        want.setdefault(label, []).append([float(row["kl"]), float(row["expected_reward"])])
    out = tmp_path / "r.html"
    r = subprocess.run([FDPO, "report", "--lab", "lab.csv", "--lab", "./lab.csv", "--out", str(out)],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("./lab.csv: the same file as lab.csv, read already; not read again") == 1, r.stderr
    _, _, charts = parse(out)
    fr = {s["label"]: s["points"] for s in chart(charts, "Lab: exact reward\u2013KL frontier")["series"]}
    assert fr == {k: sorted(v) for k, v in want.items()}, fr


def test_a_lab_file_given_to_lab_and_lab_frontier_is_one_table_on_the_frontier(tmp_path):
    """The same CSV to --lab and --lab-frontier was two tables: the dashed exact line on the
    evaluation's reward-KL panel and a second copy in the lab section. It is one table, drawn
    on the frontier (as with --lab-frontier alone)."""
    runs, ref, lab = make_fixture(str(tmp_path))
    out = str(tmp_path / "r.html")
    r = run(*runs, "--eval", ref, "--lab", lab, "--lab-frontier", lab, "--out", out)
    assert r.returncode == 0, r.stderr
    _, _, charts = parse(out)
    series = {s["label"]: s for s in chart(charts, "Reward\u2013KL frontier")["series"]}
    rows = [l.split(",") for l in open(lab).read().split("\n")[1:] if l]
    want = sorted((float(x[4]), float(x[2])) for x in rows if x[0] == "fkl")
    assert flat(series["forward KL exact (lab)"]["points"]) == pytest.approx(flat(want))
    assert not [c for c in charts if c["title"] == "Lab: exact reward\u2013KL frontier"]
    assert len(chart(charts, "Lab: entropy of the optimum vs \u03b2")["series"]) == len({x[0] for x in rows})


def test_a_proxy_eval_file_given_twice_is_read_once(tmp_path):
    """--proxy-eval P --proxy-eval ./P doubled the over-optimisation panel's points; the
    proxy files are read once among themselves (and may repeat a gold file's policies)."""
    names = ["runs/base", "online/round-0", "online/round-1"]
    kl = [0.0, 1.5, 3.25]
    gold = [(0.02, 0.1), (0.05, 0.12), (0.06, 0.13)]
    proxy = [(-0.5, 2.0), (1.0, 2.5), (2.5, 2.2)]

    def pol(n, k, m, sd):
        return {"name": n, "kl_seq_mean": k, "reward_mean": m, "reward_std": sd, "reward_se": 0.01}
    (tmp_path / "gold.json").write_text(json.dumps({"policies": [pol(n, k, *v) for n, k, v in zip(names, kl, gold)]}))
    (tmp_path / "proxy.json").write_text(json.dumps({"policies": [pol(n, k, *v) for n, k, v in zip(names, kl, proxy)]}))
    out = tmp_path / "r.html"
    r = subprocess.run([FDPO, "report", "--eval", "gold.json", "--proxy-eval", "proxy.json", "--proxy-eval",
                        "./proxy.json", "--out", str(out)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("./proxy.json: the same file as proxy.json, read already; not read again") == 1, r.stderr
    _, _, charts = parse(str(out))
    s = {x["label"]: x for x in chart(charts, "Reward over-optimisation: gold vs proxy reward")["series"]}
    want = [(k, (m - proxy[0][0]) / proxy[0][1]) for k, (m, _) in zip(kl, proxy)]
    assert flat(s["proxy reward"]["points"]) == pytest.approx(flat(want), rel=1e-12, abs=1e-12)
    # the gold file given as a proxy file too is still read as one (its own read-once set)
    r = subprocess.run([FDPO, "report", "--eval", "gold.json", "--proxy-eval", "gold.json", "--out", str(out)],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0 and "read already" not in r.stderr, r.stderr
    s = {x["label"]: x for x in chart(parse(str(out))[2], "Reward over-optimisation: gold vs proxy reward")["series"]}
    assert flat(s["proxy reward"]["points"]) == pytest.approx(flat(s["gold reward"]["points"]))


def test_the_frontier_panel_draws_every_divergence(tmp_path):
    """The reward-KL panel kept the first 64 divergences and dropped the rest without a word
    (a fixed array); 70 alpha-divergences, two policies each, are 70 lines."""
    pols = []
    for k in range(70):
        a = f"alpha:{(k + 1) / 100:g}"
        for j in range(2):
            pols.append({"name": f"runs/{a}-b{j}", "divergence": a, "beta": 0.1 + j,
                         "kl_seq_mean": 1.0 + j + k / 100, "reward_mean": 0.1 * j + k / 1000})
    (tmp_path / "e.json").write_text(json.dumps({"policies": pols}))
    out = tmp_path / "r.html"
    r = run("--eval", str(tmp_path / "e.json"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    series = chart(parse(str(out))[2], "Reward\u2013KL frontier")["series"]
    assert len(series) == 70, len(series)
    want = sorted(sorted([p["kl_seq_mean"], p["reward_mean"]] for p in pols if p["divergence"] == d)
                  for d in {p["divergence"] for p in pols})
    got = sorted(s["points"] for s in series)
    assert [flat(g) for g in got] == [pytest.approx(flat(w), rel=1e-12) for w in want]


def test_a_lab_table_of_many_lines_is_grouped_as_python_groups_it(tmp_path):
    """A lab table's rows were grouped into lines by scanning the groups found so far for each
    row and every row for each group (quadratic in the rows); the grouping is now hashed. The
    lines must stay what they were: one per (divergence, noise) in first-seen order, noise equal
    by value (0 and -0.0 one line), each line's points sorted by beta, the n-th line of a
    divergence with the n-th dash pattern. Enumerated here in Python."""
    rnd = random.Random(5)
    divs = ["rkl", "fkl", "js"]
    noises = ["0", "-0.0", "0.25"] + [repr(0.001 * k) for k in range(1, 120)]
    rows = []
    for _ in range(1500):
        rows.append((rnd.choice(divs), rnd.choice(noises), rnd.choice([0.01, 0.1, 0.5, 1.0, 3.0]), rnd.random()))
    gap = tmp_path / "gap.csv"
    with open(gap, "w") as f:
        f.write("noise,divergence,beta,reward_gap,objective_gap\n")
        for d, n, b, y in rows:
            f.write(f"{n},{d},{b},{y},{y / 2}\n")
    title = {"rkl": "reverse KL (DPO)", "fkl": "forward KL", "js": "Jensen\u2013Shannon"}
    order, pts = [], {}
    for d, n, b, y in rows:
        key = (d, float(n))
        if key not in pts:
            order.append(key)
            pts[key] = []
        pts[key].append((b, y))
    out = tmp_path / "r.html"
    r = run("--lab", str(gap), "--out", str(out))
    assert r.returncode == 0, r.stderr
    _, _, charts = parse(out)
    series = chart(charts, "Lab: true-reward gap from reward error vs \u03b2")["series"]
    assert len(series) == len(order)
    for s, key in zip(series, order):
        d, nv = key
        assert s["label"].startswith(title[d] + ", noise="), s["label"]
        assert float(s["label"].split("noise=")[1]) == nv
        assert s["dash"] == [k[0] for k in order[:order.index(key)]].count(d)
        want = sorted(pts[key], key=lambda p: p[0])
        assert flat(sorted(map(tuple, s["points"]))) == pytest.approx(flat(sorted(want)), rel=1e-15, abs=0)
        assert [p[0] for p in s["points"]] == [p[0] for p in want]


def test_two_gold_eval_files_with_the_reference_and_policies_of_unknown_divergence(tmp_path):
    """Two gold --eval files that both evaluated the reference: its two rows and points were
    both 'ref', nothing telling them apart, and the over-optimisation panel measured the second
    file's policies against the first file's reference. Now a name evaluated by several files
    says its file ('ref (e2.json)'), and each gold gain is over its own file's reference. The
    frontier's grey 'reference / unknown' series put the reference together with trained
    policies of no known divergence (an online round directory without settings): they are
    'reference' (named so, as the settings rule reads names) and 'divergence unknown', points
    only. Expected values computed here from the files."""
    def pol(n, k, m, sd):
        return {"name": n, "kl_seq_mean": k, "reward_mean": m, "reward_std": sd, "reward_se": 0.01}
    e1 = {"policies": [pol("online/round-1", 1.0, 0.5, 0.2), pol("ref", 0.0, 0.2, 0.1)]}
    e2 = {"policies": [pol("online/round-2", 2.0, 0.7, 0.3), pol("ref", 0.0, 0.3, 0.4)]}
    proxy = {"policies": [pol("ref", 0.0, 1.0, 0.5), pol("online/round-1", 1.1, 2.0, 0.5),
                          pol("online/round-2", 2.2, 3.0, 0.5)]}
    for name, doc in (("e1.json", e1), ("e2.json", e2), ("p.json", proxy)):
        (tmp_path / name).write_text(json.dumps(doc))
    out = tmp_path / "r.html"
    r = subprocess.run([FDPO, "report", "--eval", "e1.json", "--eval", "e2.json", "--proxy-eval", "p.json",
                        "--out", str(out)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    text, _, charts = parse(out)
    fr = {s["label"]: s for s in chart(charts, "Reward\u2013KL frontier")["series"]}
    assert set(fr) == {"reference", "divergence unknown"}
    assert sorted(map(tuple, fr["reference"]["points"])) == [(0, 0.2), (0, 0.3)]
    assert sorted(map(tuple, fr["divergence unknown"]["points"])) == [(1, 0.5), (2, 0.7)]
    assert not fr["divergence unknown"]["line"] and not fr["reference"]["line"]
    assert sorted(t.split(":")[0] for t in fr["reference"]["tips"]) == ["ref (e1.json)", "ref (e2.json)"]
    assert sorted(t.split(":")[0] for t in fr["divergence unknown"]["tips"]) == ["online/round-1", "online/round-2"]
    rows = re.findall(r'<tr><td><span class="swatch"[^>]*></span>([^<]*)</td>', text)
    assert rows[:4] == ["online/round-1", "ref (e1.json)", "online/round-2", "ref (e2.json)"], rows
    ov = {s["label"]: s for s in chart(charts, "Reward over-optimisation: gold vs proxy reward")["series"]}
    own_ref = {"e1.json": (0.2, 0.1), "e2.json": (0.3, 0.4)}
    gold = {"online/round-1": (1.0, 0.5, "e1.json"), "online/round-2": (2.0, 0.7, "e2.json")}
    want = [(0.0, 0.0)] + [(k, (m - own_ref[f][0]) / own_ref[f][1]) for k, m, f in gold.values()]
    assert flat(ov["gold reward"]["points"]) == pytest.approx(flat(want), rel=1e-12, abs=1e-12)


def test_a_run_directory_or_frontier_table_given_twice_is_read_once(tmp_path):
    """RUN_DIR ./RUN_DIR/ (or RUN_DIR and RUN_DIR/metrics.jsonl) were two runs of the same rows:
    the runs table listed it twice and every curve was drawn twice; --lab-frontier F
    --lab-frontier ./F was read once without a word. Each repeat is now a warning naming the
    first spelling, and the rows are the file's once (Python's json is the reference)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rows = [{"step": s, "loss": 2.0 / s} for s in range(1, 6)]
    write_jsonl(run_dir / "metrics.jsonl", rows)
    lab = tmp_path / "fr.csv"
    lab.write_text("divergence,beta,expected_reward,kl\nrkl,0.1,1.5,0.3\nrkl,1,1.0,0.2\n")
    (tmp_path / "ev.json").write_text(json.dumps({"policies": [{"name": "p", "reward_mean": 1, "kl_seq_mean": 0.5}]}))
    out = tmp_path / "r.html"
    r = subprocess.run([FDPO, "report", "run", "./run/", "run/metrics.jsonl", "--eval", "ev.json",
                        "--lab-frontier", "fr.csv", "--lab-frontier", "./fr.csv", "--out", str(out)],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "./run/: the same directory as run, read already; not read again" in r.stderr, r.stderr
    assert "run/metrics.jsonl: the same file as run/metrics.jsonl, read already; not read again" in r.stderr
    assert "./fr.csv: the same file as fr.csv, read already; not read again" in r.stderr
    assert "(1 run, 1 policy, 1 lab table" in r.stderr
    text, _, charts = parse(out)
    loss = chart(charts, "Training loss")["series"]
    assert len(loss) == 1 and loss[0]["points"] == [[x["step"], x["loss"]] for x in rows]
    runs_table = text[text.index('id="runs-table"'):]
    runs_table = runs_table[:runs_table.index("</table>")]
    assert runs_table.count("<tr><td>") == 1, runs_table
