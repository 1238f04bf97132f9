// The README's walkthrough, against the real binary on its embedded defaults:
// register a client, get a token, verify it with an independent JOSE library against the
// published JWKS, create an account, sign its owner in through the login page.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createRemoteJWKSet, jwtVerify, decodeProtectedHeader } from 'jose';
import { startPonte, csrfFrom, cookiesFrom } from './ponte.mjs';

let ponte;
before(async () => { ponte = await startPonte(); });
after(async () => {
  const { code, signal } = await ponte.stop();
  assert.ok(code === 0 || signal === 'SIGTERM', `ponte stopped cleanly (code ${code}, signal ${signal})`);
});

async function adminToken() {
  const created = JSON.parse(await ponte.cli('client', 'create', '--name', 'pos-backend', '--grant', 'client_credentials', '--scope', 'ponte.admin'));
  assert.match(created.client_id, /^cl_/);
  assert.equal(created.client_secret.length, 43, '256-bit secret');
  const basic = Buffer.from(`${created.client_id}:${created.client_secret}`).toString('base64');
  const response = await fetch(`${ponte.base}/oauth2/token`, {
    method: 'POST',
    headers: { authorization: `Basic ${basic}`, 'content-type': 'application/x-www-form-urlencoded' },
    body: 'grant_type=client_credentials',
  });
  assert.equal(response.status, 200);
  const body = await response.json();
  return { ...created, ...body };
}

test('a client_credentials token verifies against the published JWKS with jose', async () => {
  const { access_token: token, client_id: clientId } = await adminToken();
  const discovery = await (await fetch(`${ponte.base}/.well-known/openid-configuration`)).json();
  assert.equal(discovery.issuer, ponte.base);
  const jwks = createRemoteJWKSet(new URL(discovery.jwks_uri));
  const { payload, protectedHeader } = await jwtVerify(token, jwks, {
    issuer: ponte.base,
    audience: 'ponte-api',
    typ: 'at+jwt',
    algorithms: ['ES256'],
    requiredClaims: ['iss', 'sub', 'aud', 'exp', 'iat', 'jti', 'client_id', 'scope'],
  });
  assert.equal(protectedHeader.typ, 'at+jwt');
  assert.equal(payload.client_id, clientId);
  assert.equal(payload.sub, clientId);
  assert.equal(payload.scope, 'ponte.admin');

  // A token whose payload was altered no longer verifies.
  const [h, , s] = token.split('.');
  const forged = Buffer.from(JSON.stringify({ ...payload, scope: 'ponte.admin ponte.root' })).toString('base64url');
  await assert.rejects(jwtVerify(`${h}.${forged}.${s}`, jwks, { issuer: ponte.base, audience: 'ponte-api' }));
  assert.equal(decodeProtectedHeader(token).alg, 'ES256');
});

test('the walkthrough: account, owner, sign in, signed-in page', async () => {
  const { access_token: token } = await adminToken();
  const created = await fetch(`${ponte.base}/api/v1/accounts`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'Pizzeria Da Gino', owner: { email: 'gino@esempio.it', name: 'Gino Verdi', password: 'una password lunga' } }),
  });
  assert.equal(created.status, 201);
  const account = await created.json();
  assert.equal(created.headers.get('location'), `/api/v1/accounts/${account.id}`);
  const fetched = await (await fetch(`${ponte.base}/api/v1/accounts/${account.id}`, { headers: { authorization: `Bearer ${token}` } })).json();
  assert.equal(fetched.name, 'Pizzeria Da Gino');

  const loginPage = await fetch(`${ponte.base}/login`, { headers: { 'accept-language': 'it' } });
  const html = await loginPage.text();
  assert.match(html, /Accedi a Ponte/);
  const cookies = cookiesFrom(loginPage);
  const signedIn = await fetch(`${ponte.base}/login`, {
    method: 'POST',
    redirect: 'manual',
    headers: { cookie: cookies.join('; '), 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ email: 'gino@esempio.it', password: 'una password lunga', csrf_token: csrfFrom(html) }),
  });
  assert.equal(signedIn.status, 303);
  const session = cookiesFrom(signedIn).find((c) => c.startsWith('ponte_session='));
  assert.ok(session, 'session cookie set');
  const home = await fetch(`${ponte.base}/`, { headers: { cookie: [...cookies, session].join('; ') } });
  assert.equal(home.status, 200);
  const page = await home.text();
  assert.match(page, /Gino Verdi/);
  assert.match(page, /owner/);
  assert.match(page, /Pizzeria Da Gino/);
});

test('bad input gets problem+json, never a 500', async () => {
  const { access_token: token } = await adminToken();
  const response = await fetch(`${ponte.base}/api/v1/accounts`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: '{"name": [',
  });
  assert.equal(response.status, 400);
  assert.equal(response.headers.get('content-type'), 'application/problem+json');
  assert.equal((await response.json()).code, 'invalid_json');
});
