// Command-line parsing shared by bench.js and run_worker.js: both take the
// same connection flags and treat any bad flag as a usage error (exit 2).
"use strict";

const { parseArgs } = require("node:util");

// Where the queue is, and the switches every script has.
const COMMON_OPTIONS = {
  dsn: { type: "string" },
  schema: { type: "string", default: "graphile_worker" },
  "poll-interval": { type: "string" },
  verbose: { type: "boolean", default: false },
  help: { type: "boolean", short: "h", default: false },
};

// `usage(msg)` prints msg (if any) and the usage text, then exits with 2.
function makeUsage(script, text) {
  return (msg) => {
    if (msg) process.stderr.write(`${script}: ${msg}\n`);
    process.stderr.write(text);
    process.exit(2);
  };
}

// Strict parseArgs over COMMON_OPTIONS plus `options`; --dsn is required.
function parseOptions(argv, options, usage) {
  let values;
  try {
    ({ values } = parseArgs({ args: argv, options: { ...COMMON_OPTIONS, ...options }, strict: true }));
  } catch (e) {
    usage(e.message);
  }
  if (values.help) usage();
  if (!values.dsn) usage("--dsn is required");
  return values;
}

// A whole-number flag >= min, or `fallback` when it is absent.
function intArg(values, name, fallback, usage, min = 1) {
  const raw = values[name];
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min) usage(`--${name} must be an integer >= ${min}`);
  return n;
}

module.exports = { intArg, makeUsage, parseOptions };
