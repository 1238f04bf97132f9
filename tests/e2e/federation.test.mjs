// Upstream federation and account linking (issue 4), proven against a real OpenID
// Provider: oidc-provider (OpenID Certified) as the company-wide ID, with our own sign-in
// pages (upstream.mjs) so that passwords and different people count, and Debian's
// Chromium as the person. The upstream runs on 127.0.0.2 and Ponte on 127.0.0.1: one
// browser, two separate cookie jars, as with two real sites.
//
// One Ponte for the file with three providers: `tsid` (oidc-provider's defaults: email
// and name only from userinfo; prompt=create offered; back-channel logout by `sid`),
// `full` (conformIdTokenClaims: false, so email and name are in the ID token; no
// prompt=create; back-channel logout by `sub` only) and `down` (nobody listening). Each test makes its own Ponte accounts and its own upstream people, so
// links made by one test never meet another's. The replica test starts its own pair of
// Ponte processes on PostgreSQL and Redis.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:net';
import { promisify } from 'node:util';
import { startPonte, freePort, csrfFrom, cookiesFrom } from './ponte.mjs';
import { launchBrowser, needsBrowser, signIn } from './browser.mjs';
import { startUpstream } from './upstream.mjs';
import { dropRedisPrefix } from './pos.mjs';

const run = promisify(execFile);
const browserTest = { skip: needsBrowser, timeout: 45_000 };

let ponte;
let tsid;
let full;
let browser;
let people = 0;

before(async () => {
  const port = await freePort();
  const ponteBase = `http://127.0.0.1:${port}`;
  tsid = await startUpstream({ ponteBase });
  full = await startUpstream({
    ponteBase,
    providerId: 'full',
    displayName: 'Full ID',
    conformIdTokenClaims: false,
    promptCreate: false,
    // No `sid` in its ID tokens: its logout tokens name only the subject.
    clientMetadata: { backchannel_logout_session_required: false },
  });
  const downPort = await closedPort('127.0.0.2');
  ponte = await startPonte({
    ...tsid.env,
    ...full.env,
    PONTE_PROVIDERS__DOWN__ISSUER: `http://127.0.0.2:${downPort}`,
    PONTE_PROVIDERS__DOWN__CLIENT_ID: 'ponte',
    PONTE_PROVIDERS__DOWN__CLIENT_SECRET: 'not-used-anywhere',
    PONTE_PROVIDERS__DOWN__DISPLAY_NAME: 'Down ID',
    RUST_LOG: 'warn,ponte_server=info',
  }, { port });
});

after(async () => {
  const opened = await browser?.catch(() => null);
  const blocked = opened?.blocked ?? [];
  await opened?.close();
  const log = ponte?.stderr() ?? '';
  await ponte?.stop();
  await tsid?.stop();
  await full?.stop();
  assert.doesNotMatch(log, /panicked/, `ponte panicked during the federation tests:\n${log}`);
  assert.deepEqual(blocked, [], 'no page asked for anything beyond loopback');
});

/** A port on `host` with nobody listening. */
async function closedPort(host) {
  return new Promise((ok, fail) => {
    const server = createServer();
    server.once('error', fail);
    server.listen(0, host, () => {
      const { port } = server.address();
      server.close(() => ok(port));
    });
  });
}

/**
 * A new tab in a browser with no cookies (Chromium starts with the first browser test).
 * `page.lastDocument()` is the last non-redirect main-frame response, for status codes.
 */
async function freshPage() {
  browser ??= launchBrowser();
  const page = await (await browser).page();
  trackDocuments(page);
  return page;
}

