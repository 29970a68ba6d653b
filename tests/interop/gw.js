#!/usr/bin/env node
/**
 * graphile-worker 0.17.3 as a subprocess for kongtask's interop tests.
 *
 * The Python tests spawn this script so that the real npm package, not a
 * re-implementation of it, reads and writes the shared queue. Subcommands:
 *
 *   run     --dsn --schema --record-table --name [--concurrency N]
 *           [--tasks a,b] [--fail-tasks c] [--block-tasks d]
 *           [--forbidden-flags x,y] [--poll-interval MS] [--crontab TEXT] [--once]
 *       A worker pool. Every task first inserts what its handler saw into
 *       <schema>.<record-table> (the same columns the Python side records),
 *       then succeeds (--tasks), throws Error(payload.error) (--fail-tasks) or
 *       waits until the pool aborts it (--block-tasks). Prints `READY <poolId>`
 *       once its LISTEN is in place, stops gracefully on SIGTERM and then
 *       prints `STOPPED`; with --once it runs what is due, prints `DONE`, exits.
 *       --crontab gives graphile-worker's `crontab` option (crontab file text;
 *       without it the pool has no cron items and reads no crontab file), and
 *       reports its cron events: `CRON_BACKFILL <ts>` per backfilled minute
 *       (emitted before that minute's statement runs), `CRON_SCHEDULE <ts>`
 *       per timer tick with due items, and `CRON_STARTED <start>` once
 *       registration and backfill are done (ISO 8601 UTC, milliseconds).
 *   add     --dsn --schema --ops JSON   addJob / addJobs / quickAddJob calls
 *   admin   --dsn --schema --ops JSON   rescheduleJobs / completeJobs /
 *                                       permanentlyFailJobs / forceUnlockWorkers
 *       `--ops` is a list of {"fn": name, "args": [...]}, run in order; any
 *       string `runAt` inside the arguments becomes a Date, as the API wants.
 *       Prints one JSON line: the list of results.
 *   migrate --dsn --schema   graphile-worker's own migration of the schema.
 *
 * stdout carries only these protocol lines; graphile-worker's warnings and
 * errors go to stderr, which the tests show when something fails.
 */
"use strict";

const { EventEmitter } = require("node:events");
const { parseArgs } = require("node:util");
const {
  Logger,
  makeWorkerUtils,
  quickAddJob,
  run,
  runMigrations,
  runOnce,
} = require("graphile-worker");

const ADD_FUNCTIONS = new Set(["addJob", "addJobs", "quickAddJob"]);
const ADMIN_FUNCTIONS = new Set([
  "rescheduleJobs",
  "completeJobs",
  "permanentlyFailJobs",
  "forceUnlockWorkers",
]);

/** Quotes an identifier the way PostgreSQL (and pg's escapeIdentifier) does. */
function quoteIdent(name) {
  return `"${String(name).replace(/"/g, '""')}"`;
}

function say(line) {
  process.stdout.write(`${line}\n`);
}

/** Only problems reach stderr: per-job info lines would drown them at 5,000 jobs. */
const logger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") {
    process.stderr.write(`[graphile-worker ${level}] ${message}\n`);
  }
});

function list(value) {
  return value ? value.split(",").filter(Boolean) : [];
}

function required(opts, name) {
  if (opts[name] === undefined) {
    throw new Error(`--${name} is required`);
  }
  return opts[name];
}

function sharedOptions(opts) {
  return {
    connectionString: required(opts, "dsn"),
    schema: required(opts, "schema"),
    logger,
  };
}

/**
 * The insert every task runs first, parameterised; what it stores is what the
 * handler was given (JS Dates keep milliseconds, flags are an object's keys).
 */
function makeRecorder(schema, table, runner) {
  const target = `${quoteIdent(schema)}.${quoteIdent(table)}`;
  const text = `insert into ${target}
    (runner, worker_id, job_id, task_identifier, queue_name, payload, priority,
     run_at, attempts, max_attempts, key, flags, revision)
    values ($1, $2, $3::bigint, $4, $5, $6::jsonb, $7, $8::timestamptz, $9, $10, $11,
            $12::text[], $13)`;
  return async (payload, helpers) => {
    const { job } = helpers;
    const queueName = await helpers.getQueueName();
    await helpers.query(text, [
      runner,
      job.locked_by,
      job.id,
      job.task_identifier,
      queueName,
      JSON.stringify(payload === undefined ? null : payload),
      job.priority,
      job.run_at.toISOString(),
      job.attempts,
      job.max_attempts,
      job.key,
      job.flags ? Object.keys(job.flags) : null,
      job.revision,
    ]);
  };
}

