// A company's invoicing-platform credentials and the master-key ring (issue 10), end to
// end: the real `ponte` binary on PostgreSQL, driven over REST as the POS backend drives
// it, against the reference invoicing platform (platform.mjs).
//
// Every test starts its own peers on free loopback ports and its own database, and stops
// them. Nothing sleeps where a poll can tell. The scheduled re-check after an unanswered
// check waits a minute (credentials.rs `next_check`, not configurable): the test brings
// the scheduled job forward in the database instead of waiting for it. The invite needs
// the owner's linked external ID; the other e2e tests link one in a browser, here the link
// is written straight into the database (linking is not what these tests are about).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { startPonte } from './ponte.mjs';
import { startPlatform } from './platform.mjs';
import { until, partitaIva, companyJson, startReceiver, freshDatabase } from './pos.mjs';

const TEST_DATABASE_URL = process.env.PONTE_TEST_DATABASE_URL;
const MISSING_DATABASE = 'set PONTE_TEST_DATABASE_URL (as .ci/run does) to run the PostgreSQL scenarios';
const databaseTest = { skip: TEST_DATABASE_URL || process.env.CI ? false : MISSING_DATABASE, timeout: 90_000 };

const FAST_WORKER = {
  PONTE_WORKER__BACKOFF_BASE_SECS: '1',
  PONTE_WORKER__BACKOFF_MAX_SECS: '1',
  PONTE_WORKER__MAX_ATTEMPTS: '3',
  PONTE_WORKER__POLL_INTERVAL_MS: '100',
};
const KIND = 'digital_invoice';
const run = promisify(execFile);
let serial = Math.floor(Math.random() * 9_000_000);
const nextVat = () => partitaIva((serial += 1) % 10_000_000);

/** A fresh master key in the configured form (base64 of 32 random bytes). */
const newMasterKey = () => randomBytes(32).toString('base64');
/** The id a sealed value names for `key`: the first 8 bytes of its SHA-256, in hex (seal.rs). */
const keyId = (key) => createHash('sha256').update(Buffer.from(key, 'base64')).digest('hex').slice(0, 16);

/**
 * The peers of one scenario: the reference platform, a fresh database, and `start(env)` for
 * each `ponte serve` (the shared settings plus `env`). Everything stops when the test ends;
 * Ponte must not have panicked.
 */
async function world(t, label) {
  const cleanups = [];
  t.after(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup().catch((e) => console.error(`cleanup: ${e.message}`));
  });
  const platform = await startPlatform({ clientId: 'ponte', clientSecret: randomBytes(16).toString('hex'), webhookSecret: randomBytes(24).toString('base64url') });
  cleanups.push(() => platform.stop());
  assert.ok(TEST_DATABASE_URL, MISSING_DATABASE);
  const db = await freshDatabase(TEST_DATABASE_URL, label);
  cleanups.push(() => db.drop());
  const shared = { ...platform.env, ...FAST_WORKER, PONTE_DATABASE_URL: db.url };
  async function start(env) {
    const ponte = await startPonte({ ...shared, ...env });
    let stopped = null;
    const stop = async () => {
      stopped ??= (async () => {
        const log = ponte.stderr();
        await ponte.stop();
        assert.doesNotMatch(log, /panicked/, `ponte panicked:\n${log}`);
      })();
      return stopped;
    };
    cleanups.push(stop);
    return { ...ponte, stop };
  }
  /** The rows of one SQL query on the scenario's database, as tab-separated lines. */
  const sql = async (statement) => {
    const { stdout } = await run('psql', [db.url, '-v', 'ON_ERROR_STOP=1', '-qAtF', '\t', '-c', statement], { timeout: 20_000 });
    return stdout.split('\n').filter(Boolean);
  };
  return { platform, start, sql };
}

