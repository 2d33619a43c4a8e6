#!/usr/bin/env node
// The demo's summary, computed from the measured files of a demo run directory:
//   node summarize.js RUN_DIR            (prints the text; writes RUN_DIR/conclusion.md)
// - the base model: held-out bits per byte (bpb_*.jsonl from `fdpo score`: -sum logp /
//   (ln 2 * sum of UTF-8 bytes)), and the English word rate of its samples;
// - per policy (eval.json from `fdpo eval`): gold reward ± s.e., KL(seq), entropy, distinct-2
//   within a prompt ± s.e. (over prompts, from eval_samples.jsonl), self-BLEU-4, word rate;
// - a conclusion generated from those numbers: at a KL every divergence reached (linear
//   interpolation along each divergence's beta frontier), which divergence has the most
//   reward and the most diversity, by how much, and whether the difference exceeds two
//   standard errors; the same at a matched reward; and what the lab predicts on the
//   demo's own problem (lab/frontier.csv). No sentence is fixed in advance.
'use strict';
const fs = require('fs');
const path = require('path');

const run = process.argv[2];
if (!run) { process.stderr.write('usage: node summarize.js RUN_DIR\n'); process.exit(2); }
function readJson(f) {
  try { return JSON.parse(fs.readFileSync(f, 'utf8')); } catch (e) { process.stderr.write(`summarize: ${f}: ${e.message}\n`); process.exit(1); }
}
function readJsonl(f) {
  return fs.readFileSync(f, 'utf8').split('\n').filter((l) => l.trim()).map((l, i) => {
    try { return JSON.parse(l); } catch (e) { process.stderr.write(`summarize: ${f}:${i + 1}: ${e.message}\n`); process.exit(1); }
  });
}
const mean = (a) => a.reduce((s, x) => s + x, 0) / a.length;
const se = (a) => { const m = mean(a); return a.length > 1 ? Math.sqrt(a.reduce((s, x) => s + (x - m) ** 2, 0) / (a.length - 1) / a.length) : NaN; };
const f = (x, d = 3) => (Number.isFinite(x) ? x.toFixed(d) : '-');
const pm = (m, s, d = 3) => `${f(m, d)} ± ${f(s, d)}`;

// --- bits per byte
function bpb(file) {
  if (!fs.existsSync(file)) return null;
  let nats = 0, bytes = 0;
  for (const r of readJsonl(file)) { nats -= r.logp; bytes += Buffer.byteLength(r.completion, 'utf8'); }
  return nats / Math.log(2) / bytes;
}
const bpbBase = bpb(path.join(run, 'bpb_base.jsonl')), bpbBytes = bpb(path.join(run, 'bpb_bytes.jsonl'));

// --- policies: settings from the directory name dpo-<div>-b<beta> (run.sh names them so)
const ev = readJson(path.join(run, 'eval.json'));
const samples = fs.existsSync(path.join(run, 'eval_samples.jsonl')) ? readJsonl(path.join(run, 'eval_samples.jsonl')) : [];
// distinct-2 of one prompt's samples: distinct / total word bigrams, words = whitespace runs (docs/eval.md)
function distinct2(texts) {
  const seen = new Set();
  let total = 0;
  for (const t of texts) {
    const w = t.split(/[ \t\n\r\v\f]+/).filter((x) => x);
    for (let i = 0; i + 1 < w.length; i++) { seen.add(w[i] + '\u0000' + w[i + 1]); total++; }
  }
  return total ? seen.size / total : 0;
}
const pols = ev.policies.map((p) => {
  const name = path.basename(p.name);
  const m = /^dpo-(rkl|fkl|js|alpha)([0-9.]*)-b([0-9.eE+-]+)$/.exec(name);
  const div = m ? (m[1] === 'alpha' ? `alpha:${m[2]}` : m[1]) : null;
  const byPrompt = new Map();
  for (const s of samples) if (s.policy === p.name) {
    if (!byPrompt.has(s.prompt_index)) byPrompt.set(s.prompt_index, []);
    byPrompt.get(s.prompt_index).push(s.completion);
  }
  const d2 = [...byPrompt.values()].map(distinct2);
  return { name, div, beta: m ? Number(m[3]) : null, p, kl: p.kl_seq_mean, klSe: p.kl_seq_se,
           reward: p.reward_mean, rewardSe: p.reward_se, d2: d2.length ? mean(d2) : p.distinct_2_per_input,
           d2Se: d2.length ? se(d2) : NaN, bleu: p.self_bleu_4_per_input, wr: p.word_rate, wrSe: p.word_rate_se };
});

