#!/usr/bin/env node
// graphile-worker side of the kongtask benchmark.
//
// The Python harness spawns this script once per scenario and parses the LAST
// line of stdout as the JSON result. Everything else (progress, library logs)
// goes to stderr so that stdout stays machine-readable. See README.md.
"use strict";

const { EventEmitter } = require("node:events");
const { performance } = require("node:perf_hooks");
const { makeWorkerUtils, parseCronItems, run, runMigrations } = require("graphile-worker");
const GW_VERSION = require("graphile-worker/package.json").version;
const { intArg, makeUsage, parseOptions } = require("./cli");
const { TASK, makeLogger, makePreset } = require("./preset");

// Anything a dependency prints with console.log would corrupt the result line,
// so route the stdout-flavoured console methods to stderr. The result (and
// the READY line of the idle scenario) are written with process.stdout.write.
console.log = console.error;
console.info = console.error;
console.debug = console.error;

const SCENARIOS = [
  "enqueue",
  "drain",
  "latency",
  "scheduled",
  "memory",
  "startup",
  "idle",
];
const DEFAULTS = {
  enqueue: { jobs: 200000 },
  drain: { jobs: 200000 },
  memory: { jobs: 200000 },
  latency: { samples: 1000 },
  scheduled: { samples: 200 },
  startup: { samples: 5 },
};
const LATENCY_WARMUP = 50;
const MEMORY_SAMPLE_MS = 50;
const EMPTY_POLL_MS = 5;

// ---------------------------------------------------------------- CLI

const usage = makeUsage(
  "bench.js",
  "usage: node bench.js --dsn DSN --schema SCHEMA --scenario " +
    `{${SCENARIOS.join("|")}} [--jobs N] [--concurrency C] [--samples S]\n` +
    "                     [--migrate] [--skip-analyze] [--poll-interval MS] [--timeout SEC] [--windows] [--verbose]\n",
);

function parseCli(argv) {
  const values = parseOptions(
    argv,
    {
      scenario: { type: "string" },
      jobs: { type: "string" },
      concurrency: { type: "string" },
      samples: { type: "string" },
      migrate: { type: "boolean", default: false },
      "skip-analyze": { type: "boolean", default: false },
      timeout: { type: "string" },
      windows: { type: "boolean", default: false },
    },
    usage,
  );
  if (!values.scenario) usage("--scenario is required");
  if (!SCENARIOS.includes(values.scenario)) usage(`unknown scenario '${values.scenario}'`);
  const d = DEFAULTS[values.scenario] ?? {};
  const int = (name, fallback) => intArg(values, name, fallback, usage);
  return {
    dsn: values.dsn,
    schema: values.schema,
    scenario: values.scenario,
    jobs: int("jobs", d.jobs ?? 5000),
    samples: int("samples", d.samples ?? 1),
    concurrency: int("concurrency", 24),
    migrate: values.migrate,
    analyze: !values["skip-analyze"],
    // graphile-worker's own default; only matters for future-dated jobs
    // (scheduled scenario) and as the idle re-poll period of the local queue.
    pollInterval: int("poll-interval", 2000),
    timeoutMs: int("timeout", 900) * 1000,
    windows: values.windows,
    verbose: values.verbose,
  };
}

// ---------------------------------------------------------------- helpers

const progress = (msg) => process.stderr.write(`[gw-bench] ${msg}\n`);

