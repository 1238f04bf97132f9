// Benchmark of issue #8's integrations against the real binary, the reference platform and
// PostgreSQL (not part of the test run: `node bench/integrations.mjs`, see bench/README.md).
//
// (a) acceptance → active: for each of BENCH_COMPANIES companies in turn, the platform's
//     signed `invite.accepted` webhook is posted, then GET polls the integration every
//     BENCH_POLL_MS until it is `active`; the time from the POST to the first `active` is
//     one sample. Ponte runs with its default worker settings. Prints p50/p95/p99.
// (b) reactivations per second: BENCH_REACTIVATIONS companies, each driven over REST
//     disable → reactivate (with the reviewed data; the platform has an account) →
//     confirm, BENCH_CONCURRENCY at a time; completed rituals / wall time.
//
// The invitee needs a linked external ID: the account's owner links the upstream's mario
// once, in Chromium (as the e2e tests do).
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';

const e2e = resolve(import.meta.dirname, '../tests/e2e');
const target = process.env.CARGO_TARGET_DIR ?? resolve(import.meta.dirname, '../target');
if (!process.env.PONTE_BIN) {
  const release = resolve(target, 'release/ponte');
  process.env.PONTE_BIN = existsSync(release) ? release : resolve(target, 'debug/ponte');
}
const { startPonte, freePort } = await import(`${e2e}/ponte.mjs`);
const { startUpstream } = await import(`${e2e}/upstream.mjs`);
const { startPlatform } = await import(`${e2e}/platform.mjs`);
const { launchBrowser, signIn } = await import(`${e2e}/browser.mjs`);
const { until, partitaIva, companyJson, freshDatabase } = await import(`${e2e}/pos.mjs`);

const COMPANIES = Number(process.env.BENCH_COMPANIES ?? 100);
const REACTIVATIONS = Number(process.env.BENCH_REACTIVATIONS ?? 200);
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 8);
const POLL_MS = Number(process.env.BENCH_POLL_MS ?? 10);
const DATABASE = process.env.PONTE_TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const KIND = 'digital_invoice';

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

