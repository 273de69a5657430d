// encode_reference.js - HF tokenizers itself (npm) encoding a text file line by
// line with encodeBatch (no special tokens), for `make bench`. Writes the ids
// of all lines concatenated (uint32 LE) and prints one JSON line with the time
// spent encoding (reading the file excluded).
// usage: node bench/encode_reference.js TOKENIZER.json TEXT OUT.u32 [BATCH]
const fs = require('fs');
const { Tokenizer } = require('tokenizers');

async function main() {
  const [tokPath, textPath, out, batchArg] = process.argv.slice(2);
  const batch = parseInt(batchArg || '4096', 10);
  const tok = Tokenizer.fromFile(tokPath);
  const lines = fs.readFileSync(textPath, 'utf8').split('\n');
  if (lines.length && lines[lines.length - 1] === '') lines.pop();
  const nonEmpty = lines.filter((l) => l.length > 0);
  const chunks = [];
  let tokens = 0;
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < nonEmpty.length; i += batch) {
    const enc = await tok.encodeBatch(nonEmpty.slice(i, i + batch), { addSpecialTokens: false });
    for (const e of enc) {
      const ids = e.getIds();
      tokens += ids.length;
      chunks.push(Uint32Array.from(ids));
    }
  }
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const fd = fs.openSync(out, 'w');
  for (const c of chunks) fs.writeSync(fd, Buffer.from(c.buffer, c.byteOffset, c.byteLength));
  fs.closeSync(fd);
  console.log(JSON.stringify({ lines: nonEmpty.length, tokens, seconds: secs }));
}
main().catch((e) => { console.error(e); process.exit(1); });
