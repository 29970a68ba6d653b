#!/usr/bin/env node
// graphile-worker's side of the drain-from-spawn scenario: a worker process
// as a throughput-minded user runs it, until SIGTERM.
//
//   node run_worker.js --dsn DSN --schema SCHEMA [--concurrency C] [--poll-interval MS] [--verbose]
//
// It calls run() with the settings of preset.js (the same as bench.js: local
// queue 500, batch delays 0, pool max(10, C + 2), a logger that prints only
// warnings and errors) and one task, bench_noop, that counts its calls and
// sums payload.i. On SIGTERM (or SIGINT) it stops the pool gracefully and
// prints {"handled": n, "sum": s, ...} as its only stdout line, so the
// harness can check that every job ran exactly once. The password belongs in
// PGPASSWORD, not in the DSN (other users can read command lines).
"use strict";

const { parseCronItems, run } = require("graphile-worker");
const GW_VERSION = require("graphile-worker/package.json").version;
const { intArg, makeUsage, parseOptions } = require("./cli");
const { TASK, makeLogger, makePreset } = require("./preset");

// Keep stdout for the result line, whatever a dependency prints.
console.log = console.error;
console.info = console.error;
console.debug = console.error;

const usage = makeUsage(
  "run_worker.js",
  "usage: node run_worker.js --dsn DSN --schema SCHEMA [--concurrency C] " +
    "[--poll-interval MS] [--verbose]\n",
);

function parseCli(argv) {
  const values = parseOptions(argv, { concurrency: { type: "string" } }, usage);
  return {
    dsn: values.dsn,
    schema: values.schema,
    concurrency: intArg(values, "concurrency", 24, usage),
    pollInterval: intArg(values, "poll-interval", 2000, usage),
    verbose: values.verbose,
  };
}

async function main() {
  const cfg = parseCli(process.argv.slice(2));
  const seen = { handled: 0, sum: 0 };
  // Installed before run() so an early signal still gets a graceful stop.
  const stopRequested = new Promise((resolve) => {
    process.once("SIGTERM", () => resolve("SIGTERM"));
    process.once("SIGINT", () => resolve("SIGINT"));
  });
  const runner = await run({
    preset: makePreset(cfg, makeLogger(cfg.verbose)),
    taskList: {
      [TASK]: (payload) => {
        seen.handled += 1;
        seen.sum += payload.i;
      },
    },
    parsedCronItems: parseCronItems([]),
    // Our own handlers above stop the pool and then report; graphile-worker's
    // would re-raise the signal and leave no exit line.
    noHandleSignals: true,
  });
  const signal = await stopRequested;
  await runner.stop();
  process.stdout.write(
    `${JSON.stringify({ ...seen, signal, impl: "graphile-worker", version: GW_VERSION })}\n`,
  );
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`[gw-worker] FAILED: ${err?.stack ?? err}\n`);
    process.stdout.write(`${JSON.stringify({ error: String(err?.message ?? err) })}\n`);
    process.exit(1);
  },
);