/** Links an external ID (at a made-up company-wide provider) to `user`, as the federation flow would. */
async function linkExternalId(w, user) {
  const subject = randomBytes(8).toString('hex');
  await w.sql(`INSERT INTO external_identities (id, user_id, account_id, provider, issuer, subject, email, name, linked_at)
    VALUES ('link-${subject}', '${user.userId}', '${user.accountId}', 'company', 'https://id.gruppo.example', '${subject}',
            'mario.rossi@gruppo.it', 'Mario Rossi', extract(epoch from now())::bigint)`);
}

function integrationPath(accountId, companyId) {
  return `/api/v1/accounts/${accountId}/companies/${companyId}/integrations/${KIND}`;
}

/**
 * A company of `accountId` with an account at the platform, its integration driven to
 * awaiting_confirmation (disable, then reactivate with the reviewed data), so that it has
 * its `platform_account`. Returns `{id, vat, path}`.
 */
async function companyAtPlatform(ponte, platform, accountId) {
  const vat = nextVat();
  const created = await ponte.api('POST', `/api/v1/accounts/${accountId}/companies`, companyJson(vat));
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const seeded = platform.seedAccount({ vat_number: vat, legal_name: `Bar ${vat} (piattaforma)`, owner_email: 'mario.rossi@gruppo.it' });
  const path = integrationPath(accountId, created.body.id);
  const disabled = await ponte.api('POST', `${path}/disable`);
  assert.equal(disabled.status, 200, JSON.stringify(disabled.body));
  const reviewed = await ponte.api('POST', `${path}/reactivate`, { company: companyJson(vat) });
  assert.equal(reviewed.status, 200, JSON.stringify(reviewed.body));
  assert.equal(reviewed.body.state, 'awaiting_confirmation', JSON.stringify(reviewed.body));
  assert.equal(reviewed.body.platform_account.id, seeded.id);
  return { id: created.body.id, vat, path };
}

async function putLogin(ponte, company, username, password) {
  const put = await ponte.api('PUT', `${company.path}/credentials`, { type: 'username_password', username, password });
  assert.equal(put.status, 204, JSON.stringify(put.body));
}

async function check(ponte, company) {
  const checked = await ponte.api('POST', `${company.path}/credentials/check`);
  assert.equal(checked.status, 200, JSON.stringify(checked.body));
  return checked.body;
}

async function readyz(ponte) {
  const r = await fetch(`${ponte.base}/readyz`, { signal: AbortSignal.timeout(5_000) });
  return r.status;
}