function deferred() {
  let resolve, reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Every wait in this file is bounded so a wedged pool fails the run loudly
// instead of hanging the harness forever.
function withTimeout(promise, ms, what) {
  let timer;
  const t = new Promise((_, rej) => {
    timer = setTimeout(() => rej(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, t]).finally(() => clearTimeout(timer));
}

// Same rule as pg's escapeIdentifier; written out so we don't depend on pg
// directly (it is only a transitive dependency of graphile-worker).
const quoteIdent = (name) => `"${String(name).replace(/"/g, '""')}"`;

// Linear interpolation between closest ranks (numpy's default "linear"
// method), so the numbers are comparable with a Python harness using numpy.
function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  const idx = (sorted.length - 1) * p;
  const lo = Math.floor(idx);
  const hi = Math.ceil(idx);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (idx - lo);
}

const round = (x, digits = 3) => (x == null ? null : Number(x.toFixed(digits)));

function summarize(values) {
  const s = [...values].sort((a, b) => a - b);
  return {
    min: round(s[0]),
    p50: round(percentile(s, 0.5)),
    p95: round(percentile(s, 0.95)),
    p99: round(percentile(s, 0.99)),
    max: round(s[s.length - 1]),
  };
}

const mb = (bytes) => round(bytes / (1024 * 1024), 1);

// ---------------------------------------------------------------- timed windows

// One line from stdin per call (the harness's GO answers).
function makeLineReader() {
  const rl = require("node:readline").createInterface({ input: process.stdin });
  const lines = rl[Symbol.asyncIterator]();
  return async () => {
    const { value, done } = await lines.next();
    if (done) throw new Error("stdin closed while waiting for GO");
    return value.trim();
  };
}

// This process's CPU (user + system, all threads) over the timed window(s) of
// a scenario. With the handshake on (--windows), each edge prints
// "WINDOW start|end [name]" and waits for "GO" on stdin, so the harness can
// sample PostgreSQL's CPU while this process stands still at the edge. The
// wait lies outside the window. kongtask's child does the same.
class CpuWindow {
  constructor(handshake) {
    this.nextLine = handshake ? makeLineReader() : null;
    this.started = {};
    this.usedUs = {};
  }

  async edge(edge, name) {
    if (!this.nextLine) return;
    process.stdout.write(`${`WINDOW ${edge} ${name}`.trimEnd()}\n`);
    const answer = await this.nextLine();
    if (answer !== "GO") throw new Error(`expected GO on stdin, got '${answer}'`);
  }

  async open(name = "") {
    await this.edge("start", name);
    this.started[name] = process.cpuUsage();
  }

  async close(name = "") {
    const used = process.cpuUsage(this.started[name]);
    this.usedUs[name] = used.user + used.system;
    await this.edge("end", name);
  }

  report(jobs, name = "") {
    const us = this.usedUs[name];
    return {
      [`${name}cpu_s`]: round(us / 1e6, 4),
      [`${name}cpu_us_per_job`]: round(us / jobs, 2),
    };
  }
}

class Bench {
  constructor(cfg) {
    this.cfg = cfg;
    this.logger = makeLogger(cfg.verbose);
    this.utils = null;
    this.window = new CpuWindow(cfg.windows);
    this.jobsTable = `${quoteIdent(cfg.schema)}._private_jobs`;
    // The task body is swapped per scenario; the task list itself is fixed.
    this.onJob = () => {};
    this.taskList = {
      [TASK]: (payload) => {
        this.onJob(payload);
      },
    };
  }

  async open() {
    if (this.cfg.migrate) {
      const t = performance.now();
      await runMigrations({ preset: makePreset(this.cfg, this.logger) });
      progress(`runMigrations took ${(performance.now() - t).toFixed(0)} ms`);
    }
    // WorkerUtils has its own small pg pool, used for setup/verification SQL
    // and for the producer side (addJobs) so it doesn't compete with workers.
    this.utils = await makeWorkerUtils({
      preset: makePreset({ ...this.cfg, concurrency: 1 }, this.logger),
    });
  }

  async close() {
    if (this.utils) await this.utils.release();
  }

  query(text, values = []) {
    return this.utils.withPgClient((client) => client.query(text, values));
  }

  async countJobs() {
    const { rows } = await this.query(`select count(*)::int as n from ${this.jobsTable}`);
    return rows[0].n;
  }

  // Every scenario that processes jobs starts from an empty table so leftovers
  // from a previous run can't be counted or skew timings.
  async clearJobs() {
    await this.query(`truncate ${this.jobsTable}`);
  }

  // Bulk insert done entirely in Postgres (not timed anywhere): keeps the Node
  // heap free of 200k spec objects, which matters for the memory scenario.
  async insertJobsSql(n) {
    const s = quoteIdent(this.cfg.schema);
    await this.query(
      `select count(*) from ${s}.add_jobs(array(
         select json_populate_record(null::${s}.job_spec,
                  json_build_object('identifier', $1::text,
                                    'payload', json_build_object('i', g)))
         from generate_series(1, $2::int) g))`,
      [TASK, n],
    );
  }

  async waitForEmpty(deadline) {
    for (;;) {
      if ((await this.countJobs()) === 0) return;
      if (performance.now() > deadline) throw new Error("jobs table never emptied");
      await sleep(EMPTY_POLL_MS);
    }
  }

  // Starts a pool. Resolves to { runner, ready } where `ready` resolves with
  // timings once the pool can take a job: run() has resolved (migration check
  // done, workers and local queue created, first fetch issued) AND the LISTEN
  // for "jobs:insert" has been acknowledged by the server, so a job added from
  // then on is noticed without waiting for a poll.
  async startPool() {
    const events = new EventEmitter();
    const listening = deferred();
    events.once("pool:listen:success", ({ client }) => {
      // graphile-worker emits this synchronously just before it sends
      // LISTEN on that (otherwise idle) client, so the client's next 'drain'
      // (query queue empty) is the moment the server has executed the LISTEN.
      // Queueing our own query there instead would trip pg's
      // "client already executing a query" deprecation warning.
      client.once("drain", () => listening.resolve(performance.now()));
    });
    const t0 = performance.now();
    const runner = await run({
      preset: makePreset(this.cfg, this.logger, events),
      taskList: this.taskList,
      parsedCronItems: parseCronItems([]),
      noHandleSignals: true,
    });
    const tRun = performance.now();
    const ready = withTimeout(listening.promise, 30000, "pool LISTEN").then((tListen) => {
      const tReady = Math.max(tRun, tListen);
      return {
        runToReadyMs: tReady - t0,
        runResolvedMs: tRun - t0,
        listenMs: tListen - t0,
        readyEpochMs: Date.now() - (performance.now() - tReady),
      };
    });
    return { runner, ready, t0 };
  }

  // ------------------------------------------------------------ scenarios

  async enqueue() {
    const n = this.cfg.jobs;
    await this.clearJobs();
    const specs = new Array(n);
    for (let i = 0; i < n; i++) specs[i] = { identifier: TASK, payload: { i } };
    progress(`addJobs(${n})`);
    await this.window.open();
    const t0 = performance.now();
    await this.utils.addJobs(specs);
    const seconds = (performance.now() - t0) / 1000;
    await this.window.close();
    const inserted = await this.countJobs();
    await this.clearJobs();
    if (inserted !== n) throw new Error(`expected ${n} jobs in table, found ${inserted}`);
    return {
      scenario: "enqueue",
      jobs: n,
      seconds: round(seconds),
      jobs_per_sec: round(n / seconds, 1),
      ...this.window.report(n),
    };
  }

  // Shared by drain and memory: run a pool over `n` already-queued (or
  // about-to-be-queued) jobs and wait until the table is empty.
  async drainJobs(n, deadline) {
    let started = 0;
    const allStarted = deferred();
    this.onJob = () => {
      if (++started === n) allStarted.resolve();
    };
    await withTimeout(allStarted.promise, deadline - performance.now(), `${n} jobs to start`);
    // Handlers have all run, but with completeJobBatchDelay the final DELETE
    // batch may still be in flight: the queue is only drained once the table
    // is empty.
    await this.waitForEmpty(deadline);
    return started;
  }

  async drain() {
    const n = this.cfg.jobs;
    await this.clearJobs();
    progress(`inserting ${n} jobs`);
    await this.insertJobsSql(n);
    // On a jobs table that has never been analyzed (e.g. a freshly migrated
    // schema) the planner runs graphile-worker's get-jobs query as a seq scan
    // + sort of every queued row per fetch, ~3x slower than the index plan it
    // picks once column stats exist. Analyze (untimed) so we measure the
    // queue, not whether autovacuum happened to get there first.
    if (this.cfg.analyze) await this.query(`analyze ${this.jobsTable}`);
    progress("draining");
    await this.window.open();
    const deadline = performance.now() + this.cfg.timeoutMs;
    const done = this.drainJobs(n, deadline);
    const { runner, t0 } = await this.startPool();
    try {
      await done;
      const seconds = (performance.now() - t0) / 1000;
      await this.window.close();
      return {
        scenario: "drain",
        jobs: n,
        seconds: round(seconds),
        jobs_per_sec: round(n / seconds, 1),
        ...this.window.report(n),
        remaining: null, // filled in by main() once the pool has shut down
        concurrency: this.cfg.concurrency,
        analyzed: this.cfg.analyze,
      };
    } finally {
      await runner.stop();
    }
  }

  async latency() {
    const total = LATENCY_WARMUP + this.cfg.samples;
    await this.clearJobs();
    const { runner, ready } = await this.startPool();
    try {
      await ready;
      const waiters = new Map();
      this.onJob = (payload) => {
        const t1 = process.hrtime.bigint();
        waiters.get(payload.sample)?.resolve(t1);
      };
      const lat = [];
      const fromCall = [];
      for (let i = 0; i < total; i++) {
        const started = deferred();
        waiters.set(i, started);
        const tCall = process.hrtime.bigint();
        await runner.addJob(TASK, { sample: i });
        const t0 = process.hrtime.bigint();
        const t1 = await withTimeout(started.promise, 30000, `latency sample ${i}`);
        waiters.delete(i);
        if (i >= LATENCY_WARMUP) {
          lat.push(Number(t1 - t0) / 1e6);
          fromCall.push(Number(t1 - tCall) / 1e6);
        }
        if ((i + 1) % 250 === 0) progress(`latency ${i + 1}/${total}`);
      }
      return {
        scenario: "latency",
        samples: lat.length,
        ...summarize(lat),
        unit: "ms",
        // The NOTIFY and addJob's reply race on different connections, so the
        // handler occasionally starts before addJob's promise continuation
        // runs: t1 - t0 < 0. Kept as measured; these are counted here, and
        // call_to_start (t0 taken before calling addJob) is never negative.
        negative: lat.filter((x) => x < 0).length,
        call_to_start: summarize(fromCall),
      };
    } finally {
      await runner.stop();
    }
  }

  async scheduled() {
    const n = this.cfg.samples;
    await this.clearJobs();
    const { runner, ready } = await this.startPool();
    try {
      await ready;
      const lateness = [];
      const allDone = deferred();
      // Date.now() on both sides is meaningful because Postgres and Node read
      // the same host clock; run_at_ms is carried in the payload for that.
      this.onJob = (payload) => {
        lateness.push(Date.now() - payload.run_at_ms);
        if (lateness.length === n) allDone.resolve();
      };
      const base = Date.now();
      const specs = [];
      for (let i = 0; i < n; i++) {
        // Spread evenly over 1..3 s in the future.
        const runAtMs = base + 1000 + Math.round((2000 * i) / Math.max(1, n - 1));
        specs.push({ identifier: TASK, payload: { i, run_at_ms: runAtMs }, runAt: new Date(runAtMs) });
      }
      await this.utils.addJobs(specs);
      await withTimeout(allDone.promise, 3000 + 10 * this.cfg.pollInterval + 30000, "scheduled jobs");
      return {
        scenario: "scheduled",
        samples: n,
        ...summarize(lateness),
        unit: "ms",
        poll_interval_ms: this.cfg.pollInterval,
      };
    } finally {
      await runner.stop();
    }
  }

  async memory() {
    const n = this.cfg.jobs;
    await this.clearJobs();
    if (this.cfg.analyze) {
      // The jobs are inserted while the pool runs, so there is no moment to
      // analyze them. Column statistics survive TRUNCATE, so gather them on a
      // throwaway batch first: the drain then uses the same index plan as the
      // drain scenario instead of a seq scan + sort per fetch.
      progress("seeding planner statistics");
      await this.insertJobsSql(n);
      await this.query(`analyze ${this.jobsTable}`);
      await this.clearJobs();
    }
    const { runner, ready } = await this.startPool();
    let sampler = null;
    try {
      await ready;
      await sleep(1000);
      const idle = process.memoryUsage().rss;
      let peak = idle;
      sampler = setInterval(() => {
        const rss = process.memoryUsage().rss;
        if (rss > peak) peak = rss;
      }, MEMORY_SAMPLE_MS);
      const deadline = performance.now() + this.cfg.timeoutMs;
      const done = this.drainJobs(n, deadline);
      progress(`inserting ${n} jobs into the running pool`);
      await this.window.open();
      const t0 = performance.now();
      await this.insertJobsSql(n);
      await done;
      const seconds = (performance.now() - t0) / 1000;
      await this.window.close();
      clearInterval(sampler);
      sampler = null;
      // One last sample so a spike in the final <50 ms isn't missed.
      peak = Math.max(peak, process.memoryUsage().rss);
      return {
        scenario: "memory",
        jobs: n,
        idle_rss_mb: mb(idle),
        peak_rss_mb: mb(peak),
        seconds: round(seconds),
        ...this.window.report(n),
        remaining: null,
        analyzed: this.cfg.analyze,
      };
    } finally {
      if (sampler) clearInterval(sampler);
      await runner.stop();
    }
  }

  async startup() {
    await this.clearJobs();
    const runs = [];
    for (let i = 0; i < this.cfg.samples; i++) {
      const { runner, ready } = await this.startPool();
      try {
        runs.push(await ready);
      } finally {
        await runner.stop();
      }
    }
    const first = runs[0];
    const warm = runs.slice(1).map((r) => r.runToReadyMs);
    return {
      scenario: "startup",
      // The first run in a fresh process is the one a real deployment pays.
      run_to_ready_ms: round(first.runToReadyMs),
      run_resolved_ms: round(first.runResolvedMs),
      listen_ready_ms: round(first.listenMs),
      warm_run_to_ready_p50_ms: warm.length ? round(percentile(warm.sort((a, b) => a - b), 0.5)) : null,
      samples: runs.length,
      ready_definition: "run() resolved and LISTEN jobs:insert acknowledged",
    };
  }

  async idle() {
    // Installed before starting so an early SIGTERM still gets a clean
    // shutdown (noHandleSignals means graphile-worker won't do it for us).
    const stopRequested = new Promise((resolve) => {
      process.once("SIGTERM", () => resolve("SIGTERM"));
      process.once("SIGINT", () => resolve("SIGINT"));
    });
    const { runner, ready } = await this.startPool();
    const r = await ready;
    process.stdout.write(`READY ${Math.round(r.readyEpochMs)}\n`);
    progress("idle; waiting for SIGTERM/SIGINT");
    const signal = await stopRequested;
    const t = performance.now();
    await runner.stop();
    return {
      scenario: "idle",
      run_to_ready_ms: round(r.runToReadyMs),
      ready_epoch_ms: Math.round(r.readyEpochMs),
      signal,
      shutdown_ms: round(performance.now() - t),
    };
  }
}

// ---------------------------------------------------------------- main

let cfg = null;

async function main() {
  cfg = parseCli(process.argv.slice(2));
  const bench = new Bench(cfg);
  let result;
  try {
    await bench.open();
    result = await bench[cfg.scenario]();
    // Check after the pool has shut down, so the count can't race its final
    // completion batch.
    if (result && "remaining" in result) result.remaining = await bench.countJobs();
  } finally {
    await bench.close().catch((e) => progress(`release failed: ${e.message}`));
  }
  result = { ...result, impl: "graphile-worker", version: GW_VERSION };
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`[gw-bench] FAILED: ${err?.stack ?? err}\n`);
    const error = String(err?.message ?? err);
    process.stdout.write(`${JSON.stringify({ scenario: cfg?.scenario ?? null, error })}\n`);
    process.exit(1);
  },
);
