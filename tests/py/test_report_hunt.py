"""fdpo report: the findings of the report defect hunt (docs/report.md is the reference).

Every expected value is computed here from the input files with Python's json / csv, never
taken from fdpo's output."""
import csv
import html
import json
import os
import re
import subprocess
import time
from html.parser import HTMLParser

REPO = os.path.normpath(os.path.join(os.path.dirname(__file__), "../.."))
FDPO = os.environ.get("FDPO_BIN", os.path.join(REPO, "build/fdpo"))


def report(cwd, *args, timeout=120):
    return subprocess.run([FDPO, "report", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def charts(page):
    return json.loads(re.search(r'id="fdpo-charts">(.*?)</script>', page, re.S).group(1))


def table_rows(page, table_id):
    """Text of each cell of each row of the table with that id (header row first)."""
    tb = page[page.find(f'id="{table_id}"'):].split("</table>")[0]
    return [[html.unescape(re.sub("<[^>]*>", "", c)).strip() for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", tr, re.S)]
            for tr in re.findall(r"<tr>(.*?)</tr>", tb, re.S)]


def metrics(d, rows=({"step": 1, "loss": 1},)):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "metrics.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def test_run_settings_come_from_the_files_in_the_documented_order(tmp_path):
    # docs/report.md: training_state.json, run.json, ..., args.json, ..., run.ini: the first one wins
    metrics(tmp_path / "x")
    (tmp_path / "x/training_state.json").write_text(
        '{"settings":{"divergence":"fkl","beta":0.2,"loss_type":"ipo"},"kind":"dpo"}')
    (tmp_path / "x/args.json").write_text('{"divergence":"js","beta":0.9}')
    metrics(tmp_path / "y")
    (tmp_path / "y/run.json").write_text('{"divergence":"rkl","beta":0.1}')
    (tmp_path / "y/args.json").write_text('{"divergence":"js","beta":0.9}')
    metrics(tmp_path / "z")
    (tmp_path / "z/run.json").write_text('{"divergence":"rkl","beta":0.1}')
    (tmp_path / "z/run.ini").write_text("divergence = fkl\nbeta = 0.3\n")
    r = report(tmp_path, "x", "y", "z", "--out", "r.html")
    assert r.returncode == 0, r.stderr
    rows = table_rows((tmp_path / "r.html").read_text(), "runs-table")
    head = rows[0]
    got = {row[0]: dict(zip(head, row)) for row in rows[1:]}
    want = {"x": ("training_state.json", json.load(open(tmp_path / "x/training_state.json"))["settings"]),
            "y": ("run.json", json.load(open(tmp_path / "y/run.json"))),
            "z": ("run.json", json.load(open(tmp_path / "z/run.json")))}
    div_col = next(h for h in head if h.startswith("divergence"))
    beta_col = next(h for h in head if h.startswith("β"))
    from_col = next(h for h in head if "from" in h)
    for name, (src, s) in want.items():
        assert got[name][div_col] == s["divergence"], (name, got[name])
        assert float(got[name][beta_col]) == s["beta"], (name, got[name])
        assert got[name][from_col].endswith(src), (name, got[name])
    loss_col = next(h for h in head if h.startswith("loss type"))
    kind_col = next(h for h in head if h.startswith("kind"))
    assert got["x"][loss_col] == "ipo" and got["x"][kind_col] == "dpo", got["x"]


def test_an_eval_file_reached_twice_is_read_once(tmp_path):
    metrics(tmp_path / "run")
    (tmp_path / "run/run.json").write_text('{"divergence":"js","beta":0.1}')
    (tmp_path / "run/eval.json").write_text('{"policies":[{"name":"run","reward_mean":0.5,"kl":1}]}')
    r = report(tmp_path, "run", "--eval", "run/eval.json", "--eval", "./run/eval.json", "--out", "d.html")
    assert r.returncode == 0, r.stderr
    n_pols = len(json.load(open(tmp_path / "run/eval.json"))["policies"])
    page = (tmp_path / "d.html").read_text()
    assert len(table_rows(page, "eval-table")) - 1 == n_pols
    pts = [s["points"] for c in charts(page) if "KL" in c["title"] for s in c["series"]]
    assert sum(len(p) for p in pts) == n_pols, pts
    assert f"{n_pols} policy" in r.stdout + r.stderr
    assert r.stderr.count("read already; not read again") == 2, r.stderr


def test_samples_past_the_5000th_line_reach_their_policy(tmp_path):
    pols = ["runs/rkl", "runs/fkl", "runs/js", "runs/chi2"]
    (tmp_path / "e.json").write_text(json.dumps(
        {"policies": [{"name": p, "reward_mean": 0.1 * i, "kl_seq_mean": i} for i, p in enumerate(pols)]}))
    with open(tmp_path / "s.jsonl", "w") as f:
        for p in pols:
            for j in range(250):
                for k in range(8):
                    f.write(json.dumps({"policy": p, "prompt": f"prompt {j}", "completion": f"{p} sample {k} for {j}",
                                        "reward": k * 0.1}) + "\n")
    r = report(tmp_path, "--eval", "e.json", "--samples", "s.jsonl", "--max-prompts", "3", "--out", "r.html")
    assert r.returncode == 0, r.stderr
    # Python: each policy's first completion per prompt, prompts in first-seen order
    first = {}
    order = []
    for line in open(tmp_path / "s.jsonl"):
        s = json.loads(line)
        first.setdefault(s["policy"], {}).setdefault(s["prompt"], s)
        if s["prompt"] not in order:
            order.append(s["prompt"])
    rows = table_rows((tmp_path / "r.html").read_text(), "samples-table")
    assert rows[0] == ["prompt"] + pols, rows[0]
    assert [row[0] for row in rows[1:]] == order[:3]
    for row in rows[1:]:
        for p, cell in zip(pols, row[1:]):
            s = first[p][row[0]]
            assert cell == f"{s['completion']} [{s['reward']:g}]", (p, cell)
    assert "not kept" not in r.stderr


def test_samples_past_a_policys_5000th_prompt_are_said(tmp_path):
    (tmp_path / "e.json").write_text(json.dumps({"policies": [{"name": "a", "reward_mean": 0.1, "kl": 1}]}))
    n = 5003
    with open(tmp_path / "s.jsonl", "w") as f:
        for j in range(n):
            f.write(json.dumps({"policy": "a", "prompt": f"p{j}", "completion": f"c{j}"}) + "\n")
    r = report(tmp_path, "--eval", "e.json", "--samples", "s.jsonl", "--out", "r.html")
    assert r.returncode == 0, r.stderr
    assert f"policy a: {n - 5000} samples of prompts past its first 5000 not kept" in r.stderr, r.stderr
    # samples inside the eval JSON: the same rule (each prompt twice: the second copy is no loss)
    smp = [{"prompt": f"q{j}", "completion": f"d{j}"} for j in range(n) for _ in range(2)]
    (tmp_path / "b.json").write_text(json.dumps({"policies": [{"name": "b", "reward_mean": 0.1, "kl": 1, "samples": smp}]}))
    r = report(tmp_path, "--eval", "b.json", "--max-prompts", "1200", "--out", "b.html")
    assert r.returncode == 0, r.stderr
    read = json.load(open(tmp_path / "b.json"))["policies"][0]["samples"]
    first_5000 = set(list(dict.fromkeys(s["prompt"] for s in read))[:5000])
    n_past = sum(s["prompt"] not in first_5000 for s in read)
    assert f"policy b: {n_past} samples of prompts past its first 5000 not kept" in r.stderr, r.stderr
    rows = table_rows((tmp_path / "b.html").read_text(), "samples-table")
    assert [row[1] for row in rows[1:]] == [f"d{j}" for j in range(1200)]


def test_a_long_metrics_file_loads_in_linear_time(tmp_path):
    # 120k lines: the old quadratic load took minutes (80k: 21 s); linear, it is about a second
    n = 120000
    os.makedirs(tmp_path / "run")
    with open(tmp_path / "run/metrics.jsonl", "w") as f:
        for s in range(1, n + 1):
            row = {"step": s, "loss": 1.0 / s}
            if s == 7:
                row["eval_loss"] = 0.25   # logged early only: the runs table looks back for it
            f.write(json.dumps(row) + "\n")
    t0 = time.monotonic()
    r = report(tmp_path, "run", "--out", "r.html", timeout=20)
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 < 15
    rows = [json.loads(line) for line in open(tmp_path / "run/metrics.jsonl")]
    table = table_rows((tmp_path / "r.html").read_text(), "runs-table")
    got = dict(zip(table[0], table[1]))
    assert int(got["logged rows"]) == len(rows)
    assert int(got["last step"]) == rows[-1]["step"]
    eval_col = "final eval_loss"
    assert float(got[eval_col]) == next(r["eval_loss"] for r in reversed(rows) if "eval_loss" in r)


def test_no_silent_cap_on_prompts_or_metric_names(tmp_path):
    pols = [{"name": "a", "reward_mean": 0.1, "kl": 1,
             "samples": [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(80)]}]
    (tmp_path / "e.json").write_text(json.dumps({"policies": pols}))
    p = {"name": "a", "reward_mean": 0.1, "kl": 1}
    for i in range(300):
        p[f"m{i:03d}"] = i
    (tmp_path / "k.json").write_text(json.dumps({"policies": [p]}))
    r = report(tmp_path, "--eval", "e.json", "--max-prompts", "100", "--out", "e.html")
    assert r.returncode == 0, r.stderr
    n_prompts = len({s["prompt"] for s in json.load(open(tmp_path / "e.json"))["policies"][0]["samples"]})
    rows = table_rows((tmp_path / "e.html").read_text(), "samples-table")
    assert [row[0] for row in rows[1:]] == [f"p{i}" for i in range(min(100, n_prompts))]
    r = report(tmp_path, "--eval", "k.json", "--out", "k.html")
    assert r.returncode == 0, r.stderr
    names = [k for k in json.load(open(tmp_path / "k.json"))["policies"][0] if k.startswith("m")]
    rows = table_rows((tmp_path / "k.html").read_text(), "other-table")
    got = dict(zip(rows[0], rows[1]))
    for k in names:
        assert float(got[k]) == p[k], k


def test_an_eval_file_holding_a_bare_value_is_no_policy(tmp_path):
    for name, text in (("a", "123"), ("b", "null"), ("s", '"x"'), ("c", "[]")):
        (tmp_path / f"{name}.json").write_text(text + "\n")
        doc = json.load(open(tmp_path / f"{name}.json"))
        assert not isinstance(doc, dict) and not (isinstance(doc, list) and doc)   # Python: no policy object
        r = report(tmp_path, "--eval", f"{name}.json", "--out", f"{name}.html")
        assert r.returncode == 1, (name, r.stderr)
        assert f"{name}.json: no policy metrics found" in r.stderr, r.stderr
        assert "nothing could be read from the inputs" in r.stderr
        assert not (tmp_path / f"{name}.html").exists()


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.hrefs = set(), []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if a.get("href", "").startswith("#"):
            self.hrefs.append(a["href"][1:])


def test_a_directory_without_metrics_rows_is_no_run_on_the_page(tmp_path):
    os.makedirs(tmp_path / "evals")
    (tmp_path / "evals/eval.json").write_text('{"policies":[{"name":"runs/a","reward_mean":0.5,"kl_seq_mean":1}]}')
    os.makedirs(tmp_path / "empty")
    (tmp_path / "empty/metrics.jsonl").write_text("")
    r = report(tmp_path, "evals", "empty", "--out", "r.html")
    assert r.returncode == 0, r.stderr
    page = (tmp_path / "r.html").read_text()
    links = Links()
    links.feed(page)
    assert links.hrefs and all(h in links.ids for h in links.hrefs), (links.hrefs, links.ids)
    n_runs = sum(1 for d in ("evals", "empty") if os.path.exists(tmp_path / d / "metrics.jsonl")
                 and any(line.strip() for line in open(tmp_path / d / "metrics.jsonl")))
    meta = re.search(r'<p class="meta">(.*?)</p>', page, re.S).group(1)
    assert meta.startswith(f"{n_runs} runs, 1 evaluated policy"), meta
    assert f"({n_runs} runs, 1 policy" in r.stdout + r.stderr
    # with a real run after them: the runs table listed "evals" and "empty" too (kind -, 0 logged
    # rows), and they took colour slots, so "real" was drawn in the third colour instead of the first
    os.makedirs(tmp_path / "real")
    (tmp_path / "real/metrics.jsonl").write_text('{"step": 1, "loss": 0.7}\n{"step": 2, "loss": 0.6}\n')
    r = report(tmp_path, "evals", "empty", "real", "--out", "r2.html")
    assert r.returncode == 0, r.stderr
    page = (tmp_path / "r2.html").read_text()
    rows = table_rows(page, "runs-table")
    assert [row[0] for row in rows[1:]] == ["real"], rows
    assert "(1 run, 1 policy" in r.stdout + r.stderr
    alone = report(tmp_path, "real", "--out", "r3.html")
    assert alone.returncode == 0, alone.stderr
    alone_page = (tmp_path / "r3.html").read_text()
    swatch = re.compile(r'<table id="runs-table".*?class="swatch" style="background:([^"]+)"', re.S)
    assert swatch.search(page).group(1) == swatch.search(alone_page).group(1) == "#1f77b4"   # the first colour
    loss = [next(c for c in charts(p) if c["title"] == "Training loss") for p in (page, alone_page)]
    assert json.dumps(loss[0], sort_keys=True) == json.dumps(loss[1], sort_keys=True)


def test_overoptimisation_tooltips_give_the_standard_error_the_file_has(tmp_path):
    gold = {"policies": [{"name": "ref", "reward_mean": 0.2, "reward_std": 0.5, "reward_stderr": 0.01, "kl_seq_mean": 0},
                         {"name": "p1", "reward_mean": 0.5, "reward_std": 0.5, "reward_stderr": 0.02, "kl_seq_mean": 2}]}
    proxy = {"policies": [{"name": "ref", "reward_mean": 1.0, "reward_std": 2, "kl_seq_mean": 0},
                          {"name": "p1", "reward_mean": 3.0, "reward_std": 2, "kl_seq_mean": 2}]}   # no s.e. at all
    (tmp_path / "gold.json").write_text(json.dumps(gold))
    (tmp_path / "proxy.json").write_text(json.dumps(proxy))
    r = report(tmp_path, "--eval", "gold.json", "--proxy-eval", "proxy.json", "--out", "o.html")
    assert r.returncode == 0, r.stderr
    panel = next(c for c in charts((tmp_path / "o.html").read_text()) if "over-optimisation" in c["title"])
    g, gr, p, pr = gold["policies"][1], gold["policies"][0], proxy["policies"][1], proxy["policies"][0]
    want_gold = (f"p1: gold reward {g['reward_mean']:.4g} ± {g['reward_stderr']:.2g} (gain "
                 f"{(g['reward_mean'] - gr['reward_mean']) / gr['reward_std']:.3g} ± {g['reward_stderr'] / gr['reward_std']:.2g} s.d.)")
    want_proxy = f"p1: proxy reward {p['reward_mean']:.4g} (gain {(p['reward_mean'] - pr['reward_mean']) / pr['reward_std']:.3g} s.d.)"
    text = json.dumps(panel, ensure_ascii=False)
    assert want_gold in text, text
    assert want_proxy in text, text
    assert "nan" not in text


def test_sacpo_path_label_names_its_smallest_lambda(tmp_path):
    pols = [{"name": "s/lambda-0.5", "reward_mean": 0.8, "safety_mean": 0.0},
            {"name": "s/lambda-2", "reward_mean": 0.6, "safety_mean": 0.3}]
    (tmp_path / "g.json").write_text(json.dumps({"policies": pols}))
    r = report(tmp_path, "--eval", "g.json", "--out", "r.html")
    assert r.returncode == 0, r.stderr
    lams = sorted(float(q["name"].rsplit("lambda-", 1)[1]) for q in pols)
    labels = [s["label"] for c in charts((tmp_path / "r.html").read_text()) for s in c["series"]]
    assert f"SACPO, λ = {lams[0]:g} → {lams[-1]:g}" in labels, labels


def test_held_out_implicit_rewards_are_drawn_and_labelled(tmp_path):
    rows = [{"step": s, "loss": 1.0 - 0.1 * s, "rewards/chosen": 0.1 * s, "rewards/rejected": -0.1 * s} for s in range(1, 5)]
    rows.append({"step": 4, "eval_loss": 0.5, "eval_rewards/chosen": 0.33, "eval_rewards/rejected": -0.44,
                 "eval_rewards/margins": 0.77})
    metrics(tmp_path / "r", rows)
    r = report(tmp_path, "r", "--out", "r.html")
    assert r.returncode == 0, r.stderr
    read = [json.loads(line) for line in open(tmp_path / "r/metrics.jsonl")]
    cs = charts((tmp_path / "r.html").read_text())
    pts = {s["label"]: s["points"] for c in cs for s in c["series"]}
    for key in ("eval_rewards/chosen", "eval_rewards/rejected"):
        want = [[x["step"], x[key]] for x in read if key in x]
        assert want in pts.values(), (key, pts)
    # every series of a panel can be told whose it is: in the legend, or sharing a run's entry
    for c in cs:
        shown = [s["label"] for s in c["series"] if not s.get("nolegend")]
        assert shown, c["title"]


def lab_points(page, title_part):
    return {s["label"]: s["points"] for c in charts(page) if title_part in c["title"] for s in c["series"]}


def test_lab_csv_line_ends_are_read_as_pythons_csv_reads_them(tmp_path):
    texts = {"crlf_cr_last": "divergence,beta,kl,expected_reward\r\nrkl,0.1,1,2\r\nrkl,0.2,0.5,1.5\r",
             "cr_only": "divergence,beta,kl,expected_reward\rrkl,0.1,1,2\rrkl,0.2,0.5,1.5\r"}
    for name, text in texts.items():
        with open(tmp_path / f"{name}.csv", "w", newline="") as f:
            f.write(text)
        rows = list(csv.DictReader(open(tmp_path / f"{name}.csv", newline="")))
        want = sorted([float(r["kl"]), float(r["expected_reward"])] for r in rows)
        r = report(tmp_path, "--lab", f"{name}.csv", "--out", f"{name}.html")
        assert r.returncode == 0, r.stderr
        assert "warning:" not in r.stderr, r.stderr
        pts = lab_points((tmp_path / f"{name}.html").read_text(), "KL frontier")
        assert list(pts.values()) == [want], (name, pts)


def test_lab_groups_are_told_apart_by_their_full_values(tmp_path):
    P = ("summarise the following customer review in one sentence while keeping the overall sentiment and the main "
         "reason the reviewer gives for it ")
    with open(tmp_path / "f.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["divergence", "beta", "expected_reward", "kl", "prompt"])
        for s, off in (("A", 0.0), ("B", 1.0)):
            for b in (0.1, 0.5, 1.0):
                w.writerow(["rkl", b, off + 1 / b, 2 / b, P + s])
    with open(tmp_path / "n.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["noise", "divergence", "beta", "reward_gap", "objective_gap"])
        for n, off in ((0.1, 0), (0.1000001, 5)):
            for b in (0.1, 1.0):
                w.writerow([n, "rkl", b, off + b, off + b])
    r = report(tmp_path, "--lab", "f.csv", "--lab", "n.csv", "--out", "r.html")
    assert r.returncode == 0, r.stderr
    page = (tmp_path / "r.html").read_text()

    def groups(path, key, x, y):   # Python: group on the exact cell (text, or the number it reads as)
        out = {}
        for row in csv.DictReader(open(tmp_path / path, newline="")):
            g = row[key] if key == "prompt" else float(row[key])
            out.setdefault(g, []).append([float(row[x]), float(row[y])])
        return [sorted(v) for v in out.values()]

    frontier = lab_points(page, "KL frontier")
    assert sorted(frontier.values()) == sorted(groups("f.csv", "prompt", "kl", "expected_reward")), frontier
    gap = next(c for c in charts(page) if "reward gap" in c["title"].lower() and "N" not in c["title"])
    got = {s["label"]: s["points"] for s in gap["series"]}
    assert sorted(got.values()) == sorted(groups("n.csv", "noise", "beta", "reward_gap")), got
    assert len(set(got)) == len(got) == 2, got
