// Ponte as an OpenID Provider (issue 3), proven with independent peers: openid-client is
// the relying party, jose the resource server that checks tokens against the JWKS, and
// Debian's Chromium the person's browser. One Ponte, one RP web server and (lazily) one
// browser for the file; every test registers its own client and signs in its own user,
// in a browser with no cookies.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createLocalJWKSet, decodeJwt, decodeProtectedHeader } from 'jose';
import { startPonte } from './ponte.mjs';
import { launchBrowser, needsBrowser, signIn } from './browser.mjs';
import {
  client, startRp, registerClient, discover, authorizationRequest, backAtRp, remoteJwks,
  verifyIdToken, verifyAccessToken, oauthError,
} from './rp.mjs';

const browserTest = { skip: needsBrowser, timeout: 30_000 };
const httpTest = { timeout: 20_000 };

let ponte;
let rp;
let browser;
before(async () => {
  // Keys rotated by the CLI reach the running server within a second.
  ponte = await startPonte({ PONTE_KEY_RELOAD_SECS: '1' });
  rp = await startRp();
});
after(async () => {
  await (await browser?.catch(() => null))?.close();
  await rp?.close();
  const log = ponte?.stderr() ?? '';
  await ponte?.stop();
  assert.doesNotMatch(log, /panicked/, `ponte panicked during the OIDC tests:\n${log}`);
});

/** A new tab in a cookie-less browser (Chromium starts with the first browser test). */
async function freshPage() {
  browser ??= launchBrowser();
  return (await browser).page();
}

/** A registered client and openid-client's configuration for it. */
async function shop(options = {}) {
  const registered = await registerClient(ponte, rp, options);
  const config = await discover(ponte, registered);
  return { registered, config };
}

function assertOnLoginPage(page) {
  const url = new URL(page.url());
  assert.equal(`${url.origin}${url.pathname}`, `${ponte.base}/login`, `expected Ponte's login page, browser is at ${page.url()}`);
}

/**
 * The browser half of the code flow for a signed-out browser: authorize, Ponte's login
 * page, back at the RP. Returns the request (PKCE verifier, state, nonce) and the URL the
 * RP was called back at.
 */
async function signInAtRp(page, config, user, params = {}) {
  const request = await authorizationRequest(config, rp, params);
  await page.goto(request.url.href);
  assertOnLoginPage(page);
  await signIn(page, user);
  const callback = await backAtRp(page, rp, request.state);
  return { ...request, callback };
}

/** The whole code flow: a new user signs in, the RP redeems the code. */
async function codeFlow(config, params = {}) {
  const page = await freshPage();
  const user = await ponte.newUser('rp');
  const flow = await signInAtRp(page, config, user, params);
  const tokens = await client.authorizationCodeGrant(config, flow.callback, flow.checks);
  return { page, user, flow, tokens };
}

/** GET /oauth2/authorize without a browser, without following redirects. */
async function authorizeRaw(url) {
  return fetch(url, { redirect: 'manual', signal: AbortSignal.timeout(10_000) });
}

/** The query of a redirect back to the RP's registered redirect URI. */
function redirectedToRp(response) {
  assert.ok([302, 303].includes(response.status), `expected a redirect, got ${response.status}`);
  const location = new URL(response.headers.get('location'), ponte.base);
  assert.equal(`${location.origin}${location.pathname}`, rp.redirectUri, 'redirected to the registered redirect URI');
  return location;
}

/** A client_credentials client, as the POS backend registers one. */
async function posClient() {
  return JSON.parse(await ponte.cli('client', 'create', '--name', 'pos', '--grant', 'client_credentials', '--scope', 'ponte.admin'));
}

