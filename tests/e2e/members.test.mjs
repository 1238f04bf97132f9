// Members, their permissions and the seats they take (issue 9), end to end: the POS
// backend buys and pays seats and creates a member over REST, the member signs in through
// Ponte's OP in Debian's Chromium with openid-client as the relying party, jose checks the
// `access` claim against the published JWKS as a downstream service would, and the seats
// lapse and come back the way a year passing and a renewal would.
//
// One scenario, run on each engine: the embedded SQLite (always) and PostgreSQL (with
// PONTE_TEST_DATABASE_URL, as .ci/run sets it). A year is played by moving the grant's
// `valid_until` into the past in the scenario's own database; the seat sweep runs every
// second here, and every wait is a poll.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { decodeJwt } from 'jose';
import { startPonte } from './ponte.mjs';
import { launchBrowser, needsBrowser, signIn } from './browser.mjs';
import {
  client, startRp, registerClient, discover, authorizationRequest, backAtRp, remoteJwks,
  verifyIdToken, verifyAccessToken, oauthError,
} from './rp.mjs';
import { until, partitaIva, companyJson, freshDatabase } from './pos.mjs';

const TEST_DATABASE_URL = process.env.PONTE_TEST_DATABASE_URL;
const MISSING_DATABASE = 'set PONTE_TEST_DATABASE_URL (as .ci/run does) to run the PostgreSQL scenario';
const needsDatabase = TEST_DATABASE_URL || process.env.CI ? false : MISSING_DATABASE;

const sqliteTest = { skip: needsBrowser, timeout: 90_000 };
const postgresTest = { skip: needsBrowser || needsDatabase, timeout: 90_000 };

const run = promisify(execFile);
let serial = Math.floor(Math.random() * 9_000_000);
const nextVat = () => partitaIva((serial += 1) % 10_000_000);

// One statement on an SQLite file while Ponte has it open (waits for its locks), printing
// the rows it returns, tab-separated, as `psql -tA` does.
const SQLITE_EXEC = `
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=20)
with db:
    rows = db.execute(sys.argv[2]).fetchall()
for row in rows:
    print("\\t".join(str(v) for v in row))
`;

let browser;
after(async () => {
  const opened = await browser?.catch(() => null);
  const blocked = opened?.blocked ?? [];
  await opened?.close();
  assert.deepEqual(blocked, [], 'no page asked for anything beyond loopback');
});

/** A new tab with no cookies (Chromium starts with the first scenario). */
async function freshPage() {
  browser ??= launchBrowser();
  return (await browser).page();
}

/**
 * Ponte on `engine` with the seat sweep every second, the RP's web side, and `sql(statement)`
 * on Ponte's own database (its rows, as text). Everything stops when the test ends; Ponte
 * must not have panicked.
 */
async function world(t, engine) {
  const cleanups = [];
  t.after(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup().catch((e) => console.error(`cleanup: ${e.message}`));
  });
  let db = null;
  if (engine === 'postgres') {
    assert.ok(TEST_DATABASE_URL, MISSING_DATABASE);
    db = await freshDatabase(TEST_DATABASE_URL, 'members');
    cleanups.push(() => db.drop());
  }
  const ponte = await startPonte({
    PONTE_SEATS__SWEEP_INTERVAL_SECS: '1',
    PONTE_WORKER__POLL_INTERVAL_MS: '100',
    ...(db ? { PONTE_DATABASE_URL: db.url, PONTE_MASTER_KEY: randomBytes(32).toString('base64') } : {}),
  });
  cleanups.push(async () => {
    const log = ponte.stderr();
    await ponte.stop();
    assert.doesNotMatch(log, /panicked/, `ponte panicked:\n${log}`);
  });
  const rp = await startRp();
  cleanups.push(() => rp.close());
  const sql = async (statement) => {
    const { stdout } = db
      ? await run('psql', [db.url, '-v', 'ON_ERROR_STOP=1', '-qtAc', statement], { timeout: 20_000 })
      : await run('python3', ['-c', SQLITE_EXEC, join(ponte.dataDir, 'ponte.db'), statement], { timeout: 20_000 });
    return stdout.trim();
  };
  return { ponte, rp, sql };
}

