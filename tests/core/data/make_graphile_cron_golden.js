// Regenerates graphile_cron_golden.json: which of a fixed set of UTC minutes
// graphile-worker's own cron matcher accepts, for random expressions in the
// syntax both implementations share. The Python tests replay it without Node.
//
//   node tests/core/data/make_graphile_cron_golden.js /path/to/node_modules/graphile-worker
const path = require("path");
const fs = require("fs");
const gw = process.argv[2];
if (!gw) throw new Error("usage: node make_graphile_cron_golden.js <graphile-worker package dir>");
const { createCronMatcher } = require(path.join(gw, "dist", "cronMatcher.js"));

let seed = 20240229;
function rand(n) {
  // xorshift32: deterministic across Node versions
  seed ^= seed << 13; seed >>>= 0;
  seed ^= seed >>> 17;
  seed ^= seed << 5; seed >>>= 0;
  return seed % n;
}
function item(lo, hi, extra) {
  switch (rand(4)) {
    case 0: return "*";
    case 1: return `*/${1 + rand(hi - lo + 2)}`;
    case 2: return String(lo + rand(hi - lo + 1 + extra));
    default: {
      const a = lo + rand(hi - lo + extra);
      const b = a + 1 + rand(hi + extra - a);
      return `${a}-${b}`;
    }
  }
}
function field(lo, hi, extra, full) {
  if (rand(3) === 0) return full[rand(full.length)];
  const n = 1 + rand(3);
  const parts = [];
  for (let i = 0; i < n; i++) parts.push(item(lo, hi, extra));
  return parts.join(",");
}
const expressions = [];
for (let i = 0; i < 160; i++) {
  const timeFree = i % 2 === 0;
  const minute = timeFree ? "*" : field(0, 59, 0, ["*", "0", "*/15"]);
  const hour = timeFree ? "*" : field(0, 23, 0, ["*", "0", "9-17"]);
  const dom = field(1, 31, 0, ["*", "1-31", "*/1", "29", "31", "13", "30,31"]);
  const month = field(1, 12, 0, ["*", "2", "2,4", "1-12"]);
  const dow = field(0, 6, 1, ["*", "0-7", "*/1", "5", "7", "1-5"]);
  expressions.push(`${minute} ${hour} ${dom} ${month} ${dow}`);
}
const moments = [];
for (let i = 0; i < 400; i++) {
  const year = 1999 + rand(110);
  const month = rand(12);
  const last = new Date(Date.UTC(year, month + 1, 0)).getUTCDate();
  const day = rand(4) === 0 ? last - rand(2) : 1 + rand(last);
  moments.push(Date.UTC(year, month, day, rand(24), rand(60)));
}
const cases = expressions.map((expression) => {
  const match = createCronMatcher(expression, "golden");
  const bits = moments.map((ms) => {
    const ts = new Date(ms);
    return match({
      min: ts.getUTCMinutes(), hour: ts.getUTCHours(), date: ts.getUTCDate(),
      month: ts.getUTCMonth() + 1, dow: ts.getUTCDay(),
    }) ? "1" : "0";
  });
  return { expression, matches: bits.join("") };
});
const out = {
  generator: "make_graphile_cron_golden.js",
  graphile_worker: require(path.join(gw, "package.json")).version,
  moments: moments.map((ms) => new Date(ms).toISOString().slice(0, 16)),
  cases,
};
fs.writeFileSync(path.join(__dirname, "graphile_cron_golden.json"), JSON.stringify(out, null, 0) + "\n");
console.log(`wrote ${cases.length} expressions x ${moments.length} moments`);