async function introspect(registered, token) {
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

async function jwksNow() {
  const response = await fetch(`${ponte.base}/oauth2/jwks`, { signal: AbortSignal.timeout(10_000) });
  assert.equal(response.status, 200);
  return response.json();
}

/** `ponte keys rotate` against the running server's database. */
async function rotateKeys() {
  const rotated = JSON.parse(await ponte.cli('keys', 'rotate'));
  assert.equal(typeof rotated.current, 'string', `keys rotate prints {current, next, previous}: ${JSON.stringify(rotated)}`);
  assert.equal(typeof rotated.next, 'string');
  assert.ok(Array.isArray(rotated.previous));
  return rotated;
}

/** Calls `attempt` until it returns a truthy value, for at most `ms`. */
async function eventually(what, ms, attempt) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    last = await attempt();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

// ---------------------------------------------------------------------------------------
// Discovery

test('discovery publishes the OP endpoints and what they support', httpTest, async () => {
  const response = await fetch(`${ponte.base}/.well-known/openid-configuration`);
  assert.equal(response.status, 200);
  const d = await response.json();
  assert.equal(d.issuer, ponte.base);
  assert.equal(d.authorization_endpoint, `${ponte.base}/oauth2/authorize`);
  assert.equal(d.token_endpoint, `${ponte.base}/oauth2/token`);
  assert.equal(d.userinfo_endpoint, `${ponte.base}/oauth2/userinfo`);
  assert.equal(d.jwks_uri, `${ponte.base}/oauth2/jwks`);
  assert.equal(d.introspection_endpoint, `${ponte.base}/oauth2/introspect`);
  assert.equal(d.revocation_endpoint, `${ponte.base}/oauth2/revoke`);
  assert.equal(d.end_session_endpoint, `${ponte.base}/oauth2/logout`);
  assert.deepEqual(d.code_challenge_methods_supported, ['S256']);
  assert.equal(d.authorization_response_iss_parameter_supported, true);
  assert.deepEqual([...d.prompt_values_supported].sort(), ['consent', 'login', 'none']);
  assert.deepEqual(d.response_types_supported, ['code']);
  for (const grant of ['authorization_code', 'refresh_token', 'client_credentials']) {
    assert.ok(d.grant_types_supported.includes(grant), `grant_types_supported has ${grant}`);
  }
  assert.deepEqual([...d.token_endpoint_auth_methods_supported].sort(), ['client_secret_basic', 'client_secret_post', 'none']);
  assert.ok(d.id_token_signing_alg_values_supported.length > 0);
  for (const scope of ['openid', 'profile', 'email', 'offline_access']) {
    assert.ok(d.scopes_supported.includes(scope), `scopes_supported has ${scope}`);
  }
  for (const claim of ['sub', 'email', 'email_verified', 'name']) {
    assert.ok(d.claims_supported.includes(claim), `claims_supported has ${claim}`);
  }
});

// ---------------------------------------------------------------------------------------
// The code flow in a browser

test('a person signs in on Ponte, lands back on the RP, and the RP verifies the ID token and access token against the JWKS', browserTest, async () => {
  const { registered, config } = await shop();
  const page = await freshPage();
  const user = await ponte.newUser('happy');
  const flow = await signInAtRp(page, config, user);

  // The callback carries code, state and iss (RFC 9207), and the RP's page was served.
  assert.ok(flow.callback.searchParams.get('code'), 'code in the callback');
  assert.equal(flow.callback.searchParams.get('state'), flow.state);
  assert.equal(flow.callback.searchParams.get('iss'), ponte.base);
  assert.equal(await page.textContent('#rp'), 'shop /callback');

  const tokens = await client.authorizationCodeGrant(config, flow.callback, flow.checks);
  const jwks = remoteJwks(config);

  const { payload: id } = await verifyIdToken(config, tokens.id_token, jwks);
  assert.equal(id.iss, ponte.base);
  assert.equal(id.aud, registered.client_id);
  assert.equal(id.azp, registered.client_id);
  assert.equal(id.nonce, flow.nonce);
  assert.equal(typeof id.sub, 'string');
  assert.equal(typeof id.sid, 'string');
  assert.ok(Array.isArray(id.amr) && id.amr.includes('pwd'), `amr says password: ${JSON.stringify(id.amr)}`);
  const now = Math.floor(Date.now() / 1000);
  assert.ok(Math.abs(id.auth_time - now) < 60, 'auth_time is the sign-in just now');
  assert.ok(id.auth_time <= id.iat + 1 && id.iat < id.exp);
  assert.equal(id.email, user.email);
  assert.equal(typeof id.email_verified, 'boolean');
  assert.equal(id.name, user.name);

  const { payload: at, protectedHeader } = await verifyAccessToken(config, tokens.access_token, jwks);
  assert.equal(protectedHeader.typ, 'at+jwt');
  assert.equal(at.client_id, registered.client_id);
  assert.equal(at.sub, id.sub);
  assert.equal(at.account_id, user.accountId);
  assert.equal(at.role, 'owner');
  assert.deepEqual(at.scope.split(' ').sort(), ['email', 'offline_access', 'openid', 'profile']);

  assert.equal(typeof tokens.refresh_token, 'string');
  assert.throws(() => decodeJwt(tokens.refresh_token), { name: 'JWTInvalid' }, 'the refresh token is opaque, not a JWT');
  assert.deepEqual((await browser).blocked, [], 'the pages asked for nothing beyond loopback');
});

test('the refresh token rotates at every use and an old one is then refused', browserTest, async () => {
  const { config } = await shop();
  const { tokens } = await codeFlow(config);
  const first = tokens.refresh_token;

  const second = await client.refreshTokenGrant(config, first);
  assert.equal(typeof second.refresh_token, 'string');
  assert.notEqual(second.refresh_token, first, 'a new refresh token');
  const { payload } = await verifyAccessToken(config, second.access_token);
  assert.equal(payload.sub, decodeJwt(tokens.access_token).sub);

  const third = await client.refreshTokenGrant(config, second.refresh_token);
  assert.notEqual(third.refresh_token, second.refresh_token, 'rotated again');

  // The first token is two rotations old: no retry grace covers it.
  const refused = await oauthError(client.refreshTokenGrant(config, first));
  assert.equal(refused.error, 'invalid_grant');
});

test('userinfo returns the signed-in person\'s claims for the access token', browserTest, async () => {
  const { config } = await shop();
  const { user, tokens } = await codeFlow(config);
  const sub = tokens.claims().sub;
  const info = await client.fetchUserInfo(config, tokens.access_token, sub);
  assert.equal(info.sub, sub);
  assert.equal(info.email, user.email);
  assert.equal(typeof info.email_verified, 'boolean');
  assert.equal(info.name, user.name);
});

test('with a Ponte session, a second authorization returns to the RP without the login page', browserTest, async () => {
  const { config } = await shop();
  const { page, tokens } = await codeFlow(config);
  const again = await authorizationRequest(config, rp);
  await page.goto(again.url.href);
  const callback = await backAtRp(page, rp, again.state);
  const second = await client.authorizationCodeGrant(config, callback, again.checks);
  assert.equal(second.claims().sub, tokens.claims().sub);
  assert.equal(second.claims().sid, tokens.claims().sid, 'same Ponte session');
});

test('prompt=login shows the login page even with a Ponte session', browserTest, async () => {
  const { config } = await shop();
  const { page } = await codeFlow(config);
  const again = await authorizationRequest(config, rp, { prompt: 'login' });
  await page.goto(again.url.href);
  assertOnLoginPage(page);
});

test('a public client (no secret) completes the flow with PKCE only', browserTest, async () => {
  const { registered, config } = await shop({ name: 'spa', isPublic: true, grants: ['authorization_code'] });
  assert.equal(registered.client_secret, null, 'a public client has no secret');
  const { tokens, flow } = await codeFlow(config, { scope: 'openid profile email' });
  const { payload: id } = await verifyIdToken(config, tokens.id_token);
  assert.equal(id.aud, registered.client_id);
  assert.equal(id.nonce, flow.nonce);
  const { payload: at } = await verifyAccessToken(config, tokens.access_token);
  assert.equal(at.client_id, registered.client_id);
});

test('a client that is not first-party asks for consent; allowing returns to the RP with a code', browserTest, async () => {
  const { config } = await shop({ name: 'partner', firstParty: false });
  const page = await freshPage();
  const user = await ponte.newUser('consent');
  const request = await authorizationRequest(config, rp, { scope: 'openid email' });
  await page.goto(request.url.href);
  assertOnLoginPage(page);
  await signIn(page, user);
  await page.click('button[type=submit][name=decision][value=allow]');
  const callback = await backAtRp(page, rp, request.state);
  const tokens = await client.authorizationCodeGrant(config, callback, request.checks);
  assert.equal(tokens.claims().email, user.email);
});

test('denying consent returns access_denied to the RP', browserTest, async () => {
  const { config } = await shop({ name: 'partner', firstParty: false });
  const page = await freshPage();
  const user = await ponte.newUser('deny');
  const request = await authorizationRequest(config, rp, { scope: 'openid email' });
  await page.goto(request.url.href);
  assertOnLoginPage(page);
  await signIn(page, user);
  await page.click('button[type=submit][name=decision][value=deny]');
  const callback = await backAtRp(page, rp, request.state);
  const denied = await oauthError(client.authorizationCodeGrant(config, callback, request.checks));
  assert.equal(denied.error, 'access_denied');
});

// ---------------------------------------------------------------------------------------
// Logout

test('RP-initiated logout ends the Ponte session: back at the RP with state, the next authorization shows the login page', browserTest, async () => {
  const { config } = await shop();
  const { page, tokens } = await codeFlow(config);
  const state = client.randomState();
  const logout = client.buildEndSessionUrl(config, {
    id_token_hint: tokens.id_token,
    post_logout_redirect_uri: rp.postLogoutRedirectUri,
    state,
  });
  await page.goto(logout.href);
  await page.waitForURL((url) => url.href.startsWith(`${rp.postLogoutRedirectUri}?`));
  assert.equal(new URL(page.url()).searchParams.get('state'), state);

  const again = await authorizationRequest(config, rp);
  await page.goto(again.url.href);
  assertOnLoginPage(page);
});

test('RP-initiated logout revokes the refresh tokens of that session', browserTest, async () => {
  const { config } = await shop();
  const { page, tokens } = await codeFlow(config);
  const logout = client.buildEndSessionUrl(config, {
    id_token_hint: tokens.id_token,
    post_logout_redirect_uri: rp.postLogoutRedirectUri,
    state: client.randomState(),
  });
  await page.goto(logout.href);
  await page.waitForURL((url) => url.href.startsWith(`${rp.postLogoutRedirectUri}?`));
  const refused = await oauthError(client.refreshTokenGrant(config, tokens.refresh_token));
  assert.equal(refused.error, 'invalid_grant');
});

test('logout without an id_token_hint asks the person to confirm, then ends the session', browserTest, async () => {
  const { config } = await shop();
  const { page } = await codeFlow(config);
  await page.goto(`${ponte.base}/oauth2/logout`);
  assert.equal(new URL(page.url()).origin, ponte.base, 'a page of Ponte, not a redirect');
  await Promise.all([page.waitForEvent('framenavigated'), page.click('button[type=submit]#confirm-logout')]);
  await page.waitForLoadState();

  const again = await authorizationRequest(config, rp);
  await page.goto(again.url.href);
  assertOnLoginPage(page);
});

// ---------------------------------------------------------------------------------------
// Refusals

test('an authorization request without PKCE is sent back to the RP with invalid_request', httpTest, async () => {
  const { config } = await shop();
  const request = await authorizationRequest(config, rp, { code_challenge: undefined, code_challenge_method: undefined });
  const location = redirectedToRp(await authorizeRaw(request.url));
  assert.equal(location.searchParams.get('error'), 'invalid_request');
  assert.equal(location.searchParams.get('state'), request.state);
  assert.equal(location.searchParams.get('iss'), ponte.base);
  const seen = await oauthError(client.authorizationCodeGrant(config, location, request.checks));
  assert.equal(seen.error, 'invalid_request', 'openid-client accepts it as the error response to its request');
});

test('an authorization request with plain PKCE is sent back to the RP with invalid_request', httpTest, async () => {
  const { config } = await shop();
  const request = await authorizationRequest(config, rp, { code_challenge_method: 'plain' });
  const plain = new URL(request.url);
  plain.searchParams.set('code_challenge', request.verifier);
  const location = redirectedToRp(await authorizeRaw(plain));
  assert.equal(location.searchParams.get('error'), 'invalid_request');
  assert.equal(location.searchParams.get('state'), request.state);
  assert.equal(location.searchParams.get('iss'), ponte.base);
});

test('an unregistered redirect URI gets an error page from Ponte, never a redirect', httpTest, async () => {
  const { config } = await shop();
  for (const uri of [`${rp.origin}/elsewhere`, `${rp.redirectUri}/`, `${rp.redirectUri}?next=1`, rp.redirectUri.replace('127.0.0.1', 'localhost')]) {
    const request = await authorizationRequest(config, rp, { redirect_uri: uri });
    const response = await authorizeRaw(request.url);
    assert.equal(response.status, 400, `redirect_uri ${uri}`);
    assert.equal(response.headers.get('location'), null, `no redirect to ${uri}`);
    assert.match(response.headers.get('content-type') ?? '', /^text\/html/, 'an HTML page for the person');
  }
});

test('an unknown client_id gets an error page from Ponte, never a redirect', httpTest, async () => {
  const { config } = await shop();
  const request = await authorizationRequest(config, rp, { client_id: 'cl_nobody' });
  const response = await authorizeRaw(request.url);
  assert.equal(response.status, 400);
  assert.equal(response.headers.get('location'), null);
  assert.match(response.headers.get('content-type') ?? '', /^text\/html/);
});

test('prompt=none without a Ponte session is sent back with login_required', httpTest, async () => {
  const { config } = await shop();
  const request = await authorizationRequest(config, rp, { prompt: 'none' });
  const location = redirectedToRp(await authorizeRaw(request.url));
  assert.equal(location.searchParams.get('error'), 'login_required');
  assert.equal(location.searchParams.get('state'), request.state);
  assert.equal(location.searchParams.get('iss'), ponte.base);
});

test('a replayed authorization code is refused and the tokens of its first use are revoked', browserTest, async () => {
  const { registered, config } = await shop();
  const { flow, tokens } = await codeFlow(config);
  assert.equal((await introspect(registered, tokens.access_token)).active, true, 'active before the replay');

  const replay = await oauthError(client.authorizationCodeGrant(config, flow.callback, flow.checks));
  assert.equal(replay.error, 'invalid_grant');

  assert.deepEqual(await introspect(registered, tokens.access_token), { active: false }, 'the access token of the first use is revoked');
  const refreshed = await oauthError(client.refreshTokenGrant(config, tokens.refresh_token));
  assert.equal(refreshed.error, 'invalid_grant', 'the refresh token of the first use is revoked');
});

test('a replayed refresh token is refused and revokes its whole family, the newest token included', browserTest, async () => {
  const { config } = await shop();
  const { tokens } = await codeFlow(config);
  const first = tokens.refresh_token;
  const second = (await client.refreshTokenGrant(config, first)).refresh_token;
  const newest = (await client.refreshTokenGrant(config, second)).refresh_token;

  // `first` was replaced two rotations ago: outside any retry grace, so this is reuse.
  const replay = await oauthError(client.refreshTokenGrant(config, first));
  assert.equal(replay.error, 'invalid_grant');
  const afterReuse = await oauthError(client.refreshTokenGrant(config, newest));
  assert.equal(afterReuse.error, 'invalid_grant', 'the newest token of the family stopped working too');
});

test('a wrong client secret gets 401 invalid_client at the token endpoint', browserTest, async () => {
  const { registered, config } = await shop();
  const page = await freshPage();
  const flow = await signInAtRp(page, config, await ponte.newUser('secret'));
  const wrong = await discover(ponte, registered, { secret: `wrong-${registered.client_secret}` });
  const refused = await oauthError(client.authorizationCodeGrant(wrong, flow.callback, flow.checks));
  assert.equal(refused.status, 401);
  assert.equal(refused.error, 'invalid_client');
});

test('introspection without client authentication gets 401 invalid_client', httpTest, async () => {
  const token = await ponte.adminToken();
  const response = await fetch(`${ponte.base}/oauth2/introspect`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ token }),
  });
  assert.equal(response.status, 401);
  assert.equal((await response.json()).error, 'invalid_client');
});