/** `ponte.api` that must answer `status`; returns the body. */
async function expect(ponte, status, method, path, body) {
  const got = await ponte.api(method, path, body);
  assert.equal(got.status, status, `${method} ${path}: ${JSON.stringify(got.body)}`);
  return got.body;
}

async function newCompany(ponte, accountId) {
  const vat = nextVat();
  const created = await expect(ponte, 201, 'POST', `/api/v1/accounts/${accountId}/companies`, companyJson(vat));
  return created.id;
}

async function introspect(ponte, registered, token) {
  const response = await fetch(`${ponte.base}/oauth2/introspect`, {
    method: 'POST',
    headers: {
      authorization: `Basic ${Buffer.from(`${registered.client_id}:${registered.client_secret}`).toString('base64')}`,
      'content-type': 'application/x-www-form-urlencoded',
    },
    body: new URLSearchParams({ token }),
    signal: AbortSignal.timeout(10_000),
  });
  assert.equal(response.status, 200, 'introspection answers 200');
  return response.json();
}

function assertOnLoginPage(ponte, page) {
  const url = new URL(page.url());
  assert.equal(`${url.origin}${url.pathname}`, `${ponte.base}/login`, `expected Ponte's login page, browser is at ${page.url()}`);
}

/** The code flow in `page`: authorize, Ponte's login page, back at the RP, the code redeemed. */
async function signInThroughOp(w, page, config, person) {
  const request = await authorizationRequest(config, w.rp);
  await page.goto(request.url.href);
  assertOnLoginPage(w.ponte, page);
  await signIn(page, person);
  const callback = await backAtRp(page, w.rp, request.state);
  assert.equal(callback.searchParams.get('iss'), w.ponte.base);
  const tokens = await client.authorizationCodeGrant(config, callback, request.checks);
  return { request, tokens };
}

/** What jose sees in the tokens: both verified against the JWKS; the ID token bound to `nonce`. */
async function verified(config, tokens, nonce) {
  const jwks = remoteJwks(config);
  const { payload: at } = await verifyAccessToken(config, tokens.access_token, jwks);
  const id = tokens.id_token ? (await verifyIdToken(config, tokens.id_token, jwks)).payload : null;
  if (nonce !== undefined) assert.equal(id?.nonce, nonce, 'the ID token answers this request');
  return { at, id };
}