function makeTaskList(opts) {
  const record = makeRecorder(
    required(opts, "schema"),
    required(opts, "record-table"),
    required(opts, "name"),
  );
  const tasks = {};
  for (const name of list(opts.tasks)) {
    tasks[name] = async (payload, helpers) => {
      await record(payload, helpers);
    };
  }
  for (const name of list(opts["fail-tasks"])) {
    tasks[name] = async (payload, helpers) => {
      await record(payload, helpers);
      throw new Error((payload && payload.error) || "failed");
    };
  }
  for (const name of list(opts["block-tasks"])) {
    tasks[name] = async (payload, helpers) => {
      await record(payload, helpers);
      await new Promise((_, reject) => {
        helpers.abortSignal.addEventListener("abort", () => reject(new Error("aborted")), {
          once: true,
        });
      });
    };
  }
  if (Object.keys(tasks).length === 0) {
    throw new Error("no tasks: pass --tasks, --fail-tasks or --block-tasks");
  }
  return tasks;
}

async function cmdRun(opts) {
  const events = new EventEmitter();
  let poolId = null;
  let ready = false;
  events.on("pool:create", ({ workerPool }) => {
    poolId = workerPool.id;
  });
  events.on("pool:listen:success", ({ client }) => {
    // The pool sends LISTEN on this client right after emitting the event; a
    // query queued behind it resolves only once LISTEN has been executed.
    setImmediate(() => {
      client.query("select 1").then(
        () => {
          if (!ready) {
            ready = true;
            say(`READY ${poolId}`);
          }
        },
        () => {},
      );
    });
  });
  if (opts.crontab !== undefined) {
    events.on("cron:backfill", ({ timestamp }) => say(`CRON_BACKFILL ${timestamp}`));
    events.on("cron:schedule", ({ timestamp }) => {
      say(`CRON_SCHEDULE ${new Date(timestamp).toISOString()}`);
    });
    events.on("cron:started", ({ start }) => say(`CRON_STARTED ${start.toISOString()}`));
  }
  const forbidden = list(opts["forbidden-flags"]);
  const options = {
    ...sharedOptions(opts),
    concurrency: Number(opts.concurrency ?? 1),
    pollInterval: Number(opts["poll-interval"] ?? 2000),
    maxPoolSize: Math.max(Number(opts.concurrency ?? 1) + 2, 4),
    noHandleSignals: true,
    taskList: makeTaskList(opts),
    // `crontab` and `parsedCronItems` are mutually exclusive; an empty list
    // keeps graphile-worker from looking for a crontab file in the cwd.
    ...(opts.crontab !== undefined ? { crontab: opts.crontab } : { parsedCronItems: [] }),
    forbiddenFlags: forbidden.length > 0 ? forbidden : null,
    events,
  };
  if (opts.once) {
    await runOnce(options);
    say("DONE");
    return;
  }
  const runner = await run(options);
  process.once("SIGTERM", () => {
    runner.stop().then(
      () => say("STOPPED"),
      (error) => {
        process.stderr.write(`stop failed: ${error}\n`);
        process.exitCode = 1;
      },
    );
  });
  await runner.promise;
}

/** Turns string `runAt`s (JSON has no dates) into the Date objects the API expects. */
function reviveDates(value) {
  if (Array.isArray(value)) {
    return value.map(reviveDates);
  }
  if (value && typeof value === "object") {
    const out = {};
    for (const [key, inner] of Object.entries(value)) {
      out[key] = key === "runAt" && typeof inner === "string" ? new Date(inner) : reviveDates(inner);
    }
    return out;
  }
  return value;
}

async function cmdUtils(opts, allowed) {
  const ops = JSON.parse(required(opts, "ops"));
  const shared = sharedOptions(opts);
  const utils = await makeWorkerUtils(shared);
  const results = [];
  try {
    for (const { fn, args } of ops) {
      if (!allowed.has(fn)) {
        throw new Error(`${fn} is not one of ${[...allowed].join(", ")}`);
      }
      const revived = reviveDates(args);
      const result =
        fn === "quickAddJob" ? await quickAddJob(shared, ...revived) : await utils[fn](...revived);
      results.push(result === undefined ? null : result);
    }
  } finally {
    await utils.release();
  }
  say(JSON.stringify(results));
}

async function main() {
  const { positionals, values } = parseArgs({
    allowPositionals: true,
    options: {
      dsn: { type: "string" },
      schema: { type: "string" },
      name: { type: "string" },
      "record-table": { type: "string" },
      concurrency: { type: "string" },
      tasks: { type: "string" },
      "fail-tasks": { type: "string" },
      "block-tasks": { type: "string" },
      "forbidden-flags": { type: "string" },
      "poll-interval": { type: "string" },
      crontab: { type: "string" },
      once: { type: "boolean" },
      ops: { type: "string" },
    },
  });
  const [command] = positionals;
  switch (command) {
    case "run":
      return cmdRun(values);
    case "add":
      return cmdUtils(values, ADD_FUNCTIONS);
    case "admin":
      return cmdUtils(values, ADMIN_FUNCTIONS);
    case "migrate":
      await runMigrations(sharedOptions(values));
      say("MIGRATED");
      return undefined;
    default:
      throw new Error(`unknown command ${JSON.stringify(command)}; expected run, add, admin or migrate`);
  }
}

main().catch((error) => {
  process.stderr.write(`${error && error.stack ? error.stack : error}\n`);
  process.exitCode = 1;
});