test('credentials at the reference platform: invalid, ok, never shown; unavailable, re-checked by the worker; an API key shown once that checks ok; no secret in the debug log', databaseTest, async (t) => {
  const w = await world(t, 'creds');
  const ponte = await w.start({ PONTE_MASTER_KEY: newMasterKey(), RUST_LOG: 'debug' });
  const owner = await ponte.newUser('creds');
  await linkExternalId(w, owner);
  const company = await companyAtPlatform(ponte, w.platform, owner.accountId);
  const secrets = [];

  // Before any are stored there is nothing to check.
  const none = await ponte.api('POST', `${company.path}/credentials/check`);
  assert.equal(none.status, 409, JSON.stringify(none.body));

  // A login the platform does not know (it knows another password for this user).
  const wrong = `sbagliata-${randomBytes(9).toString('hex')}`;
  const right = `giusta-${randomBytes(9).toString('hex')}`;
  secrets.push(wrong, right);
  w.platform.setValidLogin(company.vat, 'mario.rossi', `non-questa-${randomBytes(6).toString('hex')}`);
  await putLogin(ponte, company, 'mario.rossi', wrong);
  const invalid = await check(ponte, company);
  assert.equal(invalid.type, 'username_password');
  assert.equal(invalid.last_check.outcome, 'invalid_credentials');
  assert.equal(invalid.next_check_at, null, 'a refusal is not retried');

  // The user sets that password at the platform: the same stored login now checks ok.
  w.platform.setValidLogin(company.vat, 'mario.rossi', wrong);
  const ok = await check(ponte, company);
  assert.equal(ok.last_check.outcome, 'ok');
  assert.ok(Date.parse(ok.last_check.at) >= Date.parse(invalid.last_check.at));

  // The new password, stored: the last check is forgotten with the old value.
  w.platform.setValidLogin(company.vat, 'mario.rossi', right);
  await putLogin(ponte, company, 'mario.rossi', right);
  const fresh = await ponte.api('GET', company.path);
  assert.equal(fresh.status, 200);
  assert.equal(fresh.body.credentials.type, 'username_password');
  assert.equal(fresh.body.credentials.last_check, null, JSON.stringify(fresh.body.credentials));
  assert.equal((await check(ponte, company)).last_check.outcome, 'ok');
  const shown = await ponte.api('GET', company.path);
  assert.equal(shown.body.credentials.last_check.outcome, 'ok');
  assert.ok(shown.body.credentials.last_check.at);
  for (const secret of secrets) assert.ok(!JSON.stringify(shown.body).includes(secret), 'GET never shows the password');
  assert.deepEqual(Object.keys(shown.body.credentials).sort(), ['last_check', 'next_check_at', 'type', 'updated_at']);

  // The platform goes away: platform_unavailable, with when Ponte asks again, and the job.
  w.platform.setOutage(true);
  const away = await check(ponte, company);
  assert.equal(away.last_check.outcome, 'platform_unavailable');
  assert.ok(away.next_check_at, JSON.stringify(away));
  const wait = Date.parse(away.next_check_at) - Date.parse(away.last_check.at);
  assert.ok(wait >= 55_000 && wait <= 65_000, `the first re-check is a minute later (${wait} ms)`);
  const listed = await ponte.api('GET', '/api/v1/jobs?state=pending');
  assert.equal(listed.status, 200);
  const scheduled = listed.body.jobs.filter((j) => j.kind === 'platform.check_credentials');
  assert.equal(scheduled.length, 1, JSON.stringify(listed.body.jobs));
  assert.equal(Date.parse(scheduled[0].run_at), Date.parse(away.next_check_at));
  const integrationNow = await ponte.api('GET', company.path);
  assert.equal(integrationNow.body.credentials.last_check.outcome, 'platform_unavailable');
  assert.equal(integrationNow.body.credentials.next_check_at, away.next_check_at);

  // It returns; the scheduled check, brought forward from a minute to now, asks again.
  w.platform.setOutage(false);
  const due = await w.sql(`UPDATE jobs SET run_at = extract(epoch from now())::bigint WHERE id = '${scheduled[0].id}' AND state = 'pending' RETURNING id`);
  assert.equal(due.length, 1);
  const rechecked = await until('the worker\'s re-check', async () => {
    const now = await ponte.api('GET', company.path);
    return now.body.credentials.last_check?.outcome === 'ok' ? now.body.credentials : null;
  });
  assert.equal(rechecked.next_check_at, null);
  const job = await until('the re-check job done', async () => {
    const done = await ponte.api('GET', '/api/v1/jobs?state=done&limit=200');
    return done.body.jobs.find((j) => j.id === scheduled[0].id);
  });
  assert.equal(job.state, 'done');
  assert.equal((await ponte.api('GET', '/api/v1/jobs?state=pending')).body.jobs.filter((j) => j.kind === 'platform.check_credentials').length, 0);

  // "Obtain API key": returned this once, stored as the credentials, and it checks ok.
  const issued = await ponte.api('POST', `${company.path}/credentials/api-key`);
  assert.equal(issued.status, 200, JSON.stringify(issued.body));
  assert.match(issued.body.api_key, /^pk_/);
  assert.equal(issued.headers.get('cache-control'), 'no-store');
  assert.equal(issued.body.credentials.type, 'api_key');
  const apiKey = issued.body.api_key;
  secrets.push(apiKey);
  assert.deepEqual(w.platform.apiKeys().map((k) => k.api_key), [apiKey]);
  const after = await ponte.api('GET', company.path);
  assert.equal(after.body.credentials.type, 'api_key');
  assert.ok(!JSON.stringify(after.body).includes(apiKey), 'a second GET never shows the key');
  const list = await ponte.api('GET', `/api/v1/accounts/${owner.accountId}/integrations`);
  assert.equal(list.status, 200);
  assert.ok(!JSON.stringify(list.body).includes(apiKey));
  const withKey = await check(ponte, company);
  assert.equal(withKey.type, 'api_key');
  assert.equal(withKey.last_check.outcome, 'ok');

  // A key the platform did not issue for this company is refused there.
  const forged = `pk_${randomBytes(24).toString('base64url')}`;
  secrets.push(forged);
  const put = await ponte.api('PUT', `${company.path}/credentials`, { type: 'api_key', api_key: forged });
  assert.equal(put.status, 204);
  assert.equal((await check(ponte, company)).last_check.outcome, 'invalid_credentials');

  // Nothing Ponte logged, at debug level, holds a secret; nor did the database keep one in the clear.
  const log = ponte.stderr();
  assert.match(log, /DEBUG/, 'the log was captured at debug level');
  for (const secret of secrets) assert.ok(!log.includes(secret), `the log holds a secret:\n${log}`);
  const stored = (await w.sql('SELECT sealed FROM integration_credentials')).join('\n')
    + (await w.sql('SELECT payload FROM jobs')).join('\n')
    + (await w.sql('SELECT coalesce(string_agg(detail::text, \' \'), \'\') FROM audit_entries')).join('\n');
  for (const secret of secrets) assert.ok(!stored.includes(secret), 'no secret in the clear in the database');
});

