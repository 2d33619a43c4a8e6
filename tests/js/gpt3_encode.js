// Reference encoder for tests and benchmarks: the npm package gpt-3-encoder.
//   node gpt3_encode.js [--stats] [--lines] [--decode] FILE...
// encode: prints one line of space-separated ids per FILE (read as UTF-8); with --lines,
//         one per line of each FILE (the '\n' is not encoded), as `fdpo tokenize --lines`.
// decode: each FILE holds space-separated ids; prints the decoded text (no newline added).
// --stats: encode wall time (encode calls only), throughput, and the CPU time of reading,
//          encoding and formatting (start-up and loading excluded) to stderr.
'use strict';
const fs = require('fs');
const path = require('path');
const { encode, decode } = require(path.join(__dirname, '../../node_modules/gpt-3-encoder'));

let stats = false, dec = false, lines = false;
const files = [];
for (const a of process.argv.slice(2)) {
  if (a === '--stats') stats = true;
  else if (a === '--decode') dec = true;
  else if (a === '--lines') lines = true;
  else files.push(a);
}
const out = [];
let bytes = 0, tokens = 0, nTexts = 0, t = 0n;
const cpu0 = process.cpuUsage();
for (const f of files) {
  if (dec) {
    const ids = fs.readFileSync(f, 'utf8').trim().split(/\s+/).filter(x => x.length).map(Number);
    out.push(decode(ids));
    continue;
  }
  const buf = fs.readFileSync(f);
  const text = buf.toString('utf8');
  let parts = [text];
  if (lines) {
    parts = text.split('\n');
    if (text.endsWith('\n')) parts.pop();
  }
  for (const part of parts) {
    const t0 = process.hrtime.bigint();
    const ids = encode(part);
    t += process.hrtime.bigint() - t0;
    tokens += ids.length;
    out.push(ids.join(' ') + '\n');
    nTexts++;
  }
  bytes += buf.length - (lines ? parts.length - (text.endsWith('\n') ? 0 : 1) : 0);
}
const joined = out.join('');
const dc = process.cpuUsage(cpu0), cpu = (dc.user + dc.system) / 1e6;
process.stdout.write(joined);
if (stats) {
  const s = Number(t) / 1e9;
  process.stderr.write(`gpt-3-encoder: ${nTexts} texts, ${bytes} bytes, ${tokens} tokens | encode ${s.toFixed(3)} s, ` +
    `${(bytes / s / 1e6).toFixed(2)} MB/s, ${(tokens / s).toFixed(0)} tokens/s | cpu ${cpu.toFixed(3)} s (read+encode+print)\n`);
}