const out = [];
const say = (s = '') => out.push(s);
const base = pols.find((q) => q.name === 'base');
say('# The sentiment demo, measured');
say();
if (base) {
  say(`Base model: held-out ${bpbBase !== null ? `${f(bpbBase)} bits per byte` : 'bits per byte not measured'}` +
      (bpbBytes !== null ? ` (byte-level model of the same shape and steps: ${f(bpbBytes)})` : '') +
      `; ${Number.isFinite(base.wr) ? `${f(100 * base.wr, 1)}% ± ${f(100 * base.wrSe, 1)}% of the words of its samples occur in the Brown corpus` : 'word rate not measured'}` +
      `; gold reward ${pm(base.reward, base.rewardSe, 4)} per word.`);
  say();
}
const cols = [
  ['policy', (q) => q.name], ['reward ± s.e.', (q) => pm(q.reward, q.rewardSe, 4)], ['KL(seq)', (q) => f(q.kl)],
  ['entropy', (q) => f(q.p.entropy)], ['distinct-2 ± s.e.', (q) => pm(q.d2, q.d2Se)], ['self-BLEU-4', (q) => f(q.bleu)],
  ['word rate', (q) => f(q.wr)], ['len(tok)', (q) => f(q.p.len_tokens_mean, 1)],
];
const rows = pols.map((q) => cols.map(([, g]) => g(q)));
const width = cols.map(([h], i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
const line = (cells) => cells.map((c, i) => (i === 0 ? c.padEnd(width[i]) : c.padStart(width[i]))).join('  ');
say('```');
say(line(cols.map(([h]) => h)));
for (const r of rows) say(line(r));
say('```');
say();

// --- the conclusion: frontiers per divergence
const divs = [...new Set(pols.filter((q) => q.div).map((q) => q.div))];
const curve = (d, xk) => pols.filter((q) => q.div === d && Number.isFinite(q[xk])).sort((a, b) => a[xk] - b[xk]);
// value of key yk (and its s.e.) at x along a curve sorted by xk; null outside the curve
function at(c, xk, x, yk) {
  if (!c.length || x < c[0][xk] - 1e-12 || x > c[c.length - 1][xk] + 1e-12) return null;
  if (c.length === 1) return { v: c[0][yk], s: c[0][yk + 'Se'] };
  let i = 0;
  while (i + 2 < c.length && c[i + 1][xk] < x) i++;
  const a = c[i], b = c[i + 1], t = b[xk] > a[xk] ? Math.min(1, Math.max(0, (x - a[xk]) / (b[xk] - a[xk]))) : 0;
  const sa = a[yk + 'Se'], sb = b[yk + 'Se'];
  return { v: a[yk] + t * (b[yk] - a[yk]), s: Math.sqrt(((1 - t) * sa) ** 2 + (t * sb) ** 2) };
}
function compare(xk, x, yk, what, unit, higherBetter) {
  const vals = divs.map((d) => ({ d, r: at(curve(d, xk), xk, x, yk) })).filter((e) => e.r && Number.isFinite(e.r.v));
  if (vals.length < 2) return;
  vals.sort((a, b) => (higherBetter ? b.r.v - a.r.v : a.r.v - b.r.v));
  const [top, next] = vals, last = vals[vals.length - 1];
  const gap = (a, b) => ({ v: Math.abs(a.r.v - b.r.v), s: Math.hypot(a.r.s, b.r.s) });
  const g1 = gap(top, next), gAll = gap(top, last);
  const sig = (g) => (Number.isFinite(g.s) ? (g.v > 2 * g.s ? 'more than two standard errors' : 'within two standard errors: not a measured difference') : 'no standard error');
  say(`- ${what}: **${top.d}** (${pm(top.r.v, top.r.s)}${unit}); ahead of ${next.d} by ${pm(g1.v, g1.s)} (${sig(g1)}), ` +
      `of ${last.d} (the last) by ${pm(gAll.v, gAll.s)} (${sig(gAll)}). Order: ${vals.map((e) => `${e.d} ${f(e.r.v)}`).join(', ')}.`);
  pairwise(vals.map((e) => ({ d: e.d, v: e.r.v, s: e.r.s })), what.split(' (')[0], yk === 'reward' ? 4 : 3);
  return vals;
}
// every pair of divergences: which differences exceed two standard errors and which do not
// (vals: [{d, v, s}]), so the report names every difference it cannot call one
function pairwise(vals, what, digits = 3) {
  const sig = [], not = [];
  for (let i = 0; i < vals.length; i++)
    for (let j = i + 1; j < vals.length; j++) {
      const [a, b] = vals[i].v >= vals[j].v ? [vals[i], vals[j]] : [vals[j], vals[i]];
      const g = a.v - b.v, s = Math.hypot(a.s, b.s);
      if (Number.isFinite(s) && g > 2 * s) sig.push(`${a.d} > ${b.d} by ${pm(g, s, digits)}`);
      else not.push(`${a.d} vs ${b.d}${Number.isFinite(s) ? '' : ' (no s.e.)'}`);
    }
  say(`  - ${what}, pairs that differ by more than two standard errors: ${sig.length ? sig.join('; ') : 'none'}.`);
  say(`  - ${what}, pairs within two standard errors (not measured differences): ${not.length ? not.join(', ') : 'none'}.`);
}
if (divs.length >= 2) {
  const multi = divs.every((d) => curve(d, 'kl').length >= 2);
  const kStar = Math.min(...divs.map((d) => Math.max(...curve(d, 'kl').map((q) => q.kl))));
  const kLow = Math.max(...divs.map((d) => Math.min(...curve(d, 'kl').map((q) => q.kl))));
  say('## Conclusion (generated from the numbers above)');
  say();
  if (!multi || kLow > kStar) {
    // a beta every divergence was trained at, else each divergence's largest-KL point
    const shared = [...new Set(pols.filter((q) => q.div).map((q) => q.beta))]
      .filter((b) => divs.every((d) => curve(d, 'kl').some((q) => q.beta === b)))
      .sort((a, b) => Math.abs(Math.log(a / 0.1)) - Math.abs(Math.log(b / 0.1))); // the one nearest the usual 0.1 first
    const pick = (d) => { const c = curve(d, 'kl'); return shared.length ? c.find((q) => q.beta === shared[0]) : c[c.length - 1]; };
    // why there is no matched KL: each reason only when it holds (a single-beta divergence's KL can
    // lie inside the others' ranges)
    const why = [];
    if (kLow > kStar) why.push("the divergences' KL ranges do not overlap");
    if (!multi) why.push('some divergence has a single beta (no curve to interpolate along)');
    const reason = why.join(' and ');
    say(`${reason[0].toUpperCase()}${reason.slice(1)}, so they are compared ` +
        (shared.length ? `at the same beta = ${shared[0]}` : 'at their largest-KL points') + ', not at matched KL:');
    for (const [yk, what] of [['reward', 'Most reward'], ['d2', 'Most diversity (distinct-2 within a prompt)']]) {
      const vals = divs.map((d) => ({ d, q: pick(d) }));
      vals.sort((a, b) => b.q[yk] - a.q[yk]);
      say(`- ${what}: ${vals.map((e) => `${e.d} ${pm(e.q[yk], e.q[yk + 'Se'], yk === 'reward' ? 4 : 3)} at KL ${f(e.q.kl)}`).join('; ')}.`);
      pairwise(vals.map((e) => ({ d: e.d, v: e.q[yk], s: e.q[yk + 'Se'] })), what, yk === 'reward' ? 4 : 3);
    }
  } else {
    say(`At matched KL = ${f(kStar)} nats (the largest KL every divergence's beta sweep reached; linear interpolation between betas):`);
    const r = compare('kl', kStar, 'reward', 'Most gold reward', ' per word', true);
    const d = compare('kl', kStar, 'd2', 'Most diversity (distinct-2 within a prompt)', '', true);
    const rStar = Math.min(...divs.map((dv) => Math.max(...curve(dv, 'reward').map((q) => q.reward))));
    const rLow = Math.max(...divs.map((dv) => Math.min(...curve(dv, 'reward').map((q) => q.reward))));
    if (rLow <= rStar) {
      say();
      say(`At matched reward = ${f(rStar, 4)} per word (the largest every divergence reached):`);
      compare('reward', rStar, 'd2', 'Most diversity (distinct-2 within a prompt)', '', true);
      compare('reward', rStar, 'kl', 'Least KL spent', ' nats', false);
    }
    if (r && d) {
      const rk = (vals, dv) => vals.findIndex((e) => e.d === dv);
      const paper = [];
      if (rk(r, 'rkl') >= 0) paper.push(`reverse KL is ${rk(r, 'rkl') === 0 ? '' : 'not '}the highest-reward divergence (rank ${rk(r, 'rkl') + 1} of ${r.length})`);
      if (rk(d, 'fkl') >= 0) paper.push(`forward KL is ${rk(d, 'fkl') === 0 ? '' : 'not '}the most diverse (rank ${rk(d, 'fkl') + 1} of ${d.length})`);
      if (paper.length) { say(); say(`Against the f-DPO paper's picture at this KL: ${paper.join('; ')}.`); }
    }
  }
  // the lab on the demo's own problem
  const labFile = path.join(run, 'lab', 'frontier.csv');
  if (fs.existsSync(labFile)) {
    const [head, ...lines] = fs.readFileSync(labFile, 'utf8').trim().split('\n');
    const h = head.split(',');
    const L = lines.map((l) => Object.fromEntries(l.split(',').map((v, i) => [h[i], i === 0 ? v : Number(v)])));
    const betas = [...new Set(L.map((x) => x.beta))].sort((a, b) => a - b);
    const b0 = betas.reduce((a, b) => (Math.abs(Math.log(b / 0.1)) < Math.abs(Math.log(a / 0.1)) ? b : a), betas[0]);
    const atB = L.filter((x) => x.beta === b0).sort((a, b) => b.expected_reward - a.expected_reward);
    const btScale = fs.existsSync(path.join(run, 'budget.json')) ? readJson(path.join(run, 'budget.json')).bt_scale : undefined;
    const bt = Number.isFinite(btScale) ? btScale : 1;   // lab rewards are gold / BT scale: back to gold units
    say();
    say(`## Theory on the demo's own problem (the lab; dashed "exact (lab)" lines on the report's reward-KL panel)`);
    say();
    // the problem's shape: per prompt (a prompt column) or pooled
    const probFile = path.join(run, 'lab', 'problem.csv');
    let shape = 'the pooled samples of all prompts as one response set', kMax = NaN;
    if (fs.existsSync(probFile)) {
      const [ph, ...pl] = fs.readFileSync(probFile, 'utf8').trim().split('\n');
      const pc = ph.split(',').indexOf('prompt');
      const count = new Map();
      for (const l of pl) { const k = pc >= 0 ? l.split(',')[pc] : ''; count.set(k, (count.get(k) || 0) + 1); }
      kMax = Math.max(...count.values());
      if (pc >= 0) shape = `each of the ${count.size} held-out prompts x on its own: pi_ref(y|x) = 1/k on its k = ${kMax === Math.min(...count.values()) ? kMax : `${Math.min(...count.values())}-${kMax}`} base samples, ` +
                           'pi*(y|x) ∝ pi_ref(y|x) exp(r(x,y)/beta) solved per prompt, reward and KL averaged over prompts';
      else shape += ` (pi_ref = 1/${kMax})`;
    }
    say(`\`fdpo lab frontier\` solved exactly on the base model's held-out samples (${shape}; ` +
        `reward = gold / BT scale ${bt}, so beta means what it means in training) at beta = ${b0}, against the policies trained at that beta ` +
        `(reward in gold units per word, KL in nats):`);
    for (const x of atB) {
      const q = pols.find((p) => p.div === x.divergence && p.beta === b0);
      say(`- ${x.divergence}: exact ${f(bt * x.expected_reward, 4)} at KL ${f(x.kl)} (entropy ${f(x.entropy)} nats)` +
          (q ? `; measured ${pm(q.reward, q.rewardSe, 4)} at KL ${f(q.kl)}` : '; not trained at this beta'));
    }
    say(`The exact optimum lives on the sampled support only (its KL is at most log ${Number.isFinite(kMax) ? `${kMax} = ${f(Math.log(kMax), 2)} nats` : 'N'}, ` +
        'while a policy\'s KL(seq) is over all sequences), and is what the objective ' +
        'reaches without sampling, optimisation or model error; the gap to the measured points is what training on ' +
        'Bradley-Terry pairs from a small model leaves on the table.');
  }
}
// --- online vs offline at matched KL, reward over-optimisation, the safety constraint
const optJson = (f) => (fs.existsSync(path.join(run, f)) ? readJson(path.join(run, f)).policies : null);
const online = optJson('eval_online.json'), proxy = optJson('eval_proxy.json'), safety = optJson('eval_safety.json');
const roundOf = (p) => { const m = /round-(\d+)$/.exec(p.name); return m ? Number(m[1]) : -1; };
if (online) {
  const gold = online.filter((p) => p.name.includes('/online-rkl-')).sort((a, b) => roundOf(a) - roundOf(b));
  const offl = curve('rkl', 'kl');
  say();
  const budget = fs.existsSync(path.join(run, 'budget.json')) ? readJson(path.join(run, 'budget.json')) : {};
  say(`## Online vs offline (rkl, beta 0.1; reward queries: offline ${budget.offline_queries ?? '?'}, online ${budget.online_queries ?? '?'})`);
  say();
  for (const p of gold) {
    const o = at(offl, 'kl', p.kl_seq_mean, 'reward');
    say(`- online round ${roundOf(p)}: reward ${pm(p.reward_mean, p.reward_se, 4)} at KL ${f(p.kl_seq_mean)}` +
        (o ? `; offline rkl frontier at that KL: ${pm(o.v, o.s, 4)}; online - offline = ${pm(p.reward_mean - o.v, Math.hypot(p.reward_se, o.s), 4)}` +
             ` (${Math.abs(p.reward_mean - o.v) > 2 * Math.hypot(p.reward_se, o.s) ? 'more than' : 'within'} two standard errors)`
           : '; outside the KL range of the offline rkl frontier, no matched comparison'));
  }
  const rmRuns = online.filter((p) => p.name.includes('/online-rm-')).sort((a, b) => roundOf(a) - roundOf(b));
  if (rmRuns.length) overoptimisation(rmRuns);
}
// Reward over-optimisation: the online run against the reward model, each round scored with the
// gold reward (eval_online.json) and with the proxy it optimised (eval_proxy.json, same seed: the
// same samples). Gains are over the base model, also in units of the base model's reward s.d.
// under each reward, so the two rewards can be compared; every verdict below is computed.
function overoptimisation(rmRuns) {
  const prox = new Map((proxy || []).map((p) => [p.name, p]));
  const pb = proxy && proxy.find((p) => p.kl_seq_mean === 0);
  const gb = pb && pols.find((q) => q.p.name === pb.name);
  const rm = fs.existsSync(path.join(run, 'rm', 'eval_summary.json')) ? readJson(path.join(run, 'rm', 'eval_summary.json')) : null;
  say();
  say('## Reward over-optimisation: online f-DPO against a reward model trained on the offline pairs');
  say();
  if (rm && Number.isFinite(rm.eval_accuracy))
    say(`Reward model (the proxy): held-out pair accuracy ${f(rm.eval_accuracy)} on ${rm.pairs ?? '?'} held-out pairs` +
        (Number.isFinite(rm.eval_margin) ? `, mean held-out margin ${f(rm.eval_margin)}` : '') + '.');
  const rows = [];
  if (gb && pb) rows.push({ name: 'base', kl: 0, klSe: 0, g: gb.reward, gSe: gb.rewardSe, p: pb.reward_mean, pSe: pb.reward_se });
  for (const q of rmRuns) {
    const pq = prox.get(q.name);
    rows.push({ name: `round ${roundOf(q)}`, kl: q.kl_seq_mean, klSe: q.kl_seq_se, g: q.reward_mean, gSe: q.reward_se,
                p: pq ? pq.reward_mean : NaN, pSe: pq ? pq.reward_se : NaN });
  }
  const gSd = gb ? gb.p.reward_std : NaN, pSd = pb ? pb.reward_std : NaN;
  const z = (v, b, sd) => (v - b) / sd;
  say('```');
  const W = [9, 16, 20, 18, 14, 14];
  say(['policy', 'KL(seq)', 'gold AFINN', 'proxy rm', 'gold gain/sd', 'proxy gain/sd'].map((h, i) => (i ? h.padStart(W[i]) : h.padEnd(W[i]))).join(''));
  for (const r of rows)
    say([r.name, pm(r.kl, r.klSe, 2), pm(r.g, r.gSe, 4), pm(r.p, r.pSe, 3), gb ? f(z(r.g, rows[0].g, gSd), 2) : '-', pb ? f(z(r.p, rows[0].p, pSd), 2) : '-']
      .map((h, i) => (i ? h.padStart(W[i]) : h.padEnd(W[i]))).join(''));
  say('```');
  if (!(gb && pb) || rows.length < 3) { say('(The base model is missing from eval_proxy.json or eval.json: no gains computed.)'); return; }
  const b = rows[0], last = rows[rows.length - 1];
  const peak = rows.slice(1).reduce((a, r) => (r.g > a.g ? r : a), rows[1]);
  const worst = rows.slice(1).reduce((a, r) => (r.g < a.g ? r : a), rows[1]);
  const dP = { v: last.p - b.p, s: Math.hypot(last.pSe, b.pSe) }, dG = { v: last.g - b.g, s: Math.hypot(last.gSe, b.gSe) };
  const fall = { v: peak.g - last.g, s: Math.hypot(peak.gSe, last.gSe) };
  const drop = { v: b.g - worst.g, s: Math.hypot(b.gSe, worst.gSe) };
  // the gap between the two gains in s.d. units (the s.d.s are treated as known)
  const gap = { v: z(last.p, b.p, pSd) - z(last.g, b.g, gSd), s: Math.hypot(Math.hypot(last.pSe, b.pSe) / pSd, Math.hypot(last.gSe, b.gSe) / gSd) };
  const sig = (d) => d.v > 2 * d.s;
  const goldRose = rows.slice(1).some((r) => sig({ v: r.g - b.g, s: Math.hypot(r.gSe, b.gSe) }));
  let verdict;
  if (!sig(dP)) verdict = 'the proxy reward did not rise by more than two standard errors, so the reward model was not optimised and nothing can be said about over-optimisation.';
  else if (!goldRose)
    verdict = `the proxy rose while the gold reward rose at no round by more than two standard errors; its lowest, at ${worst.name} (KL ${f(worst.kl, 2)}), ` +
              `is ${pm(drop.v, drop.s, 4)} below the base model's (${sig(drop) ? 'more than' : 'within'} two standard errors): ` +
              'the policy learned what the reward model rewards and the gold reward does not, over-optimisation of the proxy' +
              (sig(drop) ? ', which here lowered the gold reward.' : '.');
  else if (peak !== last && sig(fall))
    verdict = `the gold reward peaked at ${peak.name} (KL ${f(peak.kl, 2)}) and then fell by ${pm(fall.v, fall.s, 4)} by the last round, ` +
              `while the proxy changed by ${pm(last.p - peak.p, Math.hypot(last.pSe, peak.pSe))} over the same rounds: over-optimisation of the reward model.`;
  else if (sig(gap))
    verdict = `both rose, but the gold reward rose less than the proxy: at KL ${f(last.kl, 2)} the proxy gained ${f(z(last.p, b.p, pSd), 2)} and the gold ` +
              `${f(z(last.g, b.g, gSd), 2)} base-model standard deviations (gap ${pm(gap.v, gap.s, 2)}): the proxy overstates the gain, the seed's ` +
              'reward-error point; a fall of the gold reward itself was not measured in this KL range.';
  else if (-gap.v > 2 * gap.s)
    verdict = `both rose, and the gold reward rose more than the proxy in base-model standard deviations (gold ${f(z(last.g, b.g, gSd), 2)}, ` +
              `proxy ${f(z(last.p, b.p, pSd), 2)}, gap ${pm(gap.v, gap.s, 2)}): the proxy saturated first and no over-optimisation was measured in this KL range.`;
  else verdict = `both rose by similar amounts in base-model standard deviations (gap ${pm(gap.v, gap.s, 2)}): no over-optimisation within this KL range.`;
  say(`From the base model to ${last.name} (KL ${f(last.kl, 2)}) the proxy reward changed by ${pm(dP.v, dP.s)} and the gold reward by ${pm(dG.v, dG.s, 4)}; ${verdict}`);
}
if (safety) {
  // what g counts: the header line harm_lexicon.js wrote ("# AFINN-165 words with |valence| >= 3: ...")
  const harmFile = path.join(run, 'harm_lexicon.txt');
  const harmHead = fs.existsSync(harmFile) ? (/^#\s*(.*?):/.exec(fs.readFileSync(harmFile, 'utf8')) || [])[1] : null;
  const nLines = (f) => (fs.existsSync(path.join(run, f)) ? readJsonl(path.join(run, f)).length : null);
  const nSafetyPairs = nLines('safety_pairs.jsonl');
  const thr = safety.map((p) => p.safety_threshold).find(Number.isFinite);
  const b = Number.isFinite(thr) ? thr : 0;
  // a number in a stage's name as fdpo writes it (the shortest text that reads back: 0.03, 1e-05,
  // 1e+20): a pattern that took '-' anywhere split merge-0-1e-05-w0.5 as 0-1e, 05 and dropped it
  const num = '([0-9]+(?:\\.[0-9]+)?(?:e[-+][0-9]+)?)';
  const lamRe = new RegExp(`lambda-${num}$`), mergeRe = new RegExp(`merge-${num}-${num}-w${num}$`);
  const lamOf = (p) => { const m = lamRe.exec(p.name); return m ? Number(m[1]) : null; };
  const mergeOf = (p) => { const m = mergeRe.exec(p.name); return m ? m.slice(1).map(Number) : null; };
  say();
  say(`## Safety: positive sentiment subject to a constraint on over-the-top language (SACPO, rkl, beta 0.1)`);
  say();
  say(`g = -(number of ${harmHead || 'listed words'}) in a completion; constraint E[g] >= b = ${b} ` +
      `(at most ${f(-b, 2)} such words per completion on average; "frac g>=b" is the fraction of samples meeting it one by one). ` +
      `Safety pairs: ${nSafetyPairs ?? '?'} (ties skipped) from samples of the reward-only policy, the safety stage's reference.`);
  say();
  say('```');
  const w = [28, 20, 20, 12, 10];
  say(['model', 'reward ± s.e.', 'safety g ± s.e.', 'frac g>=b', 'KL(seq)'].map((h, i) => (i ? h.padStart(w[i]) : h.padEnd(w[i]))).join(''));
  for (const p of safety)
    say([path.basename(p.name), pm(p.reward_mean, p.reward_se, 4), pm(p.safety_mean, p.safety_se, 4), f(p.safety_frac_safe), f(p.kl_seq_mean)]
      .map((h, i) => (i ? h.padStart(w[i]) : h.padEnd(w[i]))).join(''));
  say('```');
  // which side of b a model is on, in standard errors of its E[g]
  const side = (p) => {
    const z = (p.safety_mean - b) / p.safety_se;
    return !Number.isFinite(z) ? (p.safety_mean >= b ? 'meets' : 'violates') + ' the constraint (no s.e.)'
      : z > 2 ? `meets the constraint (${f(z, 1)} s.e. above b)` : z < -2 ? `violates it (${f(-z, 1)} s.e. below b)`
      : `sits on the threshold (within two standard errors of b, ${f(z, 1)} s.e.)`;
  };
  const d2 = (p, q, k) => ({ v: p[k + '_mean'] - q[k + '_mean'], s: Math.hypot(p[k + '_se'], q[k + '_se']) });
  const sig2 = (g) => (g.v > 2 * g.s ? 'more than two standard errors' : g.v < -2 * g.s ? 'more than two standard errors, the wrong way' : 'within two standard errors');
  const r0 = safety.find((p) => path.basename(p.name) === 'reward');
  const b0 = safety.find((p) => path.basename(p.name) === 'base');
  const lams = safety.filter((p) => lamOf(p) !== null).sort((p, q) => lamOf(p) - lamOf(q));
  if (b0) say(`- The base model ${side(b0)}: E[g] ${pm(b0.safety_mean, b0.safety_se)}, reward ${pm(b0.reward_mean, b0.reward_se, 4)}.`);
  if (r0) say(`- The reward-only policy (lambda = 0, the reward stage) ${side(r0)}: E[g] ${pm(r0.safety_mean, r0.safety_se)}, ` +
              `reward ${pm(r0.reward_mean, r0.reward_se, 4)}` +
              (b0 ? `; optimising sentiment moved E[g] by ${pm(r0.safety_mean - b0.safety_mean, Math.hypot(r0.safety_se, b0.safety_se))} from the base model.` : '.') +
              (r0.safety_mean >= b ? ' The constraint does not bind: the reward-optimal policy already meets it, so lambda cannot matter.' : ''));
  for (const p of lams)
    say(`- lambda ${lamOf(p)} ${side(p)}: E[g] ${pm(p.safety_mean, p.safety_se)}, reward ${pm(p.reward_mean, p.reward_se, 4)}, KL ${f(p.kl_seq_mean)}` +
        (r0 ? `; against the reward-only policy: safety ${pm(d2(p, r0, 'safety').v, d2(p, r0, 'safety').s)}, reward ${pm(d2(p, r0, 'reward').v, d2(p, r0, 'reward').s, 4)}.` : '.'));
  // Theory: for reverse KL the stepwise optimum is exact, pi_lambda = pi_reward * exp(lambda g / (beta s)) / Z
  // (s: the BT scale of the safety labels), so reweighting the reward stage's own evaluation samples
  // predicts each lambda's E[g] and reward (self-normalised importance sampling, its delta-method s.e.)
  const safSamplesFile = path.join(run, 'eval_safety_samples.jsonl');
  const sacpoPlan = fs.existsSync(path.join(run, 'sacpo', 'sacpo.json')) ? readJson(path.join(run, 'sacpo', 'sacpo.json')).plan : null;
  const budgetS = fs.existsSync(path.join(run, 'budget.json')) ? readJson(path.join(run, 'budget.json')) : {};
  if (r0 && lams.length && sacpoPlan && sacpoPlan.divergence === 'rkl' && fs.existsSync(safSamplesFile) && Number.isFinite(budgetS.safety_bt_scale)) {
    const ref = readJsonl(safSamplesFile).filter((x) => x.policy === r0.name && Number.isFinite(x.safety) && Number.isFinite(x.reward));
    const scale = sacpoPlan.beta * budgetS.safety_bt_scale;
    const tilt = (lam, key) => {
      const w = ref.map((x) => Math.exp(lam * x.safety / scale)), W = w.reduce((a, v) => a + v, 0);
      const mu = ref.reduce((a, x, i) => a + w[i] * x[key], 0) / W;
      return { v: mu, s: Math.sqrt(ref.reduce((a, x, i) => a + (w[i] * (x[key] - mu)) ** 2, 0)) / W, ess: W * W / w.reduce((a, v) => a + v * v, 0) };
    };
    if (ref.length > 1) {
      say(`- Theory (reverse KL: the stepwise optimum is exact, the reward-only policy times exp(lambda g / (beta ${sacpoPlan.beta} x BT scale ${budgetS.safety_bt_scale})) ` +
          `per completion; predicted by reweighting the reward stage's ${ref.length} evaluation samples, measured by training):`);
      for (const p of lams) {
        const g = tilt(lamOf(p), 'safety'), r = tilt(lamOf(p), 'reward');
        const dz = (p.safety_mean - g.v) / Math.hypot(p.safety_se, g.s);
        say(`  - lambda ${lamOf(p)}: predicted E[g] ${pm(g.v, g.s)}, reward ${pm(r.v, r.s, 4)} (effective samples ${f(g.ess, 0)}); ` +
            `measured E[g] ${pm(p.safety_mean, p.safety_se)}, reward ${pm(p.reward_mean, p.reward_se, 4)}; E[g] measured - predicted ` +
            `${f(dz, 1)} s.e. (${Math.abs(dz) > 2 ? 'more than two: training did not land on the optimum' : 'within two'}), ` +
            `reward measured - predicted ${pm(p.reward_mean - r.v, Math.hypot(p.reward_se, r.s), 4)}.`);
      }
    }
  }
  const chain = r0 ? [r0, ...lams] : lams;
  if (chain.length >= 2) {
    const steps = [];
    for (let i = 1; i < chain.length; i++) {
      const g = d2(chain[i], chain[i - 1], 'safety');
      steps.push(`${lamOf(chain[i - 1]) ?? 0} -> ${lamOf(chain[i])}: ${pm(g.v, g.s)} (${sig2(g)})`);
    }
    say(`- Safety as lambda grows: ${steps.join('; ')}.`);
  }
  const ok = lams.find((p) => (p.safety_mean - b) / p.safety_se > 2);
  if (r0 && r0.safety_mean < b && ok) {
    const g = d2(r0, ok, 'reward');
    say(`- Price of the constraint: the smallest lambda that meets it by more than two standard errors (${lamOf(ok)}) gives up ` +
        `${pm(g.v, g.s, 4)} reward per word against the reward-only policy (${sig2(g)})` +
        (b0 ? (() => { const gb = d2(ok, b0, 'reward');
          return `; its reward differs from the base model's by ${pm(gb.v, gb.s, 4)} (${Math.abs(gb.v) > 2 * gb.s ? 'more than' : 'within'} two standard errors).`; })() : '.'));
  } else if (r0 && r0.safety_mean < b && lams.length) say('- No lambda meets the constraint by more than two standard errors.');
  // the best reward among every model (trained or merged) that meets the constraint by > 2 s.e.
  const meets = safety.filter((p) => (lamOf(p) !== null || mergeOf(p)) && (p.safety_mean - b) / p.safety_se > 2);
  if (r0 && r0.safety_mean < b && meets.length) {
    const best = meets.reduce((a, p) => (p.reward_mean > a.reward_mean ? p : a), meets[0]);
    const others = meets.filter((p) => p !== best).map((p) => {
      const g = d2(best, p, 'reward');
      return `${path.basename(p.name)} by ${pm(g.v, g.s, 4)} (${sig2(g)})`;
    });
    say(`- Most reward while meeting the constraint (by more than two standard errors): ${path.basename(best.name)}, ` +
        `${pm(best.reward_mean, best.reward_se, 4)}` + (others.length ? `; ahead of ${others.join(', ')}.` : '.'));
  }
  for (const p of safety.filter((q) => mergeOf(q))) {
    const [la, lb, wt] = mergeOf(p);
    const A = la === 0 ? r0 : lams.find((q) => lamOf(q) === la), B = lams.find((q) => lamOf(q) === lb);
    if (!A || !B) continue;
    const between = (k) => {
      const lo = Math.min(A[k + '_mean'], B[k + '_mean']), hi = Math.max(A[k + '_mean'], B[k + '_mean']);
      const v = p[k + '_mean'], s = p[k + '_se'];
      return v >= lo && v <= hi ? 'between them' : v >= lo - 2 * s && v <= hi + 2 * s ? 'outside them by less than two standard errors' : 'outside them';
    };
    say(`- Merge of ${la === 0 ? 'the reward stage (lambda 0)' : `lambda ${la}`} and lambda ${lb} at weight ${wt} (P-SACPO, no training) ${side(p)}: E[g] ${pm(p.safety_mean, p.safety_se)} ` +
        `(${between('safety')}), reward ${pm(p.reward_mean, p.reward_se, 4)} (${between('reward')}).`);
  }
}
say();
say('Reproduce every number and figure: `make demo` (or `examples/sentiment/run.sh`; stages already done are reused).');

const text = out.join('\n') + '\n';
fs.writeFileSync(path.join(run, 'conclusion.md'), text);
process.stdout.write(text);
