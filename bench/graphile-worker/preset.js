// The graphile-worker configuration both bench.js and run_worker.js measure.
//
// One place for it, so the in-process scenarios and the spawned worker of
// drain-from-spawn run graphile-worker with the same settings: its best
// documented throughput configuration (see README.md for each value).
"use strict";

const { Logger } = require("graphile-worker");

// The one task every engine registers (kongtask's bench uses the same name).
const TASK = "bench_noop";

// Quiet logger: only warnings and errors reach stderr unless verbose.
// graphile-worker logs every job at INFO by default; formatting and writing
// those lines costs it a large share of its CPU in a drain.
function makeLogger(verbose) {
  return new Logger((scope) => (level, message) => {
    if (verbose || level === "error" || level === "warning") {
      const label = scope.label ? `/${scope.label}` : "";
      process.stderr.write(`[gw${label} ${level}] ${message}\n`);
    }
  });
}

// cfg: { dsn, schema, concurrency, pollInterval }.
function makePreset(cfg, logger, events) {
  return {
    worker: {
      connectionString: cfg.dsn,
      schema: cfg.schema,
      concurrentJobs: cfg.concurrency,
      // The default pool (10) is smaller than our concurrency; the docs
      // recommend max(10, concurrentJobs + 2).
      maxPoolSize: Math.max(10, cfg.concurrency + 2),
      pollInterval: cfg.pollInterval,
      // Fetch and lock up to 500 jobs per query and hand them to workers from
      // memory. Must be >= concurrency or graphile-worker warns that it will
      // starve workers.
      localQueue: { size: Math.max(500, cfg.concurrency) },
      // Batch completions/failures that happen in the same tick into one
      // DELETE/UPDATE instead of one round trip per job.
      completeJobBatchDelay: 0,
      failJobBatchDelay: 0,
      logger,
      ...(events ? { events } : {}),
    },
  };
}

module.exports = { TASK, makeLogger, makePreset };
