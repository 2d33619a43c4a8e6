"""fdpo report --notes FILE: the summary section rendered from a Markdown subset. The page is
parsed with Python's html.parser (an independent HTML reader) and the text of each element
compared with what the notes say; the notes' own markup characters must come out escaped."""
import json
import os
import subprocess
from html.parser import HTMLParser

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
FDPO = os.environ.get("FDPO_BIN", os.path.join(REPO, "build/fdpo"))


class Summary(HTMLParser):
    """(tag, text) of the elements inside <section id="summary">."""
    def __init__(self):
        super().__init__()
        self.inside = 0
        self.items, self.stack = [], []

    def handle_starttag(self, tag, attrs):
        if tag == "section" and ("id", "summary") in attrs:
            self.inside = 1
        elif self.inside and tag in ("h2", "h3", "h4", "p", "li", "pre", "strong", "code"):
            self.stack.append([tag, ""])

    def handle_endtag(self, tag):
        if tag == "section" and self.inside:
            self.inside = 0
        elif self.inside and self.stack and self.stack[-1][0] == tag:
            t, text = self.stack.pop()
            self.items.append((t, text))
            if self.stack:
                self.stack[-1][1] += text

    def handle_data(self, data):
        if self.inside and self.stack:
            self.stack[-1][1] += data


def render_notes(tmp_path, notes):
    """The page fdpo report writes for notes beside a one-policy eval."""
    (tmp_path / "n.md").write_text(notes)
    (tmp_path / "e.json").write_text(json.dumps({"policies": [{"name": "p", "reward_mean": 0.1, "kl_seq_mean": 0.2}]}))
    r = subprocess.run([FDPO, "report", "--eval", tmp_path / "e.json", "--notes", tmp_path / "n.md",
                        "--out", tmp_path / "r.html"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return (tmp_path / "r.html").read_text()


def test_notes_render(tmp_path):
    notes = ("# Title <b>\n\nA paragraph with **bold** and `x < y`\ncontinued.\n\n## Findings\n"
             "- first & item\n- second\n\n```\ncol1  col2 <raw>\n```\n### small\n")
    page = render_notes(tmp_path, notes)
    assert "<b>" not in page.split('id="summary"')[1].split("</section>")[0]  # escaped, not markup
    p = Summary()
    p.feed(page)
    assert p.items == [
        ("h2", "Title <b>"),
        ("strong", "bold"), ("code", "x < y"), ("p", "A paragraph with bold and x < y\ncontinued."),
        ("h3", "Findings"),
        ("li", "first & item"), ("li", "second"),
        ("pre", "col1  col2 <raw>\n"),
        ("h4", "small"),
    ], p.items
    assert 'href="#summary"' in page


def test_notes_missing_file_is_an_error(tmp_path):
    (tmp_path / "e.json").write_text(json.dumps({"policies": [{"name": "p", "reward_mean": 0.1}]}))
    r = subprocess.run([FDPO, "report", "--eval", tmp_path / "e.json", "--notes", tmp_path / "nope.md",
                        "--out", tmp_path / "r.html"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "--notes" in r.stderr and "nope.md" in r.stderr, r.stderr
    assert not (tmp_path / "r.html").exists()


def test_notes_nested_list_items(tmp_path):
    """The sentiment demo's conclusion (examples/sentiment/summarize.js) puts "  - " sub-items
    under a bullet: one level of nesting is a <ul> inside that <li> (they became one run-on
    paragraph holding the literal "  - ")."""
    notes = ("- Most reward: **rkl** 0.1\n  - pairs that differ: none.\n  - pairs within: rkl vs js.\n"
             "- Most diversity: js\n  - one more\nAfter the list.\n")
    page = render_notes(tmp_path, notes)

    class Tree(HTMLParser):
        """The summary's lists as [text, [sub-list, ...]] per item, and its paragraphs."""
        def __init__(self):
            super().__init__()
            self.inside, self.lists, self.root, self.paras, self.in_p = 0, [], [], [], 0

        def handle_starttag(self, tag, attrs):
            if tag == "section" and ("id", "summary") in attrs:
                self.inside = 1
            elif self.inside and tag == "ul":
                new = []
                (self.lists[-1][-1][1] if self.lists else self.root).append(new)
                self.lists.append(new)
            elif self.inside and tag == "li":
                self.lists[-1].append(["", []])
            elif self.inside and tag == "p":
                self.paras.append("")
                self.in_p = 1

        def handle_endtag(self, tag):
            if tag == "section":
                self.inside = 0
            elif self.inside and tag == "ul":
                self.lists.pop()
            elif tag == "p":
                self.in_p = 0

        def handle_data(self, data):
            if self.inside and self.in_p:
                self.paras[-1] += data
            elif self.inside and self.lists and self.lists[-1]:
                self.lists[-1][-1][0] += data.replace("\n", "")   # the page's own line breaks

    t = Tree()
    t.feed(page)
    assert t.root == [[["Most reward: rkl 0.1", [[["pairs that differ: none.", []], ["pairs within: rkl vs js.", []]]]],
                       ["Most diversity: js", [[["one more", []]]]]]], t.root
    assert [p.strip() for p in t.paras] == ["After the list."], t.paras
    assert "  - " not in page.split('id="summary"')[1].split("</section>")[0]
