// Benchmark of issue #10's password recovery under a burst, against the real binary,
// PostgreSQL, Redis and aiosmtpd (not part of the test run: `node bench/recovery.mjs`, see
// bench/README.md).
//
// BENCH_USERS users are created over REST (one account each, the user its owner); then
// BENCH_REQUESTS `POST /api/v1/password/forgot`, one per user, BENCH_CONCURRENCY at a time,
// each request's send time noted by email. Meanwhile aiosmtpd's Maildir is polled every
// BENCH_POLL_MS and each reset mail's first sighting noted by its `To:`. Prints accepted
// requests per second (202s over the burst's wall time) and request → mail p50/p95/p99/max.
// Ponte runs with its default worker settings; only the per-client limit is raised, since
// every request comes from 127.0.0.1. Nothing is asserted about time: the run fails only
// when something is broken (a non-202, a mail missing or mailed twice).
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';

const e2e = resolve(import.meta.dirname, '../tests/e2e');
const target = process.env.CARGO_TARGET_DIR ?? resolve(import.meta.dirname, '../target');
if (!process.env.PONTE_BIN) {
  const release = resolve(target, 'release/ponte');
  process.env.PONTE_BIN = existsSync(release) ? release : resolve(target, 'debug/ponte');
}
// pos.mjs reads it when imported.
process.env.PONTE_TEST_AIOSMTPD ??= join(homedir(), '.cache/ponte-venv/bin/aiosmtpd');
const { startPonte } = await import(`${e2e}/ponte.mjs`);
const { startAiosmtpd, freshDatabase, until } = await import(`${e2e}/pos.mjs`);

const USERS = Number(process.env.BENCH_USERS ?? 500);
const REQUESTS = Number(process.env.BENCH_REQUESTS ?? 500);
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 32);
const POLL_MS = Number(process.env.BENCH_POLL_MS ?? 20);
const DATABASE = process.env.PONTE_TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const REDIS = process.env.PONTE_REDIS_URL ?? 'redis://127.0.0.1:6379/';

function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

/** Runs `work(item)` over `items`, `limit` at a time. */
async function pool(items, limit, work) {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const item = items[next];
      next += 1;
      await work(item);
    }
  }));
}

/**
 * Polls `<maildir>/new` every `ms` and notes, for each reset mail, when its file was first
 * seen, by recipient: `{seen: Map<email, ms[]>, stop()}`. Other mail is skipped.
 */
function watchMaildir(maildir, ms) {
  const known = new Set();
  const seen = new Map();
  let running = true;
  let failure = null;
  const loop = (async () => {
    while (running) {
      let names = [];
      try { names = await readdir(join(maildir, 'new')); } catch (error) { if (error.code !== 'ENOENT') throw error; }
      const now = performance.now();
      for (const name of names) {
        if (known.has(name)) continue;
        known.add(name);
        const text = await readFile(join(maildir, 'new', name), 'utf8');
        if (!text.includes('/password/reset?token=')) continue;
        const head = text.slice(0, text.search(/\r?\n\r?\n/)).replace(/\r?\n[ \t]+/g, ' ');
        const to = head.match(/^To: (.*)$/mi)?.[1]?.match(/[^\s<>",]+@[^\s<>",]+/)?.[0]?.toLowerCase();
        if (!to) throw new Error(`a reset mail without a recipient: ${name}`);
        seen.set(to, [...(seen.get(to) ?? []), now]);
      }
      await new Promise((ok) => { setTimeout(ok, ms); });
    }
  })().catch((error) => { failure = error; });
  return {
    seen,
    failure: () => failure,
    async stop() { running = false; await loop; },
  };
}