test('master-key rotation with two replicas: roll the ring out, reseal while a replica writes, drop the old key; every value still opens and the latest writes win', databaseTest, async (t) => {
  const w = await world(t, 'rotate');
  const K1 = newMasterKey();
  const K2 = newMasterKey();
  const oldRing = { PONTE_MASTER_KEY: K1 };
  const newRing = { PONTE_MASTER_KEY: K2, PONTE_MASTER_KEYS_RETIRED: K1 };
  let a = await w.start(oldRing);
  let b = await w.start(oldRing);
  const owner = await a.newUser('rotate');
  await linkExternalId(w, owner);

  // Sealed under K1: a webhook receiver's secret and five companies' logins.
  const pos = await startReceiver();
  t.after(() => pos.close());
  const receiver = await a.api('PUT', '/api/v1/webhooks/x', { url: pos.url, secret: pos.secret });
  assert.equal(receiver.status, 200, JSON.stringify(receiver.body));
  const companies = [];
  for (let i = 0; i < 5; i += 1) {
    const company = await companyAtPlatform(i % 2 ? b : a, w.platform, owner.accountId);
    company.password = `prima-${i}-${randomBytes(6).toString('hex')}`;
    await putLogin(i % 2 ? a : b, company, `utente-${i}`, company.password);
    companies.push(company);
  }
  const prefixes = async () => (await w.sql(
    'SELECT split_part(sealed, \'.\', 2) FROM integration_credentials UNION ALL SELECT split_part(secret_sealed, \'.\', 2) FROM webhook_receivers',
  ));
  assert.deepEqual([...new Set(await prefixes())], [keyId(K1)], 'everything is sealed under K1');

  // `ponte keys rotate-master` with a configured key only prints a fresh key and the steps.
  const printed = await a.cli('keys', 'rotate-master');
  assert.match(printed, /PONTE_MASTER_KEYS_RETIRED/);
  assert.match(printed, /ponte keys reseal/);

  // Roll the new ring out, one replica at a time; the other keeps serving meanwhile.
  await a.stop();
  assert.equal(await readyz(b), 200, 'B serves while A restarts');
  assert.equal((await b.api('GET', companies[0].path)).status, 200);
  a = await w.start(newRing);
  await b.stop();
  assert.equal(await readyz(a), 200, 'A serves while B restarts');
  assert.equal((await a.api('GET', companies[1].path)).status, 200);
  b = await w.start(newRing);
  assert.equal(await readyz(b), 200);

  // Nothing is sealed with K2 yet; both replicas on the new ring open the K1 values.
  for (const [i, company] of companies.entries()) {
    w.platform.setValidLogin(company.vat, `utente-${i}`, company.password);
    assert.equal((await check(i % 2 ? a : b, company)).last_check.outcome, 'ok');
  }

  // Reseal once (a one-off run with A's settings) while B keeps rewriting three logins.
  const writing = companies.slice(0, 3);
  const untouched = companies.slice(3);
  let stopWriting = false;
  let written = 0;
  let reseal = { started: Infinity, ended: Infinity };
  let writtenDuring = 0;
  const writer = (async () => {
    for (let n = 0; !stopWriting; n += 1) {
      const company = writing[n % writing.length];
      const password = `durante-${n}-${randomBytes(6).toString('hex')}`;
      await putLogin(b, company, `utente-${companies.indexOf(company)}`, password);
      company.password = password;
      written += 1;
      const at = Date.now();
      if (at >= reseal.started && at <= reseal.ended) writtenDuring += 1;
    }
  })();
  await until('B writing', () => written >= 3);
  reseal.started = Date.now();
  const report = JSON.parse(await a.cli('keys', 'reseal'));
  reseal.ended = Date.now();
  const afterReseal = written;
  await until('B writes after the reseal too', () => written >= afterReseal + 3);
  stopWriting = true;
  await writer;
  t.diagnostic(`reseal ${JSON.stringify(report)} in ${reseal.ended - reseal.started} ms; B wrote ${written} times, ${writtenDuring} during it`);
  assert.ok(writtenDuring > 0, `B wrote while the reseal ran (${written} writes, ${writtenDuring} during)`);
  assert.equal(report.remaining, 0, JSON.stringify(report));
  // The receiver, the untouched logins and the signing keys at least were under K1.
  assert.ok(report.resealed >= 1 + untouched.length, JSON.stringify(report));
  assert.deepEqual(JSON.parse(await a.cli('keys', 'reseal')), { resealed: 0, skipped: 0, remaining: 0 });
  assert.deepEqual([...new Set(await prefixes())], [keyId(K2)], 'everything is sealed under K2');

  // Drop K1 with another rolling restart: everything still opens with K2 alone.
  const onlyK2 = { PONTE_MASTER_KEY: K2 };
  await a.stop();
  assert.equal(await readyz(b), 200);
  a = await w.start(onlyK2);
  await b.stop();
  assert.equal(await readyz(a), 200);
  b = await w.start(onlyK2);

  // The platform accepts only each company's latest password: the last write won.
  for (const [i, company] of companies.entries()) {
    w.platform.setValidLogin(company.vat, `utente-${i}`, company.password);
    const checked = await check(i % 2 ? a : b, company);
    assert.equal(checked.last_check.outcome, 'ok', `company ${i}: ${JSON.stringify(checked)}`);
  }

  // The receiver's secret opens too: it is listed, and a state change reaches it signed.
  const receivers = await b.api('GET', '/api/v1/webhooks');
  assert.ok(receivers.body.receivers.some((r) => r.id === 'x' && r.source === 'api'), JSON.stringify(receivers.body));
  const disabled = await a.api('POST', `${companies[0].path}/disable`);
  assert.equal(disabled.status, 200, JSON.stringify(disabled.body));
  const delivered = await until('the state change delivered to x', () =>
    pos.deliveries.find((d) => d.event?.type === 'integration.state_changed' && d.event.data?.company_id === companies[0].id
      && d.event.data?.state === 'disabled'));
  assert.ok(delivered.authentic, 'signed with the receiver\'s secret, opened under K2');
  assert.equal(pos.deliveries.filter((d) => !d.authentic).length, 0);
  // And tokens still verify (the signing keys were resealed too).
  assert.equal((await b.api('GET', '/api/v1/jobs?state=dead')).body.jobs.length, 0);
});
