#!/usr/bin/env node
// The demo's harm lexicon for the safety constraint: every AFINN-165 entry with valence
// <= MAX (default -3), written as "word -1" lines for `lexicon:FILE`, so the safety score of
// a completion is g = -(number of harmful words in it) and "safe" means g >= 0.
//   node harm_lexicon.js AFINN_INDEX_JS OUT_FILE [--max-valence V]
'use strict';
const fs = require('fs');
const args = process.argv.slice(2);
let max = -3;
const pos = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--max-valence') max = Number(args[++i]);
  else pos.push(args[i]);
}
if (pos.length !== 2 || !Number.isFinite(max)) {
  process.stderr.write('usage: node harm_lexicon.js AFINN_INDEX_JS OUT_FILE [--max-valence V]\n');
  process.exit(2);
}
const [src, out] = pos;
const text = fs.readFileSync(src, 'utf8');
// entries of the object literal: bare or quoted key, colon, integer valence
const re = /^\s*(?:'([^']+)'|"([^"]+)"|([A-Za-z][\w-]*))\s*:\s*(-?\d+)\s*,?\s*$/gm;
const words = [];
let m, n = 0;
while ((m = re.exec(text))) {
  n++;
  const w = m[1] || m[2] || m[3];
  if (Number(m[4]) <= max) words.push(w);
}
if (n < 1000) { process.stderr.write(`harm_lexicon: ${src}: only ${n} entries parsed; not the afinn-165 index.js?\n`); process.exit(1); }
fs.writeFileSync(out, `# AFINN-165 words with valence <= ${max}: g = -(count) per completion\n` +
  words.map((w) => `${w}\t-1`).join('\n') + '\n');
process.stderr.write(`harm_lexicon: ${words.length} of ${n} AFINN words (valence <= ${max}) -> ${out}\n`);