async function main() {
  const cleanups = [];
  const cleanup = async () => {
    for (const c of cleanups.reverse()) await c().catch((e) => console.error(`cleanup: ${e.message}`));
  };
  try {
    const smtp = await startAiosmtpd();
    cleanups.push(() => smtp.stop());
    const db = await freshDatabase(DATABASE, 'bench');
    cleanups.push(() => db.drop());
    const ponte = await startPonte({
      ...smtp.env,
      PONTE_DATABASE_URL: db.url,
      PONTE_REDIS_URL: REDIS,
      // Counters expire with their 15-minute window; a prefix of its own keeps runs apart.
      PONTE_REDIS_KEY_PREFIX: `ponte-bench-${randomBytes(5).toString('hex')}:`,
      PONTE_MASTER_KEY: randomBytes(32).toString('base64'),
      // Every request comes from 127.0.0.1: the per-client limit (30) would stop the burst.
      PONTE_RECOVERY__MAX_PER_IP: String(REQUESTS * 10),
      // Unset: the default (4), as production starts.
      ...(process.env.BENCH_WORKER_CONCURRENCY ? { PONTE_WORKER__CONCURRENCY: process.env.BENCH_WORKER_CONCURRENCY } : {}),
    });
    cleanups.push(() => ponte.stop());
    console.log(`ponte: ${process.env.PONTE_BIN}\ndatabase: PostgreSQL (${new URL(DATABASE).host}), `
      + `session store: Redis (${new URL(REDIS).host}), mail: aiosmtpd, worker: `
      + `${process.env.BENCH_WORKER_CONCURRENCY ? `concurrency ${process.env.BENCH_WORKER_CONCURRENCY}` : 'defaults'}`);

    const emails = Array.from({ length: USERS }, (_, n) => `bench-user-${n}@esempio.it`);
    await pool(emails, 8, async (email) => {
      const created = await ponte.api('POST', '/api/v1/accounts', { name: `Bar ${email}`, owner: { email, name: 'Utente bench' } });
      if (created.status !== 201) throw new Error(`create account: ${created.status} ${JSON.stringify(created.body)}`);
    });

    const watch = watchMaildir(smtp.maildir, POLL_MS);
    cleanups.push(() => watch.stop());
    const burst = Array.from({ length: REQUESTS }, (_, n) => emails[n % USERS]);
    const sent = new Map();
    const statuses = new Map();
    const started = performance.now();
    await pool(burst, CONCURRENCY, async (email) => {
      sent.set(email, [...(sent.get(email) ?? []), performance.now()]);
      const response = await fetch(`${ponte.base}/api/v1/password/forgot`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ email }),
        signal: AbortSignal.timeout(30_000),
      });
      await response.arrayBuffer();
      statuses.set(response.status, (statuses.get(response.status) ?? 0) + 1);
      if (response.status !== 202) throw new Error(`forgot ${email}: ${response.status}`);
    });
    const seconds = (performance.now() - started) / 1000;
    const accepted = statuses.get(202) ?? 0;
    console.log(`burst: ${REQUESTS} forgot requests for ${USERS} users, concurrency ${CONCURRENCY}: `
      + `${seconds.toFixed(2)} s, ${accepted} × 202, ${(accepted / seconds).toFixed(1)} accepted requests/s`);

    const expected = [...sent.values()].reduce((n, times) => n + times.length, 0);
    const count = () => [...watch.seen.values()].reduce((n, times) => n + times.length, 0);
    await until(`${expected} reset mails in the Maildir`, () => {
      if (watch.failure()) throw watch.failure();
      return count() >= expected;
    }, { ms: 600_000, every: POLL_MS });
    const lastMail = Math.max(...[...watch.seen.values()].flat());
    // A duplicate would come shortly after: give it a few polls' time to show.
    await new Promise((ok) => { setTimeout(ok, 1_000); });
    await watch.stop();
    if (watch.failure()) throw watch.failure();
    const samples = [];
    for (const [email, times] of sent) {
      const mails = (watch.seen.get(email) ?? []).sort((x, y) => x - y);
      if (mails.length !== times.length) throw new Error(`${email}: ${times.length} request(s), ${mails.length} mail(s)`);
      times.sort((x, y) => x - y).forEach((t, i) => samples.push(mails[i] - t));
    }
    const strangers = [...watch.seen.keys()].filter((email) => !sent.has(email));
    if (strangers.length) throw new Error(`reset mails to addresses never asked for: ${strangers.join(', ')}`);
    samples.sort((x, y) => x - y);
    const fmt = (ms) => (ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(0)} ms`);
    console.log(`request → mail at aiosmtpd over ${samples.length} mails (Maildir polled every ${POLL_MS} ms): `
      + `p50 ${fmt(percentile(samples, 50))}, p95 ${fmt(percentile(samples, 95))}, p99 ${fmt(percentile(samples, 99))}, max ${fmt(samples.at(-1))}`);
    console.log(`last mail ${fmt(lastMail - started)} after the burst began; exactly one mail per accepted request`);
  } finally {
    await cleanup();
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
