// Companies and their e-invoicing integrations (issue 8), end to end: the real `ponte`
// binary driven over REST as the POS backend drives it, the reference invoicing platform
// (platform.mjs), aiosmtpd carrying the invite mail, oidc-provider as the company-wide ID
// (upstream.mjs, on 127.0.0.2) and Debian's Chromium as the people who accept invites.
//
// Every test starts its own peers on free loopback ports (and, where it needs one, its own
// PostgreSQL database) and stops them. The worker retries fast here (1 s backoff, 3
// attempts, 100 ms polls) so the outage scenarios finish in seconds; nothing sleeps where
// a poll can tell.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { startPonte, freePort } from './ponte.mjs';
import { launchBrowser, needsBrowser, signIn } from './browser.mjs';
import { startUpstream } from './upstream.mjs';
import { startPlatform } from './platform.mjs';
import { registerClient, discover, authorizationRequest, backAtRp, startRp, client } from './rp.mjs';
import {
  until, partitaIva, companyJson, startReceiver, startAiosmtpd, needsAiosmtpd, freshDatabase,
} from './pos.mjs';

const TEST_DATABASE_URL = process.env.PONTE_TEST_DATABASE_URL;
const MISSING_DATABASE = 'set PONTE_TEST_DATABASE_URL (as .ci/run does) to run the PostgreSQL scenarios';
const needsDatabase = TEST_DATABASE_URL || process.env.CI ? false : MISSING_DATABASE;

// Each scenario links an external ID in the browser (the invitee needs one); the mail
// scenarios read the invite from aiosmtpd; the crash and replica ones need PostgreSQL.
const browserTest = { skip: needsBrowser, timeout: 60_000 };
const mailTest = { skip: needsBrowser || needsAiosmtpd, timeout: 60_000 };
const databaseTest = { skip: needsBrowser || needsDatabase, timeout: 90_000 };

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

let browser;
after(async () => {
  const opened = await browser?.catch(() => null);
  const blocked = opened?.blocked ?? [];
  await opened?.close();
  assert.deepEqual(blocked, [], 'no page asked for anything beyond loopback');
});

/** A new tab with no cookies (Chromium starts with the first test that wants it). */
async function freshPage() {
  browser ??= launchBrowser();
  const page = await (await browser).page();
  let last = null;
  page.on('response', (response) => {
    const request = response.request();
    if (request.isNavigationRequest() && request.frame() === page.mainFrame() && (response.status() < 300 || response.status() >= 400)) {
      last = response;
    }
  });
  page.lastDocument = () => last;
  return page;
}

/**
 * The peers of one scenario: the upstream, the reference platform, the POS receiver,
 * aiosmtpd (unless `mail: false`: then Ponte keeps its mail in its outbox), optionally a
 * fresh PostgreSQL database, and Ponte on a port chosen first (the upstream registers its
 * callback). `start()` starts one more `ponte serve` with the same settings (a restart, or
 * with `{}` a replica on a port of its own). Everything stops when the test ends; Ponte
 * must not have panicked.
 */
async function world(t, { database = false, env = {}, mail = true } = {}) {
  const cleanups = [];
  t.after(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup().catch((e) => console.error(`cleanup: ${e.message}`));
  });
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const upstream = await startUpstream({ ponteBase: base });
  cleanups.push(() => upstream.stop());
  const platformWebhookSecret = randomBytes(24).toString('base64url');
  const platform = await startPlatform({ clientId: 'ponte', clientSecret: randomBytes(16).toString('hex'), webhookSecret: platformWebhookSecret });
  cleanups.push(() => platform.stop());
  const pos = await startReceiver();
  cleanups.push(() => pos.close());
  // Without aiosmtpd this throws with needsAiosmtpd's message (reached only under CI).
  const smtp = mail ? await startAiosmtpd() : null;
  if (smtp) cleanups.push(() => smtp.stop());
  let db = null;
  if (database) {
    assert.ok(TEST_DATABASE_URL, MISSING_DATABASE);
    db = await freshDatabase(TEST_DATABASE_URL, database);
    cleanups.push(() => db.drop());
  }
  const shared = {
    ...upstream.env,
    ...platform.env,
    ...pos.env,
    ...(smtp?.env ?? {}),
    ...FAST_WORKER,
    ...(db ? { PONTE_DATABASE_URL: db.url, PONTE_MASTER_KEY: randomBytes(32).toString('base64') } : {}),
    PONTE_PUBLIC_URL: base,
    ...env,
  };
  async function start(options = { port }) {
    const ponte = await startPonte(shared, options);
    cleanups.push(async () => {
      const log = ponte.stderr();
      await ponte.stop();
      assert.doesNotMatch(log, /panicked/, `ponte panicked:\n${log}`);
    });
    return ponte;
  }
  const ponte = await start();
  /** Runs one SQL statement on the scenario's database (to play the passing of days). */
  const sql = (statement) => run('psql', [db.url, '-v', 'ON_ERROR_STOP=1', '-qc', statement], { timeout: 20_000 });
  return { ponte, upstream, platform, pos, smtp, start, sql };
}

// ---- REST, as the POS backend calls it ----

function integrationPath(accountId, companyId) {
  return `/api/v1/accounts/${accountId}/companies/${companyId}/integrations/${KIND}`;
}

