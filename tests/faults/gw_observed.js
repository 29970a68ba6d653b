#!/usr/bin/env node
/**
 * A graphile-worker 0.17 pool whose one task, `work`, logs like the fault
 * suite's Python handler (tests/faults/harness.py): a `start` and an `end`
 * line per run, with the job id, the attempts it was given, the pid and
 * CLOCK_MONOTONIC in nanoseconds (process.hrtime reads the same clock as
 * Python's time.monotonic_ns), appended to the observer log one write each.
 *
 *   node gw_observed.js DSN SCHEMA LOG CONCURRENCY
 *
 * Prints `READY` once the pool runs; SIGTERM stops it gracefully and prints
 * `STOPPED` (the protocol of tests/interop/gw.js, so tests/interop/support.py's
 * NodePool drives it).
 */
"use strict";

const fs = require("node:fs");
const path = require("node:path");
const { setTimeout: sleep } = require("node:timers/promises");

const { Logger, run } = require(
  path.join(__dirname, "..", "interop", "node_modules", "graphile-worker"),
);

const [dsn, schema, logPath, concurrency] = process.argv.slice(2);
const log = fs.openSync(logPath, "a");

function note(kind, job) {
  fs.writeSync(log, `${kind} ${job.id} ${job.attempts} ${process.pid} ${process.hrtime.bigint()}\n`);
}

async function work(payload, helpers) {
  note("start", helpers.job);
  await sleep((payload && payload.ms) || 0);
  note("end", helpers.job);
}

const logger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") {
    process.stderr.write(`[graphile-worker ${level}] ${message}\n`);
  }
});

async function main() {
  const runner = await run({
    connectionString: dsn,
    schema,
    concurrency: Number(concurrency),
    maxPoolSize: Number(concurrency) + 2,
    pollInterval: 200,
    noHandleSignals: true,
    parsedCronItems: [],
    taskList: { work },
    logger,
  });
  // The pool is fetching (it also polls, so a LISTEN still connecting misses nothing).
  process.stdout.write("READY\n");
  process.once("SIGTERM", () => {
    runner.stop().then(
      () => process.stdout.write("STOPPED\n"),
      (error) => {
        process.stderr.write(`stop failed: ${error}\n`);
        process.exitCode = 1;
      },
    );
  });
  await runner.promise;
}

main().catch((error) => {
  process.stderr.write(`${error && error.stack ? error.stack : error}\n`);
  process.exitCode = 1;
});
