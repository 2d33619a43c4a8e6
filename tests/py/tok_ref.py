"""An independent byte-level BPE for the tests (tokenizer.json semantics): added tokens split
out first (leftmost, longest; special ones only when allowed), the pre-tokenizer's regex
through the third-party `regex` module (Python's `re` cannot run these patterns), GPT-2's
byte-to-unicode alphabet, merges by rank. Also a naive BPE trainer to make small
vocabularies, and writers for tokenizer.json / tokenizer_config.json."""
import json
import os
import unicodedata

import regex

GPT2_PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# The Split patterns of the published Llama-3 and Qwen2 tokenizer.json files.
LLAMA3_PAT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
              r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
QWEN2_PAT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
             r"""\s*[\r\n]+|\s+(?!\S)|\s+""")


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


B2U = bytes_to_unicode()


def pieces(pattern, text):
    """Split with behavior Isolated: the matches, and any text between them, in order."""
    out, pos = [], 0
    for m in regex.finditer(pattern, text):
        if m.start() > pos:
            out.append(text[pos:m.start()])
        if m.end() > m.start():
            out.append(m.group())
        pos = m.end()
    if pos < len(text):
        out.append(text[pos:])
    return out


def pieces_digits(pattern, text, individual=True):
    r"""Sequence [Digits, ByteLevel]: every \p{N} character (or run) is a piece; the regex
    splits the stretches between them."""
    out, pos = [], 0
    for m in regex.finditer(r"\p{N}" if individual else r"\p{N}+", text):
        out += pieces(pattern, text[pos:m.start()]) + [m.group()]
        pos = m.end()
    return out + pieces(pattern, text[pos:])


def train_merges(corpus, pattern, n_merges, digits=False):
    """Naive BPE training: most frequent adjacent pair, ties to the smallest pair."""
    words = {}
    for t in corpus:
        for p in (pieces_digits(pattern, t) if digits else pieces(pattern, t)):
            w = tuple(B2U[b] for b in p.encode("utf-8"))
            words[w] = words.get(w, 0) + 1
    merges = []
    for _ in range(n_merges):
        counts = {}
        for w, c in words.items():
            for a, b in zip(w, w[1:]):
                counts[(a, b)] = counts.get((a, b), 0) + c
        if not counts:
            break
        best = min(counts, key=lambda k: (-counts[k], k))
        merges.append(best)
        new = {}
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1]); i += 2
                else:
                    out.append(w[i]); i += 1
            new[tuple(out)] = new.get(tuple(out), 0) + c
        words = new
    return merges


class RefBPE:
    def __init__(self, vocab, merges, pattern, added, digits=False, nfc=False, ignore_merges_vocab=None):
        """added: [(content, special)] (ids from vocab); digits: a Digits(individual_digits)
        pre-tokenizer before the regex; nfc: the NFC normalizer (Python's unicodedata) on
        each stretch of text between added tokens, as Hugging Face's tokenizers apply it;
        ignore_merges_vocab: the model's "ignore_merges" with its model.vocab (without the
        added tokens): a pre-token that is a model.vocab entry is that one token."""
        self.vocab, self.pattern, self.digits, self.nfc = vocab, pattern, digits, nfc
        self.model_vocab = ignore_merges_vocab
        self.rank = {m: i for i, m in enumerate(merges)}
        self.added = sorted(added, key=lambda a: -len(a[0].encode("utf-8")))

    def bpe(self, piece):
        w = [B2U[b] for b in piece.encode("utf-8")]
        if self.model_vocab is not None and "".join(w) in self.model_vocab:
            return [self.model_vocab["".join(w)]]
        while len(w) > 1:
            pairs = [(self.rank.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(w, w[1:]))]
            r, _ = min(pairs)
            if r == 1 << 30:
                break
            a, b = next(p for p in self.rank if self.rank[p] == r)
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(a + b); i += 2
                else:
                    out.append(w[i]); i += 1
            w = out
        return [self.vocab[s] for s in w]

    def encode_text(self, text):
        if self.nfc:
            text = unicodedata.normalize("NFC", text)
        ps = pieces_digits(self.pattern, text) if self.digits else pieces(self.pattern, text)
        return [i for p in ps for i in self.bpe(p)]

    def encode(self, text, allow_special=False):
        ok = [a for a in self.added if allow_special or not a[1]]
        out, seg, i = [], 0, 0
        while i < len(text):
            hit = next((a for a in ok if text.startswith(a[0], i)), None)
            if hit is None:
                i += 1
                continue
            out += self.encode_text(text[seg:i]) + [self.vocab[hit[0]]]
            i += len(hit[0])
            seg = i
        return out + self.encode_text(text[seg:])


def build_vocab(merges, added):
    """Bytes (GPT-2's order of symbols), merge results, then added tokens."""
    vocab = {}
    for s in sorted(B2U.values()):
        vocab[s] = len(vocab)
    for a, b in merges:
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
    for content, _ in added:
        vocab.setdefault(content, len(vocab))
    return vocab


def pre_tokenizer(kind, pattern):
    if kind == "gpt2":
        return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    if kind == "digits":  # StarCoder / SmolLM2
        return {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}


def write_tokenizer(d, kind, pattern, vocab, merges, added, config=None, normalizer=None, **edit):
    """tokenizer.json as the Hugging Face tokenizers library writes it (model vocab without the
    added tokens; added_tokens beside it) and, when given, tokenizer_config.json."""
    os.makedirs(d, exist_ok=True)
    added_set = {a for a, _ in added}
    tj = {"version": "1.0", "truncation": None, "padding": None,
          "added_tokens": [{"id": vocab[c], "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                            "normalized": False, "special": s} for c, s in added],
          "normalizer": normalizer, "pre_tokenizer": pre_tokenizer(kind, pattern), "post_processor": None,
          "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
          "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                    "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                    "vocab": {k: v for k, v in vocab.items() if k not in added_set},
                    "merges": [f"{a} {b}" for a, b in merges]}}
    for k, v in edit.items():
        tj[k] = v
    with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False)
    if config is not None:
        with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, ensure_ascii=False)
    return d


CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's 2024 and DON'T we know it?",
    "Hello world! Hello there, hello again: the world says hello.\n\nNew paragraph here.",
    "user assistant system: what is the answer? The answer is 42, or 1234567.",
    "Ünïcödé café naïve résumé — 日本語のテキストです。 Ελληνικά και русский текст.",
    "def main():\n    return x + y  # comment\n\tindented\r\nwindows line",
    "numbers 3.14159 2.71828 1000000 and more numbers 42 42 42",
]