function trackDocuments(page) {
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

/** A new upstream person at `upstream` (a different one for every call). */
function upstreamPerson(upstream, label, extra = {}) {
  const n = ++people;
  return upstream.addUser({
    email: `${label}-${n}@teamsystem.example`,
    name: `${label[0].toUpperCase()}${label.slice(1)} Upstream ${n}`,
    password: `${label}-upstream-password-${n}`,
    ...extra,
  });
}

/** Adds a user to an account through the REST API; returns it with its password. */
async function addUser(accountId, label, role) {
  const n = ++people;
  const person = { email: `${label}-${n}@esempio.it`, name: `Utente ${label} ${n}`, role, password: `una password lunga ${label} ${n}` };
  if (role === 'member') {
    // A member takes a seat: buy one and register its payment, as the POS backend does.
    const grant = await ponte.api('POST', `/api/v1/accounts/${accountId}/seats`, { quantity: 1, order_reference: `ORD-${label}-${n}` });
    assert.equal(grant.status, 201, JSON.stringify(grant.body));
    const paid = await ponte.api('POST', `/api/v1/accounts/${accountId}/seats/${grant.body.id}/paid`);
    assert.equal(paid.status, 200, JSON.stringify(paid.body));
  }
  const created = await ponte.api('POST', `/api/v1/accounts/${accountId}/users`, person);
  assert.equal(created.status, 201, `add ${role}: ${JSON.stringify(created.body)}`);
  return { ...person, accountId, userId: created.body.id };
}

async function identities(user) {
  const listed = await ponte.api('GET', `/api/v1/accounts/${user.accountId}/users/${user.userId}/identities`);
  assert.equal(listed.status, 200, JSON.stringify(listed.body));
  return listed.body.identities;
}

async function sessions(user) {
  const listed = await ponte.api('GET', `/api/v1/accounts/${user.accountId}/users/${user.userId}/sessions`);
  assert.equal(listed.status, 200, JSON.stringify(listed.body));
  return listed.body.sessions;
}

function pathOf(page) {
  const url = new URL(page.url());
  return `${url.origin}${url.pathname}`;
}

/** Signs `user` in on Ponte's /login page with their password; ends on `/`. */
async function signInToPonte(page, user) {
  await page.goto(`${ponte.base}/login`);
  await signIn(page, user);
  assert.equal(pathOf(page), `${ponte.base}/`);
  assert.equal(await page.textContent('#user-email'), user.email);
}

/** Waits for the upstream's own sign-in form and returns the interaction it recorded. */
async function atUpstreamLogin(page, upstream) {
  await page.waitForURL((url) => url.origin === upstream.issuer && url.pathname.startsWith('/interaction/'));
  await page.waitForSelector('#upstream-login');
  const uid = new URL(page.url()).pathname.split('/')[2];
  const interaction = upstream.interactions.findLast((i) => i.uid === uid);
  assert.ok(interaction, `the upstream recorded interaction ${uid}`);
  assert.equal(interaction.prompt, 'login');
  return interaction;
}

/** Fills in the upstream sign-in form (the caller knows it is showing). */
async function upstreamSignIn(page, person, password = person.password) {
  await page.fill('#upstream-login input[name=login]', person.email);
  await page.fill('#upstream-login input[name=password]', password);
  await page.click('#upstream-submit');
}

/**
 * Waits until the browser is on a Ponte page at `path` (any query). A refusal page
 * (rendered at the callback or start URL) fails at once, with its code and Ponte's
 * warning about it.
 */
async function atPonte(page, path, server = ponte) {
  await page.waitForURL((url) => url.origin === server.base && (url.pathname === path || url.pathname.startsWith('/federation/')));
  if (new URL(page.url()).pathname === path) return;
  const seen = await refusal(page);
  const warnings = server.stderr().split('\n').filter((l) => /WARN/.test(l) && /federation|upstream/.test(l)).slice(-1);
  assert.fail(`expected Ponte's ${path}, got the refusal page ${seen.code} (HTTP ${seen.status}) at ${seen.url}\n`
    + `page: ${(await page.textContent('[data-code]'))?.trim()}\nponte: ${warnings.join('\n').replace(/\x1b\[[0-9;]*m/g, '')}`);
}

/** The code of the Ponte refusal page showing now, and its HTTP status. */
async function refusal(page) {
  await page.waitForSelector('[data-code]');
  const response = page.lastDocument();
  return { code: await page.getAttribute('[data-code]', 'data-code'), status: response?.status(), response, url: page.url() };
}

async function expectRefusal(page, code, status) {
  const seen = await refusal(page);
  assert.equal(seen.code, code, `refusal page at ${seen.url}: ${await page.textContent('body')}`);
  if (status !== undefined) assert.equal(seen.status, status, `status of the ${code} page`);
  return seen;
}

/** What the /link/confirm page shows. */
async function confirmFields(page) {
  const text = async (selector) => (await page.textContent(selector))?.trim();
  return {
    provider: await text('#upstream-provider'),
    email: await text('#upstream-email'),
    name: await text('#upstream-name'),
    account: await text('#ponte-account'),
    user: await text('#ponte-user'),
  };
}

/**
 * The admin flow in full: `user` signs in to Ponte, clicks "Connect", signs in upstream
 * as `person` and clicks Continue. Ends on `/` with the link written.
 */
async function connect(page, user, person, upstream = tsid) {
  await signInToPonte(page, user);
  await page.click(`#connect-${upstream.providerId}`);
  await atUpstreamLogin(page, upstream);
  await upstreamSignIn(page, person);
  await atPonte(page, '/link/confirm');
  assert.equal(await page.textContent('#upstream-email'), person.email);
  await page.click('#link-continue');
  await atPonte(page, '/');
  const linked = await identities(user);
  assert.deepEqual(linked.map((i) => [i.provider, i.subject]), [[upstream.providerId, person.sub]]);
}

/** Signs in to Ponte through `upstream` (intent=login) from the login page. */
async function loginWithUpstream(page, person, upstream = tsid) {
  await page.goto(`${ponte.base}/login`);
  await page.click(`#login-with-${upstream.providerId}`);
  await atUpstreamLogin(page, upstream);
  await upstreamSignIn(page, person);
}

/** The newest ID token the upstream issued to Ponte. */
function lastIdToken(upstream) {
  const token = upstream.idTokens.at(-1);
  assert.ok(token, 'the upstream issued an ID token');
  return token;
}

test('register: an owner creates a new upstream ID (prompt=create) and connects it after Continue', browserTest, async () => {
  const page = await freshPage();
  const owner = await ponte.newUser('register');
  await signInToPonte(page, owner);
  assert.equal(await page.getAttribute('#register-tsid', 'href'), '/federation/tsid/start?intent=register');

  await page.click('#register-tsid');
  await page.waitForURL((url) => url.origin === tsid.issuer && url.pathname.startsWith('/interaction/'));
  await page.waitForSelector('#upstream-signup');
  const interaction = tsid.interactions.at(-1);
  assert.equal(interaction.prompt, 'create', 'the upstream was asked for its sign-up page');
  // max_age=0 rides along (so auth_time comes back); oidc-provider reads it as an added 'login'.
  assert.ok(interaction.params.prompt.split(' ').includes('create'), interaction.params.prompt);
  assert.equal(tsid.authorizations.at(-1).prompt, 'create', 'Ponte asked for create only');
  assert.equal(tsid.authorizations.at(-1).max_age, '0');
  assert.equal(interaction.params.code_challenge_method, 'S256');

  const n = ++people;
  const created = { email: `new-${n}@teamsystem.example`, name: `Nuova Persona ${n}`, password: `new-password-${n}` };
  await page.fill('#upstream-signup input[name=email]', created.email);
  await page.fill('#upstream-signup input[name=name]', created.name);
  await page.fill('#upstream-signup input[name=password]', created.password);
  await page.click('#upstream-create');

  await atPonte(page, '/link/confirm');
  const account = await ponte.api('GET', `/api/v1/accounts/${owner.accountId}`);
  assert.deepEqual(await confirmFields(page), {
    provider: 'TeamSystem ID',
    email: created.email,
    name: created.name,
    account: account.body.name,
    user: owner.email,
  });
  assert.deepEqual(await identities(owner), [], 'nothing is linked before Continue');

  await page.click('#link-continue');
  await atPonte(page, '/');
  const person = tsid.user(created.email);
  assert.ok(person, 'the upstream account exists');
  const linked = await identities(owner);
  assert.equal(linked.length, 1);
  assert.equal(linked[0].provider, 'tsid');
  assert.equal(linked[0].issuer, tsid.issuer);
  assert.equal(linked[0].subject, person.sub);
  assert.equal(linked[0].email, created.email);
  assert.match(await page.textContent('#identities li[data-provider=tsid]'), new RegExp(created.email.replace(/\./g, '\\.')));
  assert.equal(await page.locator('#connect-tsid').count(), 0, 'no "connect" once linked');
});

test('register without prompt=create support forces a fresh upstream sign-in', browserTest, async () => {
  const page = await freshPage();
  const owner = await ponte.newUser('register-full');
  const person = upstreamPerson(full, 'fresh');
  await signInToPonte(page, owner);
  await page.click('#register-full');
  const interaction = await atUpstreamLogin(page, full);
  assert.equal(interaction.params.prompt, 'login');
  assert.equal(full.authorizations.at(-1).max_age, '0');
  await upstreamSignIn(page, person);
  await atPonte(page, '/link/confirm');
  assert.equal(await page.textContent('#upstream-email'), person.email);
  await page.click('#link-continue');
  await atPonte(page, '/');
  assert.deepEqual((await identities(owner)).map((i) => i.subject), [person.sub]);
});

test('link: an owner connects an upstream ID, which is written only on Continue', browserTest, async () => {
  const page = await freshPage();
  const owner = await ponte.newUser('link');
  const person = upstreamPerson(tsid, 'linker');
  await signInToPonte(page, owner);
  assert.equal(await page.getAttribute('#connect-tsid', 'href'), '/federation/tsid/start?intent=link');

  // First attempt: a wrong password at the upstream, then Cancel on Ponte's page.
  await page.click('#connect-tsid');
  const interaction = await atUpstreamLogin(page, tsid);
  assert.equal(interaction.params.prompt, 'login', 'a fresh upstream sign-in is forced');
  assert.equal(tsid.authorizations.at(-1).max_age, '0');
  assert.equal(interaction.params.code_challenge_method, 'S256');
  await upstreamSignIn(page, person, 'not the password');
  assert.equal(await page.textContent('#upstream-error'), 'Wrong email or password.');
  assert.equal(new URL(page.url()).origin, tsid.issuer, 'still at the upstream');
  await upstreamSignIn(page, person);
  await atPonte(page, '/link/confirm');
  const shown = await confirmFields(page);
  assert.equal(shown.email, person.email);
  assert.equal(shown.name, person.name);
  assert.equal(shown.user, owner.email);
  await page.click('#link-cancel');
  await atPonte(page, '/');
  assert.deepEqual(await identities(owner), [], 'Cancel links nothing');

  // Second attempt: Continue.
  await page.click('#connect-tsid');
  await atUpstreamLogin(page, tsid);
  await upstreamSignIn(page, person);
  await atPonte(page, '/link/confirm');
  assert.deepEqual(await identities(owner), [], 'nothing is linked before Continue');
  await page.click('#link-continue');
  await atPonte(page, '/');
  const linked = await identities(owner);
  assert.deepEqual(linked.map((i) => [i.provider, i.subject, i.email, i.name]), [['tsid', person.sub, person.email, person.name]]);
  assert.match(await page.textContent('#identities'), new RegExp(person.email.replace(/\./g, '\\.')));
  assert.equal(await page.locator('#unlink-tsid').count(), 1);
});

test('link: only a signed-in owner or admin may connect an ID', browserTest, async () => {
  const page = await freshPage();
  await page.goto(`${ponte.base}/federation/tsid/start?intent=link`);
  await expectRefusal(page, 'sign_in_first', 401);

  const owner = await ponte.newUser('link-roles');
  const member = await addUser(owner.accountId, 'member', 'member');
  await signInToPonte(page, member);
  assert.equal(await page.locator('#connect-tsid').count(), 0, 'members see no "connect"');
  assert.equal(await page.locator('#register-tsid').count(), 0);
  await page.goto(`${ponte.base}/federation/tsid/start?intent=link`);
  await expectRefusal(page, 'link_not_allowed', 403);
  await page.goto(`${ponte.base}/federation/tsid/start?intent=register`);
  await expectRefusal(page, 'link_not_allowed', 403);
});

test('log in with the linked ID: a session with amr fed+tsid, and single sign-on afterwards', browserTest, async () => {
  const page = await freshPage();
  const owner = await ponte.newUser('login');
  const person = upstreamPerson(tsid, 'login');
  await connect(page, owner, person);

  // A browser with no cookies: sign in with TeamSystem ID from Ponte's login page.
  await page.context().clearCookies();
  await page.goto(`${ponte.base}/`);
  await atPonte(page, '/login');
  assert.match(await page.getAttribute('#login-with-tsid', 'href'), /^\/federation\/tsid\/start\?intent=login&return_to=/);
  await page.click('#login-with-tsid');
  const interaction = await atUpstreamLogin(page, tsid);
  assert.equal(interaction.params.prompt, undefined, 'a plain login does not force a new upstream sign-in');
  await upstreamSignIn(page, person);
  await atPonte(page, '/');
  assert.equal(await page.textContent('#user-email'), owner.email);
  assert.equal(await page.textContent('#user-role'), 'owner');
  // (The password session connect() made stays: its cookie is gone, not the session.)
  const live = await sessions(owner);
  assert.equal(live.filter((s) => s.amr.includes('fed')).length, 1, JSON.stringify(live));
  assert.deepEqual(live.find((s) => s.amr.includes('fed')).amr, ['fed', 'tsid']);
  assert.ok((await identities(owner))[0].last_login_at, 'the link records the sign-in');

  // Signed out of Ponte only: the upstream session answers without its form.
  await page.context().clearCookies({ domain: '127.0.0.1' });
  const interactionsBefore = tsid.interactions.length;
  await page.goto(`${ponte.base}/login`);
  await page.click('#login-with-tsid');
  await atPonte(page, '/');
  assert.equal(await page.textContent('#user-email'), owner.email);
  assert.deepEqual(tsid.interactions.slice(interactionsBefore).filter((i) => i.prompt === 'login'), [],
    'no upstream sign-in form the second time');

  // A return_to inside Ponte is honoured; one outside is refused.
  await page.context().clearCookies({ domain: '127.0.0.1' });
  await page.goto(`${ponte.base}/federation/tsid/start?intent=login&return_to=${encodeURIComponent('/?from=login')}`);
  await page.waitForURL(`${ponte.base}/?from=login`);
  await page.goto(`${ponte.base}/federation/tsid/start?intent=login&return_to=${encodeURIComponent('https://evil.example/')}`);
  await expectRefusal(page, 'invalid_return_to', 400);
});

test('confirm-link with password: the verified upstream email of an existing user, proved with the Ponte password', browserTest, async () => {
  const page = await freshPage();
  const person = upstreamPerson(tsid, 'proof-pw');
  const owner = await ponte.newUser('proof-pw', { email: person.email });
  await loginWithUpstream(page, person);
  await atPonte(page, '/link/confirm');
  const shown = await confirmFields(page);
  assert.equal(shown.email, person.email);
  assert.equal(shown.user, owner.email);
  assert.equal(await page.locator('#link-continue').count(), 0, 'no bare Continue: proof is needed');
  assert.deepEqual(await identities(owner), [], 'never a silent link');

  await page.fill('input#password', 'not my password');
  await page.click('button#link-password');
  await page.waitForSelector('[role=alert]');
  assert.equal(page.lastDocument().status(), 401);
  assert.deepEqual(await identities(owner), []);

  await page.fill('input#password', owner.password);
  await page.click('button#link-password');
  await atPonte(page, '/');
  assert.equal(await page.textContent('#user-email'), owner.email);
  assert.deepEqual((await identities(owner)).map((i) => i.subject), [person.sub]);
  const live = await sessions(owner);
  assert.deepEqual(live.map((s) => s.amr), [['fed', 'tsid']]);
});

test('confirm-link with the emailed code: the code goes to the Ponte user\'s address and links once', browserTest, async () => {
  const page = await freshPage();
  const person = upstreamPerson(tsid, 'proof-code');
  const owner = await ponte.newUser('proof-code', { email: person.email });
  await loginWithUpstream(page, person);
  await atPonte(page, '/link/confirm');
  const mailBefore = (await ponte.outbox()).length;
  await page.click('button#link-send-code');
  await page.waitForSelector('input#code');
  const mail = (await ponte.waitForOutbox(mailBefore + 1)).slice(mailBefore);
  assert.equal(mail.length, 1, 'one email');
  assert.equal(mail[0].to, owner.email);
  // Written in the recipient's language (a new user's default: Italian), whatever the page spoke.
  const code = mail[0].body.match(/Codice: (\d{8})/)?.[1];
  assert.ok(code, `a code in an Italian email:\n${mail[0].body}`);
  assert.match(mail[0].body, new RegExp(person.email.replace(/\./g, '\\.')), 'the email names the upstream ID');

  const wrong = code === '00000000' ? '11111111' : '00000000';
  await page.fill('input#code', wrong);
  await page.click('button#link-code');
  await page.waitForSelector('[role=alert]');
  assert.equal(page.lastDocument().status(), 401);
  assert.deepEqual(await identities(owner), []);

  await page.fill('input#code', code);
  await page.click('button#link-code');
  await atPonte(page, '/');
  assert.equal(await page.textContent('#user-email'), owner.email);
  assert.deepEqual((await identities(owner)).map((i) => i.subject), [person.sub]);
  assert.deepEqual((await sessions(owner)).map((s) => s.amr), [['fed', 'tsid']]);
});

test('log in without a link: an unverified or unknown upstream email gets not_linked', browserTest, async () => {
  const page = await freshPage();
  const unverified = upstreamPerson(tsid, 'unverified', { email_verified: false });
  const owner = await ponte.newUser('unverified', { email: unverified.email });
  await loginWithUpstream(page, unverified);
  await expectRefusal(page, 'not_linked', 403);
  assert.deepEqual(await identities(owner), []);

  await page.context().clearCookies();
  const stranger = upstreamPerson(tsid, 'stranger');
  await loginWithUpstream(page, stranger);
  await expectRefusal(page, 'not_linked', 403);
});

test('unlink and relink: REST and the unlink button both end the link; relinking works', browserTest, async () => {
  const page = await freshPage();
  const owner = await ponte.newUser('unlink');
  const person = upstreamPerson(tsid, 'unlink');
  await connect(page, owner, person);

  const path = `/api/v1/accounts/${owner.accountId}/users/${owner.userId}/identities/tsid`;
  assert.equal((await ponte.api('DELETE', path)).status, 204);
  const again = await ponte.api('DELETE', path);
  assert.equal(again.status, 404);
  assert.equal(again.body.code, 'identity_not_found');
  assert.deepEqual(await identities(owner), []);

  // Relink in the browser, then unlink with the button on the signed-in page.
  await page.goto(`${ponte.base}/`);
  await page.click('#connect-tsid');
  await atUpstreamLogin(page, tsid);
  await upstreamSignIn(page, person);
  await atPonte(page, '/link/confirm');
  await page.click('#link-continue');
  await atPonte(page, '/');
  assert.deepEqual((await identities(owner)).map((i) => i.subject), [person.sub], 'relinked');
  await page.click('#unlink-tsid');
  await atPonte(page, '/');
  assert.equal(await page.locator('#identities li').count(), 0);
  assert.equal(await page.locator('#connect-tsid').count(), 1);
  assert.deepEqual(await identities(owner), []);

  // Unlinked, the upstream ID no longer signs in to Ponte.
  await page.context().clearCookies();
  await loginWithUpstream(page, person);
  await expectRefusal(page, 'not_linked', 403);
});

test('identity linked elsewhere: an upstream ID linked to one user is refused for another', browserTest, async () => {
  const page = await freshPage();
  const first = await ponte.newUser('elsewhere');
  const second = await ponte.newUser('elsewhere');
  const person = upstreamPerson(tsid, 'shared');
  await connect(page, first, person);

  await page.context().clearCookies();
  await signInToPonte(page, second);
  await page.click('#connect-tsid');
  await atUpstreamLogin(page, tsid);
  await upstreamSignIn(page, person);
  await page.waitForSelector('[data-code], #link-continue');
  if (new URL(page.url()).pathname === '/link/confirm') {
    // Ponte may show the identity first; Continue must then be refused.
    await page.click('#link-continue');
  }
  await expectRefusal(page, 'identity_linked_elsewhere', 409);
  assert.deepEqual(await identities(second), []);
  assert.deepEqual((await identities(first)).map((i) => i.subject), [person.sub], 'the first link stands');
});

test('refusals for linked users: a second ID at the same provider (provider_taken), a disabled user (user_disabled)', browserTest, async () => {
  const page = await freshPage();
  const owner = await ponte.newUser('taken');
  const admin = await addUser(owner.accountId, 'taken-admin', 'admin');
  const first = upstreamPerson(tsid, 'taken-first');
  const second = upstreamPerson(tsid, 'taken-second');
  await connect(page, admin, first);

  // "Connect" is gone once linked; the start URL itself still leads to a refusal.
  await page.goto(`${ponte.base}/federation/tsid/start?intent=link`);
  await atUpstreamLogin(page, tsid);
  await upstreamSignIn(page, second);
  await page.waitForSelector('[data-code], #link-continue');
  if (new URL(page.url()).pathname === '/link/confirm') await page.click('#link-continue');
  await expectRefusal(page, 'provider_taken', 409);
  assert.deepEqual((await identities(admin)).map((i) => i.subject), [first.sub], 'the first link stands');

  const disabled = await ponte.api('PATCH', `/api/v1/accounts/${owner.accountId}/users/${admin.userId}`, { status: 'disabled' });
  assert.equal(disabled.status, 200, JSON.stringify(disabled.body));
  await page.context().clearCookies();
  await loginWithUpstream(page, first);
  await expectRefusal(page, 'user_disabled', 403);
  assert.deepEqual(await sessions(admin), []);
});

test('the upstream ID token without email (oidc-provider default) is completed from userinfo; with claims in the ID token userinfo is not needed', browserTest, async () => {
  const page = await freshPage();
  const owner = await ponte.newUser('userinfo');
  const person = upstreamPerson(tsid, 'userinfo');
  const before = tsid.requests.length;
  await connect(page, owner, person);
  const token = lastIdToken(tsid);
  assert.equal(token.sub, person.sub);
  assert.equal(token.email, undefined, 'oidc-provider\'s default: no email in the ID token');
  assert.equal(token.name, undefined);
  assert.ok(tsid.requests.slice(before).some((r) => r.path === '/me'), 'Ponte asked userinfo');
  const [linked] = await identities(owner);
  assert.equal(linked.email, person.email);
  assert.equal(linked.name, person.name);

  await page.context().clearCookies();
  const owner2 = await ponte.newUser('userinfo-full');
  const person2 = upstreamPerson(full, 'idtoken');
  const before2 = full.requests.length;
  await connect(page, owner2, person2, full);
  const token2 = lastIdToken(full);
  assert.equal(token2.email, person2.email, 'conformIdTokenClaims: false puts email in the ID token');
  assert.equal(token2.name, person2.name);
  assert.equal(full.requests.slice(before2).filter((r) => r.path === '/me').length, 0, 'no userinfo call needed');
  const [linked2] = await identities(owner2);
  assert.equal(linked2.email, person2.email);
  assert.equal(linked2.name, person2.name);
});

test('the seed\'s case: signed in upstream as B, the admin of A connects; Ponte forces a fresh sign-in and links only who signed in', browserTest, async () => {
  const page = await freshPage();
  // Two of the upstream's own people (no other test uses them): B is Bruno, A's admin is Mario.
  const upstreamB = tsid.user('bruno@gruppo.it');
  const upstreamA = tsid.user('mario.rossi@gruppo.it');
  assert.ok(upstreamB && upstreamA);
  const owner = await ponte.newUser('seed');
  const admin = await addUser(owner.accountId, 'seed-admin', 'admin');

  // B signs in upstream in this browser (through Ponte's "sign in with", which refuses:
  // B is not linked). B's upstream session stays in the browser.
  await loginWithUpstream(page, upstreamB);
  await expectRefusal(page, 'not_linked', 403);
  const upstreamCookies = await page.context().cookies(tsid.issuer);
  assert.ok(upstreamCookies.some((c) => c.name === '_session'), `B has an upstream session: ${upstreamCookies.map((c) => c.name)}`);

  // The admin of account A signs in to Ponte in the same browser and clicks "Connect".
  await signInToPonte(page, admin);
  assert.equal(await page.textContent('#user-role'), 'admin');
  await page.click('#connect-tsid');
  const interaction = await atUpstreamLogin(page, tsid);
  assert.equal(interaction.sessionAccountId, upstreamB.sub, 'the upstream session of B existed');
  assert.equal(interaction.params.prompt, 'login');
  assert.equal(tsid.authorizations.at(-1).max_age, '0');
  assert.ok(await page.isVisible('#upstream-login input[name=password]'), 'the upstream asked for a password again');

  await upstreamSignIn(page, upstreamA);
  await atPonte(page, '/link/confirm');
  const shown = await confirmFields(page);
  assert.equal(shown.email, upstreamA.email, 'the confirm page shows the identity that signed in');
  assert.equal(shown.name, upstreamA.name);
  assert.equal(shown.user, admin.email);
  assert.notEqual(shown.email, upstreamB.email);
  assert.deepEqual(await identities(admin), [], 'nothing linked before Continue');
  await page.click('#link-continue');
  await atPonte(page, '/');

  assert.deepEqual((await identities(admin)).map((i) => i.subject), [upstreamA.sub]);
  for (const user of [owner, admin]) {
    assert.ok(!(await identities(user)).some((i) => i.subject === upstreamB.sub), `B is not linked to ${user.email}`);
  }
  assert.equal(lastIdToken(tsid).sub, upstreamA.sub);
});

test('a callback replayed is refused with flow_expired', browserTest, async () => {
  const page = await freshPage();
  const owner = await ponte.newUser('replay');
  const person = upstreamPerson(tsid, 'replay');
  await signInToPonte(page, owner);
  const callbacks = [];
  page.on('request', (request) => {
    if (request.url().startsWith(`${ponte.base}/federation/tsid/callback?`)) callbacks.push(request.url());
  });
  await page.click('#connect-tsid');
  await atUpstreamLogin(page, tsid);
  await upstreamSignIn(page, person);
  await atPonte(page, '/link/confirm');
  await page.click('#link-continue');
  await atPonte(page, '/');
  assert.equal(callbacks.length, 1);
  const callback = new URL(callbacks[0]);
  assert.equal(callback.searchParams.get('iss'), tsid.issuer, 'the upstream sent iss (RFC 9207)');

  await page.goto(callback.href);
  await expectRefusal(page, 'flow_expired', 400);
  assert.deepEqual((await identities(owner)).map((i) => i.subject), [person.sub], 'still exactly the one link');
});

test('a callback opened in a second browser is refused with flow_other_browser', browserTest, async () => {
  const page = await freshPage();
  const owner = await ponte.newUser('other-browser');
  const person = upstreamPerson(tsid, 'other-browser');
  await signInToPonte(page, owner);
  // Hold the upstream's redirect back to Ponte: this browser never delivers it.
  tsid.setCallbackHook(() => null);
  let callback;
  try {
    await page.click('#connect-tsid');
    await atUpstreamLogin(page, tsid);
    await upstreamSignIn(page, person);
    await page.waitForSelector('#held');
    callback = await page.getAttribute('#held', 'data-url');
  } finally {
    tsid.setCallbackHook(null);
  }
  assert.ok(callback.startsWith(`${ponte.base}/federation/tsid/callback?`), callback);

  const other = await launchBrowser();
  try {
    const otherPage = trackDocuments(await other.page());
    await otherPage.goto(callback);
    await expectRefusal(otherPage, 'flow_other_browser', 400);
    assert.deepEqual(other.blocked, []);
  } finally {
    await other.close();
  }
  assert.deepEqual(await identities(owner), [], 'nothing linked');

  // The flow was one-time: the refused attempt used it up, so the original browser
  // starts again rather than finishing with a code someone else has seen.
  await page.goto(callback);
  await expectRefusal(page, 'flow_expired', 400);
  assert.deepEqual(await identities(owner), [], 'nothing linked');
});

test('upstream refusals: cancel at the provider, an unreachable provider, a wrong iss', browserTest, async () => {
  const page = await freshPage();
  const owner = await ponte.newUser('refusals');
  const person = upstreamPerson(tsid, 'refusals');
  await signInToPonte(page, owner);

  await page.click('#connect-tsid');
  await atUpstreamLogin(page, tsid);
  await page.click('#upstream-cancel');
  const cancelled = await expectRefusal(page, 'upstream_error', 400);
  assert.equal(await cancelled.response.headerValue('x-upstream-error'), 'access_denied');

  await page.goto(`${ponte.base}/federation/down/start?intent=link`);
  await expectRefusal(page, 'provider_unreachable', 502);

  // The authorization response names another issuer (a mix-up attack): refused before
  // the code is redeemed.
  tsid.setCallbackHook((callback) => {
    const url = new URL(callback);
    url.searchParams.set('iss', 'http://127.0.0.3:1');
    return url.href;
  });
  try {
    await page.goto(`${ponte.base}/`);
    await page.click('#connect-tsid');
    await atUpstreamLogin(page, tsid);
    await upstreamSignIn(page, person);
    await expectRefusal(page, 'upstream_response_invalid', 400);
  } finally {
    tsid.setCallbackHook(null);
  }
  assert.deepEqual(await identities(owner), []);
});

test('back-channel logout: logging out at the upstream ends the Ponte session that came from it', browserTest, async () => {
  const page = await freshPage();
  const owner = await ponte.newUser('bcl');
  const person = upstreamPerson(tsid, 'bcl');
  await connect(page, owner, person);

  await page.context().clearCookies();
  await loginWithUpstream(page, person);
  await atPonte(page, '/');
  const sid = lastIdToken(tsid).sid;
  assert.ok(sid, 'the upstream ID token carries sid');
  // Another session of the same user, signed in with the password elsewhere.
  const other = await passwordSession(owner);
  const live = await sessions(owner);
  assert.deepEqual(live.filter((s) => s.amr.includes('fed')).map((s) => s.amr), [['fed', 'tsid']], JSON.stringify(live));
  const passwordSessions = live.filter((s) => !s.amr.includes('fed')).map((s) => s.id).sort();
  assert.ok(passwordSessions.length >= 1);

  // Log out at the upstream: its confirmation page, then the logout token to Ponte.
  await page.goto(`${tsid.issuer}/session/end`);
  await page.waitForSelector('#logout-question');
  await page.click('#logout-yes');
  await page.waitForSelector('#logout-done');
  const sent = tsid.backchannel.at(-1);
  assert.ok(sent, 'the upstream sent a logout token');
  assert.deepEqual({ ok: sent.ok, sid: sent.sid, sub: sent.sub, error: sent.error }, { ok: true, sid, sub: person.sub, error: undefined });
  assert.equal(tsid.logoutTokens.at(-1).sid, sid, 'the logout token names the upstream session');
  assert.ok(tsid.logoutTokens.at(-1).events['http://schemas.openid.net/event/backchannel-logout']);

  const left = await sessions(owner);
  assert.deepEqual(left.map((s) => s.id).sort(), passwordSessions, 'only the session from that upstream sid ended');
  await page.goto(`${ponte.base}/`);
  await atPonte(page, '/login');
  const home = await fetch(`${ponte.base}/`, { headers: { cookie: other }, redirect: 'manual' });
  assert.equal(home.status, 200, 'the password session is untouched');

  // A forged or replayed logout token is refused.
  const forged = await fetch(`${ponte.base}/federation/tsid/backchannel-logout`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ logout_token: 'eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.' }),
  });
  assert.equal(forged.status, 400);
});