/** A new company of `accountId` with a fresh valid Partita IVA; returns `{id, vat}`. */
async function newCompany(ponte, accountId, legalName) {
  const vat = nextVat();
  const created = await ponte.api('POST', `/api/v1/accounts/${accountId}/companies`, companyJson(vat, legalName ?? `Bar ${vat} S.r.l.`));
  assert.equal(created.status, 201, JSON.stringify(created.body));
  assert.equal(created.body.vat_number, vat);
  return { id: created.body.id, vat, legalName: created.body.legal_name };
}

async function integration(ponte, accountId, companyId) {
  const got = await ponte.api('GET', integrationPath(accountId, companyId));
  assert.equal(got.status, 200, JSON.stringify(got.body));
  return got.body;
}

async function act(ponte, accountId, companyId, action, body) {
  const done = await ponte.api('POST', `${integrationPath(accountId, companyId)}/${action}`, body);
  assert.equal(done.status, 200, `${action}: ${JSON.stringify(done.body)}`);
  return done.body;
}

/** Polls GET until the integration is in `state` (and `also` holds); returns it. */
async function reaches(ponte, accountId, companyId, state, also = () => true, ms = 20_000) {
  return until(`integration of ${companyId} ${state}`, async () => {
    const now = await integration(ponte, accountId, companyId);
    return now.state === state && also(now) ? now : null;
  }, { ms });
}

/**
 * The seed's ritual up to the invite: the platform has an account for the VAT number;
 * disable, reactivate with the reviewed data (→ awaiting_confirmation), confirm (→
 * invite_pending). Returns the platform account and the integration after confirm.
 */
async function upToInvite(w, accountId, company, { invitee, ownerEmail = 'mario.rossi@gruppo.it' } = {}) {
  const seeded = w.platform.seedAccount({ vat_number: company.vat, legal_name: `${company.legalName} (piattaforma)`, owner_email: ownerEmail });
  await act(w.ponte, accountId, company.id, 'disable');
  const reviewed = await act(w.ponte, accountId, company.id, 'reactivate',
    { company: companyJson(company.vat, company.legalName), ...(invitee ? { invitee } : {}) });
  assert.equal(reviewed.state, 'awaiting_confirmation', JSON.stringify(reviewed));
  assert.equal(reviewed.platform_account.id, seeded.id);
  const confirmed = await act(w.ponte, accountId, company.id, 'confirm');
  assert.equal(confirmed.state, 'invite_pending', JSON.stringify(confirmed));
  assert.equal(confirmed.invite.state, 'pending');
  return { seeded, confirmed };
}

/** Waits until the platform answered the "link the company" call for `accountId` (the confirm job). */
async function linkedAtPlatform(platform, platformAccountId) {
  await until(`the company linked at ${platformAccountId}`, () =>
    platform.requests.some((r) => r.method === 'POST' && r.path === `/v1/accounts/${platformAccountId}/companies` && r.status === 200));
}

/** The platform's signed `invite.accepted` for `invite`, posted to `base`'s webhook. */
async function acceptOnPlatform(w, base, seeded, company, inviteId, extra = {}) {
  const sent = await w.platform.sendWebhook(`${base}/webhooks/platform`, {
    type: 'invite.accepted',
    data: { account_id: seeded.id, vat_number: company.vat, reference: inviteId, email: 'mario.rossi@gruppo.it' },
    ...extra,
  });
  assert.equal(sent.status, 204, sent.body);
  return sent;
}

// ---- the browser ----

function person(upstream, login) {
  const found = upstream.user(login);
  assert.ok(found, `the upstream knows ${login}`);
  return found;
}

async function atUpstreamLogin(page, upstream) {
  await page.waitForURL((url) => url.origin === upstream.issuer && url.pathname.startsWith('/interaction/'));
  await page.waitForSelector('#upstream-login');
  const uid = new URL(page.url()).pathname.split('/')[2];
  const interaction = upstream.interactions.findLast((i) => i.uid === uid);
  assert.ok(interaction, `the upstream recorded interaction ${uid}`);
  assert.equal(interaction.prompt, 'login');
  return interaction;
}

async function upstreamSignIn(page, who) {
  await page.fill('#upstream-login input[name=login]', who.email);
  await page.fill('#upstream-login input[name=password]', who.password);
  await page.click('#upstream-submit');
}

/**
 * The admin's flow of the federation tests: `user` signs in to Ponte with the password,
 * clicks "Connect", signs in upstream as `who` and presses Continue. The browser keeps the
 * Ponte session and the upstream session.
 */
async function linkExternalId(page, w, user, who) {
  await page.goto(`${w.ponte.base}/login`);
  await signIn(page, user);
  await page.click('#connect-tsid');
  await atUpstreamLogin(page, w.upstream);
  await upstreamSignIn(page, who);
  await page.waitForURL((url) => url.origin === w.ponte.base && url.pathname === '/link/confirm');
  assert.equal(await page.textContent('#upstream-email'), who.email);
  await page.click('#link-continue');
  await page.waitForURL(`${w.ponte.base}/`);
  const listed = await w.ponte.api('GET', `/api/v1/accounts/${user.accountId}/users/${user.userId}/identities`);
  assert.deepEqual(listed.body.identities.map((i) => i.email), [who.email]);
}

/** An account whose owner has `who` (mario by default) linked, through the browser. */
async function ownerWithExternalId(w, page, who = person(w.upstream, 'mario.rossi@gruppo.it')) {
  const owner = await w.ponte.newUser('owner');
  await linkExternalId(page, w, owner, who);
  return owner;
}

