// vocab_reference.js - the reference projection (CONTRACT section 1) computed
// with HuggingFace tokenizers itself (the npm package), for `make bench`:
// decode([id]) per id (special tokens kept), U+FFFD -> the raw token, else the
// reference's normalizer Sequence. Writes P as little-endian uint32 and prints
// one JSON line with the time it took.
// usage: node bench/vocab_reference.js TOKENIZER.json OUT.u32
const fs = require('fs');
const { Tokenizer } = require('tokenizers');

const normCfg = {
  version: '1.0', truncation: null, padding: null, added_tokens: [],
  normalizer: { type: 'Sequence', normalizers: [
    { type: 'NFKC' }, { type: 'NFD' }, { type: 'StripAccents' }, { type: 'Lowercase' },
    { type: 'Replace', pattern: { Regex: '[ \t\r\n]+' }, content: ' ' },
    { type: 'Replace', pattern: { Regex: '^ $' }, content: '\uE000' },
    { type: 'Strip', strip_left: true, strip_right: true },
    { type: 'Replace', pattern: { String: '\uE000' }, content: ' ' }] },
  pre_tokenizer: null, post_processor: null, decoder: null,
  model: { type: 'WordLevel', vocab: { '[UNK]': 0 }, unk_token: '[UNK]' },
};

async function main() {
  const [path, out] = process.argv.slice(2);
  const t0 = process.hrtime.bigint();
  const tok = Tokenizer.fromFile(path);
  const norm = Tokenizer.fromString(JSON.stringify(normCfg)).getNormalizer();
  const n = tok.getVocabSize(true);
  const ids = [];
  for (let i = 0; i < n; i++) ids.push([i]);
  const texts = await tok.decodeBatch(ids, false);
  const keyToNew = new Map();
  const map = new Uint32Array(n);
  for (let i = 0; i < n; i++) {
    const text = texts[i];
    let key;
    if (text.includes('\uFFFD')) key = tok.idToToken(i);
    else { const k = norm.normalizeString(text); key = k ? k : text; }
    let v = keyToNew.get(key);
    if (v === undefined) { v = keyToNew.size; keyToNew.set(key, v); }
    map[i] = v;
  }
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  fs.writeFileSync(out, Buffer.from(map.buffer));
  console.log(JSON.stringify({ vocab_size: n, compressed_vocab_size: keyToNew.size, seconds: secs }));
}
main().catch((e) => { console.error(e); process.exit(1); });