test('back-channel logout by subject only (no sid) ends every session of the linked user', browserTest, async () => {
  const page = await freshPage();
  const owner = await ponte.newUser('bcl-sub');
  const person = upstreamPerson(full, 'bcl-sub');
  await connect(page, owner, person, full);
  await page.context().clearCookies();
  await loginWithUpstream(page, person, full);
  await atPonte(page, '/');
  assert.equal(lastIdToken(full).sid, undefined, 'this client gets no sid');
  const other = await passwordSession(owner);
  assert.ok((await sessions(owner)).length >= 2);

  await page.goto(`${full.issuer}/session/end`);
  await page.click('#logout-yes');
  await page.waitForSelector('#logout-done');
  const sent = full.backchannel.at(-1);
  assert.deepEqual({ ok: sent?.ok, sub: sent?.sub, error: sent?.error }, { ok: true, sub: person.sub, error: undefined });
  const token = full.logoutTokens.at(-1);
  assert.equal(token.sub, person.sub);
  assert.equal(token.sid, undefined, 'the logout token names only the subject');
  assert.deepEqual(await sessions(owner), [], 'every session of the linked user ended');
  const home = await fetch(`${ponte.base}/`, { headers: { cookie: other }, redirect: 'manual' });
  assert.equal(home.headers.get('location'), '/login', `the password session ended too (HTTP ${home.status})`);
});