/** The Ponte refusal page showing now: its code and HTTP status. */
async function refusal(page) {
  await page.waitForSelector('[data-code]');
  return { code: await page.getAttribute('[data-code]', 'data-code'), status: page.lastDocument()?.status() };
}

/**
 * Opens the invite link, presses accept, and signs in upstream as `who` on the form that
 * `prompt=login` forces. Returns the interaction and whether Ponte accepted.
 */
async function openInviteAs(page, w, link, who) {
  await page.goto(link);
  await page.waitForSelector('#invite-accept');
  const before = w.upstream.authorizations.length;
  await page.click('#invite-accept');
  const interaction = await atUpstreamLogin(page, w.upstream);
  assert.ok(w.upstream.authorizations.slice(before).some((a) => (a.prompt ?? '').split(' ').includes('login')),
    'Ponte asked the upstream for prompt=login');
  await upstreamSignIn(page, who);
  await page.waitForURL((url) => url.origin === w.ponte.base);
  await page.waitForSelector('#invite-accepted, [data-code]');
  const accepted = await page.locator('#invite-accepted').count() === 1;
  return { interaction, accepted };
}

// ---------------------------------------------------------------------------------------

test('the seed flow: disable, reactivate, Continue, the mailed invite accepted with the linked ID, active, and the POS told of each move', mailTest, async (t) => {
  const w = await world(t);
  const page = await freshPage();
  const mario = person(w.upstream, 'mario.rossi@gruppo.it');
  const owner = await ownerWithExternalId(w, page, mario);
  const company = await newCompany(w.ponte, owner.accountId, 'Bar Sport S.r.l.');
  const seeded = w.platform.seedAccount({ vat_number: company.vat, legal_name: 'Bar Sport (piattaforma)', owner_email: mario.email });

  const fresh = await integration(w.ponte, owner.accountId, company.id);
  assert.equal(fresh.state, 'disabled', 'a new company starts disabled');
  assert.equal((await act(w.ponte, owner.accountId, company.id, 'disable')).state, 'disabled', 'disable is idempotent');

  const reviewed = companyJson(company.vat, 'Bar Sport S.r.l.');
  reviewed.address = { ...reviewed.address, street: 'Via Roma 2' };
  const awaiting = await act(w.ponte, owner.accountId, company.id, 'reactivate', { company: reviewed });
  assert.equal(awaiting.state, 'awaiting_confirmation');
  assert.equal(awaiting.linked, false);
  assert.deepEqual(awaiting.platform_account, { id: seeded.id, legal_name: 'Bar Sport (piattaforma)', owner_email: 'm***@gruppo.it' });
  assert.equal(awaiting.company_data.address.street, 'Via Roma 2', 'the reviewed data is what the platform gets');
  assert.match(awaiting.next_step.en, /Continue/);
  assert.equal((await integration(w.ponte, owner.accountId, company.id)).company_data.address.street, 'Via Roma 2',
    'GET shows the data last used for the platform');
  assert.equal((await act(w.ponte, owner.accountId, company.id, 'reactivate', { company: reviewed })).state, 'awaiting_confirmation',
    'reactivate again answers the current state');

  const pending = await act(w.ponte, owner.accountId, company.id, 'confirm');
  assert.equal(pending.state, 'invite_pending');
  assert.equal(pending.invite.email, 'm***i@gruppo.it', 'the invite email is masked');
  assert.equal(pending.invite.expired, false);
  assert.ok(pending.next_step.en.includes('m***i@gruppo.it'), pending.next_step.en);
  assert.ok(pending.next_step.it.includes('m***i@gruppo.it'), pending.next_step.it);
  assert.equal((await act(w.ponte, owner.accountId, company.id, 'confirm')).invite.id, pending.invite.id, 'confirm again sends no second invite');

  const [link] = await w.smtp.invites(mario.email);
  assert.ok(link.startsWith(`${w.ponte.base}/invites/`), link);
  await page.goto(link);
  assert.equal(await page.textContent('#invite-company'), 'Bar Sport S.r.l.');
  assert.equal(await page.textContent('#invite-email'), 'm***i@gruppo.it');
  assert.match(await page.textContent('#invite-platform-account'), /Bar Sport \(piattaforma\)/);
  // Mario still has the upstream session from linking: prompt=login must show the form anyway.
  const { interaction, accepted } = await openInviteAs(page, w, link, mario);
  assert.equal(interaction.sessionAccountId, mario.sub, 'the upstream had a live session for mario');
  assert.ok(accepted, `accepted: ${await page.textContent('body')}`);
  assert.equal(await page.textContent('#invite-company'), 'Bar Sport S.r.l.');

  const active = await reaches(w.ponte, owner.accountId, company.id, 'active');
  assert.equal(active.linked, true);
  assert.equal(active.last_error, null);
  const counts = w.platform.activations().by_vat[company.vat];
  assert.equal(counts.effective, 1, 'one effective activation');
  assert.ok(w.platform.collaborators().some((c) => c.account_id === seeded.id && c.email === mario.email), 'mario is a collaborator');
  const listed = await w.ponte.api('GET', `/api/v1/accounts/${owner.accountId}/integrations`);
  assert.deepEqual(listed.body.companies.map((c) => [c.vat_number, c.integrations.map((i) => [i.state, i.linked])]),
    [[company.vat, [['active', true]]]], 'the list shows the green chain');
  // The owner's signed-in page (the owner's Ponte session is still in this browser) shows it too.
  await page.goto(`${w.ponte.base}/`);
  assert.equal(await page.textContent('#user-email'), owner.email);
  const row = page.locator(`#companies tr[data-company="${company.id}"]`);
  assert.equal(await row.getAttribute('data-state'), 'active');
  assert.equal(await row.locator('.chain').getAttribute('data-linked'), 'true');

  const moves = ['disabled→awaiting_confirmation', 'awaiting_confirmation→invite_pending', 'invite_pending→activating', 'activating→active'];
  const events = await until('four state_changed events at the POS', () => {
    const seen = w.pos.changes(company.id);
    return seen.length >= moves.length ? seen : null;
  });
  assert.deepEqual(events.map((e) => `${e.data.previous_state}→${e.data.state}`).sort(), [...moves].sort());
  const deliveries = w.pos.deliveries.filter((d) => d.event?.data?.company_id === company.id);
  assert.ok(deliveries.every((d) => d.authentic), 'every delivery carries a valid Ponte-Signature over the raw body');
  assert.ok(deliveries.every((d) => d.headers['ponte-event-id'] === d.event.id), 'Ponte-Event-Id is the body id');
  assert.ok(deliveries.every((d) => Math.abs(Number(d.headers['ponte-timestamp']) - Date.now() / 1000) < 300));
  assert.equal(new Set(events.map((e) => e.id)).size, events.length, 'each event has its own id');
  assert.ok(events.every((e) => e.data.account_id === owner.accountId && e.data.kind === KIND));
  assert.equal(events.find((e) => e.data.state === 'active').data.next_step.en, active.next_step.en);
});

