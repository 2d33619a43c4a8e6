#!/usr/bin/env node
// The demo's own finite problem for `fdpo lab`: the base model's held-out samples (from
// `fdpo eval --samples-out`) are the response set, each with pi_ref = 1/N (they are draws
// from pi_ref, so the empirical distribution is the Monte-Carlo estimate of pi_ref on
// them), and reward = gold reward / BT_SCALE: pairs were labelled with
// P(a > b) = sigmoid((r_a - r_b) / BT_SCALE), so the reward DPO's beta is measured against is
// r / BT_SCALE, and the lab's beta then means the same thing as the experiment's.
// The samples of all prompts are pooled into one response set (the lab solves one prompt).
//   node lab_problem.js EVAL_SAMPLES_JSONL POLICY_NAME [--bt-scale S] --out CSV
// --to-gold: the way back, for drawing the lab on the measured axes (`fdpo report
// --lab-frontier`): a `fdpo lab frontier` table of this problem with expected_reward
// multiplied by BT_SCALE (gold reward units again); beta, KL and the rest unchanged.
//   node lab_problem.js --to-gold FRONTIER_CSV --bt-scale S --out CSV
'use strict';
const fs = require('fs');

const args = process.argv.slice(2);
const pos = [];
let bt = 1, out = null, toGold = false;
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--bt-scale') bt = Number(args[++i]);
  else if (args[i] === '--out') out = args[++i];
  else if (args[i] === '--to-gold') toGold = true;
  else pos.push(args[i]);
}
const die = (msg) => { process.stderr.write(`lab_problem: ${msg}\n`); process.exit(1); };
if (pos.length !== (toGold ? 1 : 2) || !out || !(bt > 0)) {
  process.stderr.write('usage: node lab_problem.js EVAL_SAMPLES_JSONL POLICY_NAME [--bt-scale S>0] --out CSV\n' +
                       '       node lab_problem.js --to-gold FRONTIER_CSV --bt-scale S>0 --out CSV\n');
  process.exit(2);
}
if (toGold) {
  const [file] = pos;
  const lines = fs.readFileSync(file, 'utf8').split('\n').filter((l) => l.trim());
  const head = lines[0].split(','), col = head.indexOf('expected_reward');
  if (col < 0) die(`${file}:1: no expected_reward column (expected a \`fdpo lab frontier\` table)`);
  const rows = lines.slice(1).map((l, i) => {
    const f = l.split(',');
    if (f.length !== head.length) die(`${file}:${i + 2}: ${f.length} fields, header has ${head.length}`);
    const v = Number(f[col]);
    if (!Number.isFinite(v)) die(`${file}:${i + 2}: expected_reward "${f[col]}" is not a number`);
    f[col] = String(v * bt);
    return f.join(',');
  });
  fs.writeFileSync(out, [head.join(','), ...rows].join('\n') + '\n');
  process.exit(0);
}
const [file, policy] = pos;
const rewards = [];
fs.readFileSync(file, 'utf8').split('\n').forEach((line, i) => {
  if (!line.trim()) return;
  let s;
  try { s = JSON.parse(line); } catch (e) { die(`${file}:${i + 1}: ${e.message}`); }
  if (s.policy !== policy) return;
  if (typeof s.reward !== 'number') die(`${file}:${i + 1}: no numeric "reward"`);
  rewards.push(s.reward / bt);
});
if (rewards.length < 2) die(`${file}: fewer than 2 samples of policy ${policy}`);
const p = 1 / rewards.length;
fs.writeFileSync(out, 'pi_ref,reward\n' + rewards.map((r) => `${p},${r}`).join('\n') + '\n');
process.stderr.write(`lab_problem: ${rewards.length} samples of ${policy} -> ${out}\n`);