/** Signs `user` in with the password through plain HTTP; returns the Cookie header. */
async function passwordSession(user) {
  const loginPage = await fetch(`${ponte.base}/login`);
  const cookies = cookiesFrom(loginPage);
  const signedIn = await fetch(`${ponte.base}/login`, {
    method: 'POST',
    redirect: 'manual',
    headers: { cookie: cookies.join('; '), 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ email: user.email, password: user.password, csrf_token: csrfFrom(await loginPage.text()) }),
  });
  assert.equal(signedIn.status, 303);
  return [...cookies, ...cookiesFrom(signedIn)].join('; ');
}

// ---------------------------------------------------------------------------------------
// Two replicas on PostgreSQL and Redis: a flow started on one finishes on the other.

const TEST_DATABASE_URL = process.env.PONTE_TEST_DATABASE_URL;
const TEST_REDIS_URL = process.env.PONTE_TEST_REDIS_URL;
const MISSING_BACKENDS = 'set PONTE_TEST_DATABASE_URL and PONTE_TEST_REDIS_URL (as .ci/run does) to run the two-replica test';
const replicaTest = {
  timeout: 60_000,
  // Skipped on a bare machine; under CI it runs, and fails without the backends.
  skip: needsBrowser || ((TEST_DATABASE_URL && TEST_REDIS_URL) || process.env.CI ? false : MISSING_BACKENDS),
};