test('someone else opening the invite is refused, and the invite still works for the invitee', mailTest, async (t) => {
  const w = await world(t);
  const page = await freshPage();
  const mario = person(w.upstream, 'mario.rossi@gruppo.it');
  const bruno = person(w.upstream, 'bruno@gruppo.it');
  const owner = await ownerWithExternalId(w, page, mario);
  const company = await newCompany(w.ponte, owner.accountId);
  await upToInvite(w, owner.accountId, company);
  const [link] = await w.smtp.invites(mario.email);

  await page.context().clearCookies();
  const refused = await openInviteAs(page, w, link, bruno);
  assert.equal(refused.accepted, false);
  assert.deepEqual(await refusal(page), { code: 'invite_wrong_person', status: 403 });
  assert.match(await page.textContent('[data-code]'), /m\*\*\*i@gruppo\.it/);
  const still = await integration(w.ponte, owner.accountId, company.id);
  assert.equal(still.state, 'invite_pending');
  assert.equal(still.invite.state, 'pending');
  assert.equal(w.platform.activations().by_vat[company.vat], undefined, 'nothing was activated');

  await page.context().clearCookies();
  assert.ok((await openInviteAs(page, w, link, mario)).accepted, 'the refusal did not use up the invite');
  await reaches(w.ponte, owner.accountId, company.id, 'active');
});

test('resend voids the old link, and the new one works', mailTest, async (t) => {
  const w = await world(t);
  const page = await freshPage();
  const mario = person(w.upstream, 'mario.rossi@gruppo.it');
  const owner = await ownerWithExternalId(w, page, mario);
  const company = await newCompany(w.ponte, owner.accountId);
  const { confirmed } = await upToInvite(w, owner.accountId, company);
  const [first] = await w.smtp.invites(mario.email);

  const resent = await w.ponte.api('POST', `${integrationPath(owner.accountId, company.id)}/invites/${confirmed.invite.id}/resend`);
  assert.equal(resent.status, 200, JSON.stringify(resent.body));
  assert.equal(resent.body.id, confirmed.invite.id, 'the same invite');
  assert.equal(resent.body.sent_count, 2);
  const links = await w.smtp.invites(mario.email, 2);
  const second = links.at(-1);
  assert.notEqual(second, first, 'a new link');

  await page.goto(first);
  assert.deepEqual(await refusal(page), { code: 'invite_unknown', status: 404 });
  assert.equal(await page.locator('#invite-accept').count(), 0, 'no way forward from the old link');

  await page.context().clearCookies();
  assert.ok((await openInviteAs(page, w, second, mario)).accepted);
  await reaches(w.ponte, owner.accountId, company.id, 'active');
  await page.goto(second);
  assert.deepEqual(await refusal(page), { code: 'invite_used', status: 410 }, 'used once');
});