async function main() {
  const cleanups = [];
  const cleanup = async () => {
    for (const c of cleanups.reverse()) await c().catch((e) => console.error(`cleanup: ${e.message}`));
  };
  try {
    const port = await freePort();
    const base = `http://127.0.0.1:${port}`;
    const upstream = await startUpstream({ ponteBase: base });
    cleanups.push(() => upstream.stop());
    const platform = await startPlatform({ clientId: 'ponte', clientSecret: randomBytes(16).toString('hex'), webhookSecret: randomBytes(24).toString('hex') });
    cleanups.push(() => platform.stop());
    const db = await freshDatabase(DATABASE, 'bench');
    cleanups.push(() => db.drop());
    const ponte = await startPonte({
      ...upstream.env,
      ...platform.env,
      PONTE_DATABASE_URL: db.url,
      PONTE_MASTER_KEY: randomBytes(32).toString('base64'),
    }, { port });
    cleanups.push(() => ponte.stop());
    console.log(`ponte: ${process.env.PONTE_BIN}\ndatabase: PostgreSQL (${new URL(DATABASE).host}), worker: defaults`);

    // The owner links mario, once.
    const owner = await ponte.newUser('bench-owner');
    const browser = await launchBrowser();
    cleanups.push(() => browser.close());
    const page = await browser.page();
    await page.goto(`${base}/login`);
    await signIn(page, owner);
    await page.click('#connect-tsid');
    await page.waitForSelector('#upstream-login');
    const mario = upstream.user('mario.rossi@gruppo.it');
    await page.fill('#upstream-login input[name=login]', mario.email);
    await page.fill('#upstream-login input[name=password]', mario.password);
    await page.click('#upstream-submit');
    await page.waitForURL((url) => url.origin === base && url.pathname === '/link/confirm');
    await page.click('#link-continue');
    await page.waitForURL(`${base}/`);

    let serial = Math.floor(Math.random() * 5_000_000);
    const api = async (method, path, body) => {
      const answer = await ponte.api(method, path, body);
      if (answer.status >= 300) throw new Error(`${method} ${path}: ${answer.status} ${JSON.stringify(answer.body)}`);
      return answer.body;
    };
    const newCompany = async () => {
      const vat = partitaIva((serial += 1));
      const created = await api('POST', `/api/v1/accounts/${owner.accountId}/companies`, companyJson(vat));
      const seeded = platform.seedAccount({ vat_number: vat, owner_email: mario.email });
      return { id: created.id, vat, seeded, path: `/api/v1/accounts/${owner.accountId}/companies/${created.id}/integrations/${KIND}` };
    };
    const ritual = async (c) => {
      await api('POST', `${c.path}/disable`);
      const awaiting = await api('POST', `${c.path}/reactivate`, { company: companyJson(c.vat) });
      if (awaiting.state !== 'awaiting_confirmation') throw new Error(`reactivate: ${awaiting.state}`);
      const pending = await api('POST', `${c.path}/confirm`);
      if (pending.state !== 'invite_pending') throw new Error(`confirm: ${pending.state}`);
      c.invite = pending.invite.id;
    };

    // (b) first: reactivations per second, end to end over REST.
    const batch = [];
    for (let n = 0; n < REACTIVATIONS; n += 1) batch.push(await newCompany());
    const started = performance.now();
    await pool(batch, CONCURRENCY, ritual);
    const seconds = (performance.now() - started) / 1000;
    console.log(`(b) reactivations: ${REACTIVATIONS} companies, disable → reactivate → confirm, concurrency ${CONCURRENCY}: `
      + `${seconds.toFixed(2)} s, ${(REACTIVATIONS / seconds).toFixed(1)} reactivations/s`);

    // (a) acceptance → active, one company at a time, on the invites of (b) first.
    const accept = batch.slice(0, COMPANIES);
    while (accept.length < COMPANIES) {
      const c = await newCompany();
      await ritual(c);
      accept.push(c);
    }
    // Let the confirm jobs (link the company at the platform) finish first.
    await until('every company linked at the platform', () => accept.every((c) =>
      platform.requests.some((r) => r.method === 'POST' && r.path === `/v1/accounts/${c.seeded.id}/companies` && r.status === 200)), { ms: 120_000 });
    const samples = [];
    for (const c of accept) {
      const t0 = performance.now();
      const sent = await platform.sendWebhook(`${base}/webhooks/platform`, {
        type: 'invite.accepted',
        data: { account_id: c.seeded.id, vat_number: c.vat, reference: c.invite, email: mario.email },
      });
      if (sent.status !== 204) throw new Error(`webhook: ${sent.status} ${sent.body}`);
      for (;;) {
        const now = await api('GET', c.path);
        if (now.state === 'active') break;
        if (now.state === 'failed') throw new Error(`activation failed: ${now.last_error}`);
        if (performance.now() - t0 > 60_000) throw new Error(`not active within 60 s: ${now.state}`);
        await new Promise((ok) => { setTimeout(ok, POLL_MS); });
      }
      samples.push(performance.now() - t0);
    }
    samples.sort((x, y) => x - y);
    const fmt = (ms) => `${ms.toFixed(0)} ms`;
    console.log(`(a) acceptance → active over ${samples.length} companies (poll every ${POLL_MS} ms): `
      + `p50 ${fmt(percentile(samples, 50))}, p95 ${fmt(percentile(samples, 95))}, p99 ${fmt(percentile(samples, 99))}, max ${fmt(samples.at(-1))}`);
    const counts = platform.activations();
    if (counts.effective !== samples.length) throw new Error(`the platform saw ${counts.effective} activations for ${samples.length} companies`);
  } finally {
    await cleanup();
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
