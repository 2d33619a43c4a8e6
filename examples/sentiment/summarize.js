#!/usr/bin/env node
// Prints the demo's headline table from `fdpo eval --out` JSON: per policy, gold reward
// (mean ± standard error), sequence-level KL to the base model, predictive entropy,
// distinct-2, EAD-2 and self-BLEU-4 over the k samples of each prompt (per-input), and
// mean completion length in tokens.   usage: node summarize.js EVAL_JSON
'use strict';
const fs = require('fs');
const path = require('path');
const file = process.argv[2];
if (!file) { process.stderr.write('usage: node summarize.js EVAL_JSON\n'); process.exit(2); }
let doc;
try { doc = JSON.parse(fs.readFileSync(file, 'utf8')); } catch (e) {
  process.stderr.write(`summarize: ${file}: ${e.message}\n`); process.exit(1);
}
const cols = [
  ['policy', (p) => path.basename(p.name)],
  ['reward', (p) => `${p.reward_mean.toFixed(4)} ± ${p.reward_se.toFixed(4)}`],
  ['KL(seq)', (p) => p.kl_seq_mean.toFixed(3)],
  ['entropy', (p) => p.entropy.toFixed(3)],
  ['distinct-2', (p) => p.distinct_2_per_input.toFixed(3)],
  ['EAD-2', (p) => p.ead_2_per_input.toFixed(3)],
  ['self-BLEU-4', (p) => p.self_bleu_4_per_input.toFixed(3)],
  ['len(tok)', (p) => p.len_tokens_mean.toFixed(1)],
];
const rows = doc.policies.map((p) => cols.map(([, f]) => f(p)));
const width = cols.map(([h], i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
const line = (cells) => cells.map((c, i) => (i === 0 ? c.padEnd(width[i]) : c.padStart(width[i]))).join('  ');
console.log(line(cols.map(([h]) => h)));
for (const r of rows) console.log(line(r));