test('an expired invite fails closed, and resend revives it', { ...databaseTest, skip: databaseTest.skip || needsAiosmtpd }, async (t) => {
  const w = await world(t, { database: 'expiry' });
  const page = await freshPage();
  const mario = person(w.upstream, 'mario.rossi@gruppo.it');
  const owner = await ownerWithExternalId(w, page, mario);
  const company = await newCompany(w.ponte, owner.accountId);
  const { confirmed } = await upToInvite(w, owner.accountId, company);
  const [first] = await w.smtp.invites(mario.email);

  // A week passes (invites.ttl_days is 7, and at least 1): the invite's expiry is moved back.
  await w.sql(`UPDATE invites SET expires_at = ${Math.floor(Date.now() / 1000) - 60} WHERE id = '${confirmed.invite.id}'`);
  const stale = await integration(w.ponte, owner.accountId, company.id);
  assert.equal(stale.state, 'invite_pending');
  assert.equal(stale.invite.expired, true, JSON.stringify(stale.invite));
  await page.context().clearCookies();
  await page.goto(first);
  assert.deepEqual(await refusal(page), { code: 'invite_expired', status: 410 });
  assert.equal(await page.locator('#invite-accept').count(), 0, 'an expired invite offers no way forward');

  const resent = await w.ponte.api('POST', `${integrationPath(owner.accountId, company.id)}/invites/${confirmed.invite.id}/resend`);
  assert.equal(resent.status, 200, JSON.stringify(resent.body));
  assert.equal(resent.body.expired, false);
  assert.ok(Date.parse(resent.body.expires_at) > Date.now() + 6 * 86_400_000, `a new expiry: ${resent.body.expires_at}`);
  const second = (await w.smtp.invites(mario.email, 2)).at(-1);
  assert.notEqual(second, first);
  await page.goto(first);
  assert.equal((await refusal(page)).code, 'invite_unknown', 'the expired link stays dead');
  assert.ok((await openInviteAs(page, w, second, mario)).accepted);
  await reaches(w.ponte, owner.accountId, company.id, 'active');
});

test('the fallback: signing in with the external ID offers the pending invite, and accepting there activates', browserTest, async (t) => {
  const w = await world(t, { mail: false });
  const page = await freshPage();
  const mario = person(w.upstream, 'mario.rossi@gruppo.it');
  const owner = await ownerWithExternalId(w, page, mario);
  const company = await newCompany(w.ponte, owner.accountId, 'Pizzeria Fallback S.r.l.');
  const { confirmed } = await upToInvite(w, owner.accountId, company);

  // No mail read: a new browser session signs in to Ponte through the upstream.
  await page.context().clearCookies();
  await page.goto(`${w.ponte.base}/login`);
  await page.click('#login-with-tsid');
  await atUpstreamLogin(page, w.upstream);
  await upstreamSignIn(page, mario);
  await page.waitForURL((url) => url.origin === w.ponte.base && url.pathname === '/invites/offer');
  const row = page.locator(`#offered-invites tr[data-invite="${confirmed.invite.id}"]`);
  assert.equal(await row.count(), 1, 'the pending invite is offered');
  assert.match(await row.textContent(), /Pizzeria Fallback S\.r\.l\./);
  await page.click(`#offer-accept-${confirmed.invite.id}`);
  await page.waitForSelector('#invite-accepted');
  assert.equal(await page.textContent('#invite-company'), 'Pizzeria Fallback S.r.l.');
  await reaches(w.ponte, owner.accountId, company.id, 'active');
  assert.equal(w.platform.activations().by_vat[company.vat].effective, 1);
});

test('two companies, two invitees, one browser: each invite activates its own company for its own person', mailTest, async (t) => {
  const w = await world(t);
  const page = await freshPage();
  const mario = person(w.upstream, 'mario.rossi@gruppo.it');
  const carla = person(w.upstream, 'carla@gruppo.it');
  const owner = await ownerWithExternalId(w, page, mario);
  const added = await w.ponte.api('POST', `/api/v1/accounts/${owner.accountId}/users`,
    { email: 'carla.admin@esempio.it', name: 'Carla Admin', role: 'admin', password: 'una password lunga di carla' });
  assert.equal(added.status, 201, JSON.stringify(added.body));
  const admin = { email: 'carla.admin@esempio.it', password: 'una password lunga di carla', accountId: owner.accountId, userId: added.body.id };
  // Same browser: the owner's Ponte cookie is replaced by carla's, and the upstream
  // session becomes carla's.
  await page.context().clearCookies({ domain: '127.0.0.1' });
  await linkExternalId(page, w, admin, carla);

  const first = await newCompany(w.ponte, owner.accountId, 'Prima S.r.l.');
  const second = await newCompany(w.ponte, owner.accountId, 'Seconda S.r.l.');
  const one = await upToInvite(w, owner.accountId, first);
  const two = await upToInvite(w, owner.accountId, second, { invitee: admin.userId });
  assert.equal(one.confirmed.invite.email, 'm***i@gruppo.it');
  assert.equal(two.confirmed.invite.email, 'c***a@gruppo.it');
  const [marioLink] = await w.smtp.invites(mario.email);
  const [carlaLink] = await w.smtp.invites(carla.email);

  // Carla's invite, signed in upstream as mario: refused, nothing moves.
  const wrong = await openInviteAs(page, w, carlaLink, mario);
  assert.equal(wrong.accepted, false);
  assert.deepEqual(await refusal(page), { code: 'invite_wrong_person', status: 403 });
  assert.equal((await integration(w.ponte, owner.accountId, first.id)).state, 'invite_pending');
  assert.equal((await integration(w.ponte, owner.accountId, second.id)).state, 'invite_pending');

  // Mario's own invite (the upstream session is his now): only the first company.
  assert.ok((await openInviteAs(page, w, marioLink, mario)).accepted);
  assert.equal(await page.textContent('#invite-company'), 'Prima S.r.l.');
  await reaches(w.ponte, owner.accountId, first.id, 'active');
  assert.equal((await integration(w.ponte, owner.accountId, second.id)).state, 'invite_pending', 'the second waits for carla');

  // Carla's invite with carla: the second company.
  assert.ok((await openInviteAs(page, w, carlaLink, carla)).accepted);
  assert.equal(await page.textContent('#invite-company'), 'Seconda S.r.l.');
  await reaches(w.ponte, owner.accountId, second.id, 'active');

  const collaborators = w.platform.collaborators();
  assert.deepEqual(collaborators.filter((c) => c.account_id === one.seeded.id).map((c) => c.email), [mario.email]);
  assert.deepEqual(collaborators.filter((c) => c.account_id === two.seeded.id).map((c) => c.email), [carla.email]);
  const counts = w.platform.activations().by_vat;
  assert.deepEqual([counts[first.vat].effective, counts[second.vat].effective], [1, 1]);
  // The Ponte session in this browser is still carla's: accepting switched nobody.
  await page.goto(`${w.ponte.base}/`);
  assert.equal(await page.textContent('#user-email'), admin.email);
  for (const c of [first, second]) {
    assert.equal(await page.getAttribute(`#companies tr[data-company="${c.id}"]`, 'data-state'), 'active', 'the admin\'s view');
  }
});