test('a flow started on replica 1 finishes on replica 2 (shared PostgreSQL and Redis)', replicaTest, async (t) => {
  assert.ok(TEST_DATABASE_URL && TEST_REDIS_URL, MISSING_BACKENDS);
  const suffix = randomBytes(6).toString('hex');
  const database = `ponte_e2e_fed_${suffix}`;
  await run('psql', [TEST_DATABASE_URL, '-v', 'ON_ERROR_STOP=1', '-qc', `CREATE DATABASE ${database}`], { timeout: 20_000 });
  const prefix = `ponte-e2e-fed-${suffix}:`;
  const cleanups = [];
  t.after(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup().catch((e) => console.error(`cleanup: ${e.message}`));
    await run('psql', [TEST_DATABASE_URL, '-qc', `DROP DATABASE IF EXISTS ${database} WITH (FORCE)`], { timeout: 20_000 });
    await dropRedisPrefix(TEST_REDIS_URL, prefix);
  });

  const databaseUrl = new URL(TEST_DATABASE_URL);
  databaseUrl.pathname = `/${database}`;
  const port1 = await freePort();
  const publicUrl = `http://127.0.0.1:${port1}`;
  const upstream = await startUpstream({ ponteBase: publicUrl });
  cleanups.push(() => upstream.stop());
  const shared = {
    ...upstream.env,
    PONTE_PUBLIC_URL: publicUrl,
    PONTE_DATABASE_URL: databaseUrl.href,
    PONTE_REDIS_URL: TEST_REDIS_URL,
    PONTE_REDIS_KEY_PREFIX: prefix,
    PONTE_MASTER_KEY: randomBytes(32).toString('base64'),
  };
  const replica1 = await startPonte(shared, { port: port1 });
  cleanups.push(() => replica1.stop());
  const replica2 = await startPonte(shared);
  cleanups.push(() => replica2.stop());
  assert.notEqual(replica1.base, replica2.base);

  const owner = await replica1.newUser('replica');
  const person = upstream.addUser({ email: `replica-${suffix}@teamsystem.example`, name: 'Replica Person', password: `replica-password-${suffix}` });
  const page = await freshPage();
  await page.goto(`${replica1.base}/login`);
  await signIn(page, owner);
  await page.goto(`${replica1.base}/`);

  // The upstream sends the browser back to the public URL (replica 1); deliver that
  // callback to replica 2 instead, as a load balancer might.
  let delivered;
  upstream.setCallbackHook((callback) => {
    const url = new URL(callback);
    url.port = new URL(replica2.base).port;
    delivered = url.href;
    return delivered;
  });
  await page.click('#connect-tsid');
  await page.waitForURL((url) => url.origin === upstream.issuer && url.pathname.startsWith('/interaction/'));
  await upstreamSignIn(page, person);
  await atPonte(page, '/link/confirm', replica2);
  assert.ok(delivered?.startsWith(`${replica2.base}/federation/tsid/callback?`), 'replica 2 took the callback');
  assert.equal(await page.textContent('#upstream-email'), person.email);
  assert.equal(await page.textContent('#ponte-user'), owner.email);
  await page.click('#link-continue');
  await page.waitForURL(`${replica2.base}/`);

  // Written once, seen by both.
  for (const replica of [replica1, replica2]) {
    const listed = await replica.api('GET', `/api/v1/accounts/${owner.accountId}/users/${owner.userId}/identities`);
    assert.equal(listed.status, 200, JSON.stringify(listed.body));
    assert.deepEqual(listed.body.identities.map((i) => i.subject), [person.sub], `identities on ${replica.base}`);
  }
  for (const replica of [replica1, replica2]) {
    assert.doesNotMatch(replica.stderr(), /panicked/);
  }
});