async function scenario(t, engine) {
  const w = await world(t, engine);
  const { ponte } = w;
  const owner = await ponte.newUser(`owner-${engine}`);
  const account = `/api/v1/accounts/${owner.accountId}`;
  const bar = await newCompany(ponte, owner.accountId);
  const pizzeria = await newCompany(ponte, owner.accountId);
  const member = {
    email: `anna-${engine}@esempio.it`,
    name: 'Anna Bianchi',
    password: 'la password di Anna',
  };
  const grants = [
    { permission: 'invoices:read', companies: 'all' },
    { permission: 'invoices:send', companies: [bar] },
  ];
  const firstClaim = { role: 'member', permissions: { 'invoices:read': 'all', 'invoices:send': [bar] } };
  const newGrants = [
    { permission: 'invoices:read', companies: [pizzeria] },
    { permission: 'invoices:download', companies: 'all' },
  ];
  const newClaim = { role: 'member', permissions: { 'invoices:read': [pizzeria], 'invoices:download': 'all' } };
  const seats = async () => (await expect(ponte, 200, 'GET', account)).seats;

  // --- A paid seat and a member on it --------------------------------------------------
  const noSeat = await expect(ponte, 409, 'POST', `${account}/users`, { ...member, role: 'member', permissions: grants });
  assert.equal(noSeat.code, 'no_free_seat', 'no member before a seat is paid');

  const bought = await expect(ponte, 201, 'POST', `${account}/seats`, { quantity: 1, order_reference: 'ordine-1', extend_other_grants: false });
  assert.equal(bought.state, 'pending_payment');
  assert.equal(bought.paid_at, null);
  assert.deepEqual(await seats(), { valid: 0, used: 0, free: 0 }, 'an unpaid grant seats nobody');
  const paid = await expect(ponte, 200, 'POST', `${account}/seats/${bought.id}/paid`);
  assert.equal(paid.grant.state, 'active');
  assert.deepEqual(paid.restored, []);
  assert.deepEqual(paid.seats, { valid: 1, used: 0, free: 1 });
  const yearAhead = Date.parse(paid.grant.valid_until) - Date.parse(paid.grant.paid_at);
  assert.ok(yearAhead >= 365 * 86_400_000, `paid for a year: ${paid.grant.paid_at} → ${paid.grant.valid_until}`);

  const created = await expect(ponte, 201, 'POST', `${account}/users`, { ...member, role: 'member', permissions: grants });
  assert.equal(created.role, 'member');
  assert.equal(created.status, 'active');
  assert.equal(created.has_password, true);
  assert.deepEqual(created.permissions, grants);
  const user = `${account}/users/${created.id}`;
  assert.deepEqual(await seats(), { valid: 1, used: 1, free: 0 });

  // --- The member signs in through the OP; jose checks the claim ------------------------
  const registered = await registerClient(ponte, w.rp);
  const config = await discover(ponte, registered);
  const page = await freshPage();
  const first = await signInThroughOp(w, page, config, member);
  const { at, id } = await verified(config, first.tokens, first.request.nonce);
  assert.equal(at.sub, created.id);
  assert.equal(at.account_id, owner.accountId);
  assert.equal(at.role, 'member');
  assert.deepEqual(at.access, firstClaim, 'the access token carries the role and permissions per company');
  assert.equal(id.sub, created.id);
  assert.equal(id.email, member.email);
  assert.deepEqual(id.access, firstClaim, 'the ID token (scope profile) carries them too');
  const info = await client.fetchUserInfo(config, first.tokens.access_token, created.id);
  assert.deepEqual(info.access, firstClaim, 'so does userinfo');

  // --- Permissions change: the old token keeps its claim, the refresh brings the new one
  const changed = await expect(ponte, 200, 'PUT', `${user}/permissions`, { permissions: newGrants });
  assert.deepEqual(changed.permissions, newGrants);
  assert.deepEqual(decodeJwt(first.tokens.access_token).access, firstClaim, 'a token already issued is what it was');
  const described = await introspect(ponte, registered, first.tokens.access_token);
  assert.equal(described.active, true);
  assert.deepEqual(described.access, newClaim, 'introspection describes the permissions of now');

  const refreshed = await client.refreshTokenGrant(config, first.tokens.refresh_token);
  const changedTokens = await verified(config, refreshed);
  assert.equal(changedTokens.at.sub, created.id);
  assert.deepEqual(changedTokens.at.access, newClaim, 'the refreshed access token carries the new permissions');
  if (changedTokens.id) assert.deepEqual(changedTokens.id.access, newClaim, 'and so does a refreshed ID token');
  const refreshToken = refreshed.refresh_token;
  assert.equal(typeof refreshToken, 'string');

  // --- A year passes: the grant lapses, the sweep suspends the member -----------------
  const past = Math.floor(Date.now() / 1000) - 60;
  assert.equal(await w.sql(`UPDATE seat_grants SET valid_until = ${past} WHERE id = '${bought.id}' RETURNING id`), bought.id,
    'the grant\'s expiry moved back');
  const suspended = await until('the sweep suspends the member', async () => {
    const now = await expect(ponte, 200, 'GET', user);
    return now.status === 'suspended' ? now : null;
  }, { ms: 15_000, every: 100 });
  assert.equal(suspended.status_reason, 'seats_lapsed');
  assert.deepEqual(suspended.permissions, newGrants, 'suspended, never deleted: the grants are kept');
  assert.deepEqual(await seats(), { valid: 0, used: 0, free: 0 });
  const lapsedList = await expect(ponte, 200, 'GET', `${account}/seats`);
  assert.deepEqual(lapsedList.grants.map((g) => [g.id, g.state]), [[bought.id, 'expired']]);

  const ownerMail = await until('the owner is told by mail', async () => {
    const mail = await ponte.outbox();
    return mail.find((m) => m.to?.includes(owner.email) && m.body.includes(member.email)) ?? null;
  }, { ms: 15_000, every: 100 });
  assert.ok(ownerMail.subject, 'the mail to the owner has a subject');

  const refusedRefresh = await oauthError(client.refreshTokenGrant(config, refreshToken));
  assert.equal(refusedRefresh.error, 'invalid_grant', 'the refresh token stopped working');
  assert.deepEqual(await introspect(ponte, registered, refreshed.access_token), { active: false },
    'introspection no longer vouches for the member\'s access token');
  const userinfo = await fetch(`${ponte.base}/oauth2/userinfo`, { headers: { authorization: `Bearer ${refreshed.access_token}` } });
  assert.equal(userinfo.status, 401, 'userinfo refuses the suspended member');

  // The browser's Ponte session ended with the lapse: authorizing shows the login page,
  // and the member's right password is refused there.
  const refusedRequest = await authorizationRequest(config, w.rp);
  await page.goto(refusedRequest.url.href);
  assertOnLoginPage(ponte, page);
  await assert.rejects(signIn(page, member), /sign-in refused/, 'a suspended member cannot sign in');
  assertOnLoginPage(ponte, page);
  assert.ok(!w.rp.hits.some((hit) => hit.searchParams.get('state') === refusedRequest.state), 'the RP was not called back');

  // --- Renewal: a new grant, once paid, restores the member ---------------------------
  const renewal = await expect(ponte, 201, 'POST', `${account}/seats`, { quantity: 1, order_reference: 'ordine-2', extend_other_grants: false });
  assert.equal(renewal.state, 'pending_payment');
  assert.equal((await expect(ponte, 200, 'GET', user)).status, 'suspended', 'an unpaid renewal restores nobody');
  const renewed = await expect(ponte, 200, 'POST', `${account}/seats/${renewal.id}/paid`);
  assert.equal(renewed.grant.state, 'active');
  assert.deepEqual(renewed.restored, [created.id]);
  assert.deepEqual(renewed.seats, { valid: 1, used: 1, free: 0 });
  const restored = await expect(ponte, 200, 'GET', user);
  assert.equal(restored.status, 'active');
  assert.equal(restored.status_reason, undefined, 'no reason left once active');

  const stillRefused = await oauthError(client.refreshTokenGrant(config, refreshToken));
  assert.equal(stillRefused.error, 'invalid_grant', 'renewal does not revive the tokens the lapse ended');

  const again = await signInThroughOp(w, page, config, member);
  const back = await verified(config, again.tokens, again.request.nonce);
  assert.equal(back.at.sub, created.id);
  assert.deepEqual(back.at.access, newClaim, 'signed in again, with the permissions set before the lapse');
  assert.deepEqual(back.id.access, newClaim);
}

test('a member with per-company permissions signs in through the OP; the claim follows the permissions, the lapse and the renewal (SQLite)', sqliteTest,
  (t) => scenario(t, 'sqlite'));

test('a member with per-company permissions signs in through the OP; the claim follows the permissions, the lapse and the renewal (PostgreSQL)', postgresTest,
  (t) => scenario(t, 'postgres'));