test('the platform\'s webhook: bad signature and stale timestamp refused, a duplicate id processed once, invite.accepted activates', browserTest, async (t) => {
  const w = await world(t, { mail: false });
  const page = await freshPage();
  const owner = await ownerWithExternalId(w, page);
  const first = await newCompany(w.ponte, owner.accountId);
  const second = await newCompany(w.ponte, owner.accountId);
  const one = await upToInvite(w, owner.accountId, first);
  const two = await upToInvite(w, owner.accountId, second);
  const url = `${w.ponte.base}/webhooks/platform`;
  const event = (company, seeded, inviteId, id) => ({
    ...(id ? { id } : {}),
    type: 'invite.accepted',
    data: { account_id: seeded.id, vat_number: company.vat, reference: inviteId, email: 'mario.rossi@gruppo.it' },
  });

  const forged = await w.platform.sendWebhook(url, event(first, one.seeded, one.confirmed.invite.id), { secret: 'not-the-secret' });
  assert.equal(forged.status, 401);
  assert.equal(JSON.parse(forged.body).code, 'signature_invalid');
  const stale = await w.platform.sendWebhook(url, event(first, one.seeded, one.confirmed.invite.id), { timestamp: Math.floor(Date.now() / 1000) - 3600 });
  assert.equal(stale.status, 401);
  assert.equal(JSON.parse(stale.body).code, 'timestamp_outside_window');
  const future = await w.platform.sendWebhook(url, event(first, one.seeded, one.confirmed.invite.id), { timestamp: Math.floor(Date.now() / 1000) + 3600 });
  assert.equal(JSON.parse(future.body).code, 'timestamp_outside_window');
  assert.equal((await integration(w.ponte, owner.accountId, first.id)).state, 'invite_pending', 'refused webhooks change nothing');

  const id = `evt_${randomBytes(8).toString('hex')}`;
  const taken = await w.platform.sendWebhook(url, event(first, one.seeded, one.confirmed.invite.id, id));
  assert.equal(taken.status, 204, taken.body);
  await reaches(w.ponte, owner.accountId, first.id, 'active');
  const events = await until('the POS saw activating and active', () => {
    const seen = w.pos.changes(first.id).map((e) => e.data.state);
    return seen.includes('active') && seen.includes('activating') ? seen : null;
  });
  assert.deepEqual(events.slice(-2), ['activating', 'active']);
  assert.equal((await integration(w.ponte, owner.accountId, first.id)).invite, null, 'the invite is used');

  // The same event id again, this time naming the second company's invite: taken (204)
  // and dropped, so the second company stays where it is.
  const replay = await w.platform.sendWebhook(url, event(second, two.seeded, two.confirmed.invite.id, id));
  assert.equal(replay.status, 204, replay.body);
  const again = await w.platform.sendWebhook(url, event(first, one.seeded, one.confirmed.invite.id, id));
  assert.equal(again.status, 204);
  const secondNow = await integration(w.ponte, owner.accountId, second.id);
  assert.equal(secondNow.state, 'invite_pending', 'a duplicate id is not processed again');
  assert.equal(w.pos.changes(first.id).filter((e) => e.data.state === 'activating').length, 1, 'no second state change');
  assert.equal(w.platform.activations().by_vat[second.vat], undefined);
  assert.equal(w.platform.activations().by_vat[first.vat].effective, 1);

  // A new id for the second company goes through.
  await acceptOnPlatform(w, w.ponte.base, two.seeded, second, two.confirmed.invite.id);
  await reaches(w.ponte, owner.accountId, second.id, 'active');
});