test('introspection tells an authenticated client whether a token is active', httpTest, async () => {
  const registered = await posClient();
  const { access_token: token } = await client.clientCredentialsGrant(await discover(ponte, registered), { scope: 'ponte.admin' });
  const active = await introspect(registered, token);
  assert.equal(active.active, true);
  assert.equal(active.scope, 'ponte.admin');
  assert.equal(active.client_id, registered.client_id);
  assert.equal(typeof active.exp, 'number');
  assert.deepEqual(await introspect(registered, 'not-a-token'), { active: false });
});

test('a refresh token revoked by the RP (RFC 7009) no longer refreshes', browserTest, async () => {
  const { registered, config } = await shop();
  const { tokens } = await codeFlow(config);
  await client.tokenRevocation(config, tokens.refresh_token);
  const refused = await oauthError(client.refreshTokenGrant(config, tokens.refresh_token));
  assert.equal(refused.error, 'invalid_grant');
  assert.deepEqual(await introspect(registered, tokens.refresh_token), { active: false });
});

// ---------------------------------------------------------------------------------------
// Signing keys. These rotate Ponte's keys, so they run last; every other test fetches
// the JWKS afresh anyway.

test('after `ponte keys rotate` earlier tokens still verify and new tokens are signed with the new current key', browserTest, async () => {
  const { config } = await shop();
  const { page, tokens } = await codeFlow(config);
  const before = decodeProtectedHeader(tokens.access_token).kid;
  assert.equal(decodeProtectedHeader(tokens.id_token).kid, before);

  const rotated = await rotateKeys();
  assert.notEqual(rotated.current, before, 'a new current key');
  assert.ok(rotated.previous.includes(before), 'the old key is kept as previous');

  let refreshToken = tokens.refresh_token;
  const fresh = await eventually('tokens signed with the rotated key', 10_000, async () => {
    const next = await client.refreshTokenGrant(config, refreshToken);
    refreshToken = next.refresh_token;
    return decodeProtectedHeader(next.access_token).kid === rotated.current ? next : null;
  });
  // A new ID token, from a new authorization in the same (still signed-in) browser.
  const again = await authorizationRequest(config, rp);
  await page.goto(again.url.href);
  const renewed = await client.authorizationCodeGrant(config, await backAtRp(page, rp, again.state), again.checks);
  assert.equal(decodeProtectedHeader(renewed.id_token).kid, rotated.current, 'the new ID token uses the new key');

  const jwks = remoteJwks(config);
  await verifyIdToken(config, tokens.id_token, jwks);
  await verifyAccessToken(config, tokens.access_token, jwks);
  await verifyIdToken(config, renewed.id_token, jwks);
  await verifyAccessToken(config, fresh.access_token, jwks);
  const kids = (await jwksNow()).keys.map((k) => k.kid);
  for (const kid of [before, rotated.current, rotated.next]) assert.ok(kids.includes(kid), `JWKS publishes ${kid}`);
});

test('a resource server holding the JWKS from before a rotation verifies tokens signed after it', httpTest, async () => {
  const config = await discover(ponte, await posClient());
  const cached = createLocalJWKSet(await jwksNow());
  const rotated = await rotateKeys();
  const token = await eventually('a token signed with the rotated key', 10_000, async () => {
    const { access_token: t } = await client.clientCredentialsGrant(config, { scope: 'ponte.admin' });
    return decodeProtectedHeader(t).kid === rotated.current ? t : null;
  });
  await verifyAccessToken(config, token, cached);
});
