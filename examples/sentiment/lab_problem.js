#!/usr/bin/env node
// The demo's own finite problem for `fdpo lab`: for each held-out prompt x, the base model's
// samples for x (from `fdpo eval --samples-out`) are x's response set, each with
// pi_ref(y|x) = 1/k_x (they are k_x draws from pi_ref(.|x), so the empirical distribution is
// the Monte-Carlo estimate of pi_ref on them), and reward = gold reward / BT_SCALE: pairs were
// labelled with P(a > b) = sigmoid((r_a - r_b) / BT_SCALE), so the reward DPO's beta is
// measured against is r / BT_SCALE, and the lab's beta then means the same thing as the
// experiment's. The CSV's `prompt` column (the sample's prompt_index) makes `fdpo lab
// frontier` solve pi*(y|x) ∝ pi_ref(y|x) exp(r(x,y)/beta) per prompt and average reward and KL
// over prompts, as the experiment's evaluation does. --pooled: one response set of all
// prompts' samples instead (pi_ref = 1/N; the previous, prompt-blind problem).
//   node lab_problem.js EVAL_SAMPLES_JSONL POLICY_NAME [--bt-scale S] [--pooled] --out CSV
// --to-gold: the way back, for drawing the lab on the measured axes (`fdpo report
// --lab-frontier`): a `fdpo lab frontier` table of this problem with expected_reward
// multiplied by BT_SCALE (gold reward units again); beta, KL and the rest unchanged.
//   node lab_problem.js --to-gold FRONTIER_CSV --bt-scale S --out CSV
'use strict';
const fs = require('fs');
const path = require('path');

const args = process.argv.slice(2);
const pos = [];
let bt = 1, out = null, toGold = false, pooled = false;
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--bt-scale') bt = Number(args[++i]);
  else if (args[i] === '--out') out = args[++i];
  else if (args[i] === '--to-gold') toGold = true;
  else if (args[i] === '--pooled') pooled = true;
  else pos.push(args[i]);
}
const die = (msg) => { process.stderr.write(`lab_problem: ${msg}\n`); process.exit(1); };
if (pos.length !== (toGold ? 1 : 2) || !out || !(bt > 0)) {
  process.stderr.write('usage: node lab_problem.js EVAL_SAMPLES_JSONL POLICY_NAME [--bt-scale S>0] [--pooled] --out CSV\n' +
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
const byPrompt = new Map(); // prompt_index -> rewards / BT scale, in file order
let total = 0;
const records = fs.readFileSync(file, 'utf8').split('\n').map((line, i) => {
  if (!line.trim()) return null;
  try { return JSON.parse(line); } catch (e) { return die(`${file}:${i + 1}: ${e.message}`); }
});
// the policy as eval named it (its --model path); else by directory name, when that is unique
// (a run directory copied elsewhere keeps the old paths in its eval files)
const names = new Set(records.filter((s) => s).map((s) => s.policy));
let want = policy;
if (!names.has(policy)) {
  const same = [...names].filter((n) => typeof n === 'string' && path.basename(n) === path.basename(policy));
  if (same.length > 1) die(`${file}: no policy ${policy}, and ${same.length} with its directory name ${path.basename(policy)}`);
  if (same.length === 1) want = same[0];
}
records.forEach((s, i) => {
  if (!s || s.policy !== want) return;
  if (typeof s.reward !== 'number') die(`${file}:${i + 1}: no numeric "reward"`);
  if (!Number.isInteger(s.prompt_index)) die(`${file}:${i + 1}: no integer "prompt_index"`);
  if (!byPrompt.has(s.prompt_index)) byPrompt.set(s.prompt_index, []);
  byPrompt.get(s.prompt_index).push(s.reward / bt);
  total++;
});
if (total < 2) die(`${file}: fewer than 2 samples of policy ${policy}`);
let csv;
if (pooled) {
  const p = 1 / total;
  csv = 'pi_ref,reward\n' + [...byPrompt.values()].flat().map((r) => `${p},${r}`).join('\n') + '\n';
} else {
  const lines = ['prompt,pi_ref,reward'];
  for (const [x, rs] of byPrompt) for (const r of rs) lines.push(`${x},${1 / rs.length},${r}`);
  csv = lines.join('\n') + '\n';
}
fs.writeFileSync(out, csv);
process.stderr.write(`lab_problem: ${total} samples of ${policy}, ${pooled ? 'pooled into one response set' : `${byPrompt.size} prompts`} -> ${out}\n`);