test('the platform down during activation: activating with the error and the next retry, then active when it returns; failed after the attempts, and retry works', browserTest, async (t) => {
  const w = await world(t, { mail: false });
  const page = await freshPage();
  const owner = await ownerWithExternalId(w, page);

  // Down for a while, then back.
  const first = await newCompany(w.ponte, owner.accountId);
  const one = await upToInvite(w, owner.accountId, first);
  await linkedAtPlatform(w.platform, one.seeded.id);
  w.platform.setOutage(true);
  await acceptOnPlatform(w, w.ponte.base, one.seeded, first, one.confirmed.invite.id);
  const retrying = await reaches(w.ponte, owner.accountId, first.id, 'activating', (i) => i.last_error !== null);
  assert.match(retrying.last_error, /503|unavailable/i, retrying.last_error);
  assert.ok(retrying.next_retry_at && !Number.isNaN(Date.parse(retrying.next_retry_at)), 'the next attempt is scheduled');
  assert.equal(retrying.linked, false);
  w.platform.setOutage(false);
  const active = await reaches(w.ponte, owner.accountId, first.id, 'active');
  assert.equal(active.last_error, null, 'the error is cleared');
  assert.equal(active.next_retry_at, null);
  assert.equal(w.platform.activations().by_vat[first.vat].effective, 1);

  // Down for longer than the attempts: failed; an admin's retry with the platform up.
  const second = await newCompany(w.ponte, owner.accountId);
  const two = await upToInvite(w, owner.accountId, second);
  await linkedAtPlatform(w.platform, two.seeded.id);
  w.platform.setOutage(true);
  await acceptOnPlatform(w, w.ponte.base, two.seeded, second, two.confirmed.invite.id);
  const failed = await reaches(w.ponte, owner.accountId, second.id, 'failed');
  assert.match(failed.last_error, /503|unavailable/i);
  assert.equal(failed.next_retry_at, null, 'nothing more is scheduled');
  assert.equal(w.platform.activations().by_vat[second.vat]?.effective ?? 0, 0);
  const attempts = w.platform.requests.filter((r) => r.path.endsWith('/collaborators') && r.path.includes(two.seeded.id));
  assert.equal(attempts.length, 3, 'PONTE_WORKER__MAX_ATTEMPTS attempts');
  w.platform.setOutage(false);
  const retried = await act(w.ponte, owner.accountId, second.id, 'retry');
  assert.ok(['activating', 'active'].includes(retried.state), retried.state);
  await reaches(w.ponte, owner.accountId, second.id, 'active');
  assert.equal(w.platform.activations().by_vat[second.vat].effective, 1);
  // The POS hears of it through a delivery job of its own: wait for it, as the tests above do.
  const states = await until('the POS saw failed, then active', () => {
    const seen = w.pos.changes(second.id).map((e) => e.data.state);
    return seen.at(-1) === 'active' ? seen : null;
  });
  assert.ok(states.includes('failed') && states.at(-1) === 'active', states.join(','));
});

test('ponte serve killed with SIGKILL mid-activation: after the restart the activation completes, once', databaseTest, async (t) => {
  // A short lease, so the job the dead process held is taken again soon after the restart.
  const w = await world(t, {
    database: 'crash',
    mail: false,
    env: { PONTE_WORKER__LEASE_SECS: '4', PONTE_PLATFORM__TIMEOUT_SECS: '3', PONTE_SMTP__TIMEOUT_SECS: '3' },
  });
  const page = await freshPage();
  const owner = await ownerWithExternalId(w, page);
  const company = await newCompany(w.ponte, owner.accountId);
  const { seeded, confirmed } = await upToInvite(w, owner.accountId, company);
  await linkedAtPlatform(w.platform, seeded.id);

  // The platform holds the activation call; Ponte dies while it waits for the answer.
  w.platform.setDelay(1500, '/activations');
  const isActivation = (r) => r.path === `/v1/accounts/${seeded.id}/integrations/${KIND}/activations`;
  await acceptOnPlatform(w, w.ponte.base, seeded, company, confirmed.invite.id);
  await until('the activation call reached the platform', () => w.platform.requests.some(isActivation));
  const { signal } = await w.ponte.kill('SIGKILL');
  assert.equal(signal, 'SIGKILL');
  w.platform.setDelay(0);
  // The held call still has its effect (the platform finished it; nobody heard the answer).
  await until('the held activation finished at the platform', () => w.platform.activations().by_vat[company.vat]?.effective === 1);

  const restarted = await w.start();
  const active = await reaches(restarted, owner.accountId, company.id, 'active', () => true, 30_000);
  assert.equal(active.linked, true);
  const calls = w.platform.requests.filter(isActivation);
  assert.ok(calls.length >= 2, `the restart called again (${calls.length} calls)`);
  assert.equal(new Set(calls.map((r) => r.idempotency_key)).size, 1, 'with the same idempotency key (the job id)');
  assert.ok(calls.slice(1).every((r) => r.replayed), 'the platform replayed its first answer');
  assert.equal(w.platform.activations().by_vat[company.vat].effective, 1, 'exactly one effective activation');
  assert.equal(w.platform.activations().effective, 1);
});

