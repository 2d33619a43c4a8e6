#!/usr/bin/env node
// The demo's own finite problem for `fdpo lab`: the base model's held-out samples (from
// `fdpo eval --samples-out`) are the response set, each with pi_ref = 1/N (they are draws
// from pi_ref, so the empirical distribution is the Monte-Carlo estimate of pi_ref on
// them), and reward = gold reward / BT_SCALE: pairs were labelled with
// P(a > b) = sigmoid((r_a - r_b) / BT_SCALE), so the reward DPO's beta is measured against is
// r / BT_SCALE, and the lab's beta then means the same thing as the experiment's.
// The samples of all prompts are pooled into one response set (the lab solves one prompt).
//   node lab_problem.js EVAL_SAMPLES_JSONL POLICY_NAME [--bt-scale S] --out CSV
'use strict';
const fs = require('fs');

const args = process.argv.slice(2);
const pos = [];
let bt = 1, out = null;
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--bt-scale') bt = Number(args[++i]);
  else if (args[i] === '--out') out = args[++i];
  else pos.push(args[i]);
}
if (pos.length !== 2 || !out || !(bt > 0)) {
  process.stderr.write('usage: node lab_problem.js EVAL_SAMPLES_JSONL POLICY_NAME [--bt-scale S>0] --out CSV\n');
  process.exit(2);
}
const [file, policy] = pos;
const rewards = [];
fs.readFileSync(file, 'utf8').split('\n').forEach((line, i) => {
  if (!line.trim()) return;
  let s;
  try { s = JSON.parse(line); } catch (e) { process.stderr.write(`lab_problem: ${file}:${i + 1}: ${e.message}\n`); process.exit(1); }
  if (s.policy !== policy) return;
  if (typeof s.reward !== 'number') { process.stderr.write(`lab_problem: ${file}:${i + 1}: no numeric "reward"\n`); process.exit(1); }
  rewards.push(s.reward / bt);
});
if (rewards.length < 2) { process.stderr.write(`lab_problem: ${file}: fewer than 2 samples of policy ${policy}\n`); process.exit(1); }
const p = 1 / rewards.length;
fs.writeFileSync(out, 'pi_ref,reward\n' + rewards.map((r) => `${p},${r}`).join('\n') + '\n');
process.stderr.write(`lab_problem: ${rewards.length} samples of ${policy} -> ${out}\n`);