test('two replicas on one PostgreSQL: ten companies, invites accepted on either, every job once', databaseTest, async (t) => {
  const w = await world(t, { database: 'replicas', mail: false });
  const replica2 = await w.start({});
  const replicas = [w.ponte, replica2];
  const page = await freshPage();
  const owner = await ownerWithExternalId(w, page);

  const N = 10;
  const companies = [];
  for (let n = 0; n < N; n += 1) {
    const on = replicas[n % 2];
    const company = await newCompany(on, owner.accountId);
    const seeded = w.platform.seedAccount({ vat_number: company.vat, owner_email: 'mario.rossi@gruppo.it' });
    const awaiting = await act(on, owner.accountId, company.id, 'reactivate', { company: companyJson(company.vat, company.legalName) });
    assert.equal(awaiting.state, 'awaiting_confirmation');
    const confirmed = await act(replicas[(n + 1) % 2], owner.accountId, company.id, 'confirm');
    assert.equal(confirmed.state, 'invite_pending');
    companies.push({ ...company, seeded, invite: confirmed.invite.id });
  }
  await Promise.all(companies.map((c) => linkedAtPlatform(w.platform, c.seeded.id)));
  await Promise.all(companies.map((c, n) => acceptOnPlatform(w, replicas[n % 2].base, c.seeded, c, c.invite)));
  await until('every company active', async () => {
    const listed = await replicas[1].api('GET', `/api/v1/accounts/${owner.accountId}/integrations`);
    return listed.body.companies.length === N && listed.body.companies.every((c) => c.integrations[0].state === 'active');
  }, { ms: 30_000 });

  const counts = w.platform.activations();
  assert.equal(counts.effective, N);
  for (const c of companies) {
    assert.deepEqual([counts.by_vat[c.vat].effective, counts.by_vat[c.vat].calls], [1, 1], `${c.vat}: one activation, asked once`);
  }
  // Every call that changes something carried a key; each key belongs to one job: one
  // operation, asked once (no job ran twice, on either replica).
  const changing = w.platform.requests.filter((r) => r.method !== 'GET');
  const byKey = new Map();
  for (const r of changing) byKey.set(r.idempotency_key, [...(byKey.get(r.idempotency_key) ?? []), r]);
  assert.ok(!byKey.has(null), 'every call carried an Idempotency-Key');
  for (const [key, calls] of byKey) {
    assert.equal(calls.length, 1, `key ${key} was used by ${calls.length} calls: ${JSON.stringify(calls)}`);
  }
  const kinds = (suffix) => changing.filter((r) => r.path.endsWith(suffix)).length;
  assert.deepEqual([kinds('/companies'), kinds('/collaborators'), kinds('/activations')], [N, N, N]);
});

test('tenant isolation: a user of one account can neither read nor drive another account\'s companies or integrations', browserTest, async (t) => {
  const w = await world(t, { mail: false });
  const alice = await w.ponte.newUser('alice');
  const bob = await w.ponte.newUser('bob');
  const mine = await newCompany(w.ponte, alice.accountId, 'Alice S.r.l.');
  const theirs = await newCompany(w.ponte, bob.accountId, 'Bob S.r.l.');

  // Alice's own token for the REST API, through Ponte's sign-in (the OP flow).
  const rp = await startRp();
  t.after(() => rp.close());
  const registered = await registerClient(w.ponte, rp, { name: 'backoffice', scopes: ['openid', 'ponte.api'] });
  const config = await discover(w.ponte, registered);
  const request = await authorizationRequest(config, rp, { scope: 'openid ponte.api' });
  const page = await freshPage();
  await page.goto(request.url.href);
  await signIn(page, alice);
  const callback = await backAtRp(page, rp, request.state);
  const tokens = await client.authorizationCodeGrant(config, callback, request.checks);
  const asAlice = async (method, path, body) => {
    const response = await fetch(`${w.ponte.base}${path}`, {
      method,
      headers: { authorization: `Bearer ${tokens.access_token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    const text = await response.text();
    return { status: response.status, body: text ? JSON.parse(text) : null };
  };

  assert.equal((await asAlice('GET', `/api/v1/accounts/${alice.accountId}/companies`)).status, 200, 'her own account works');
  assert.equal((await asAlice('GET', integrationPath(alice.accountId, mine.id))).status, 200);

  const b = `/api/v1/accounts/${bob.accountId}`;
  const bi = integrationPath(bob.accountId, theirs.id);
  const attempts = [
    ['GET', `${b}/companies`], ['POST', `${b}/companies`, companyJson(nextVat())],
    ['GET', `${b}/companies/${theirs.id}`], ['PATCH', `${b}/companies/${theirs.id}`, { legal_name: 'Presa S.r.l.' }],
    ['DELETE', `${b}/companies/${theirs.id}`], ['GET', `${b}/integrations`],
    ['GET', bi], ['POST', `${bi}/disable`], ['POST', `${bi}/reactivate`], ['POST', `${bi}/confirm`], ['POST', `${bi}/retry`],
    ['GET', `${bi}/invites`], ['POST', `${bi}/invites/${crypto.randomUUID()}/resend`],
    // Bob's company under Alice's own account id.
    ['GET', integrationPath(alice.accountId, theirs.id)], ['POST', `${integrationPath(alice.accountId, theirs.id)}/reactivate`],
    ['GET', `/api/v1/accounts/${alice.accountId}/companies/${theirs.id}`],
  ];
  for (const [method, path, body] of attempts) {
    const answer = await asAlice(method, path, body);
    assert.equal(answer.status, 404, `${method} ${path}: ${JSON.stringify(answer.body)}`);
  }
  const untouched = await w.ponte.api('GET', `${b}/companies/${theirs.id}`);
  assert.equal(untouched.body.legal_name, 'Bob S.r.l.');
  assert.equal((await integration(w.ponte, bob.accountId, theirs.id)).state, 'disabled');
  assert.equal((await w.ponte.api('GET', `${b}/companies`)).body.companies.length, 1, 'nothing was added to bob\'s account');
  // The POS backend's admin token reaches every account, but not a company through another account's id.
  assert.equal((await w.ponte.api('GET', integrationPath(alice.accountId, theirs.id))).status, 404);
});
