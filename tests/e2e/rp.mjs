// A relying party of Ponte as another team would write it: openid-client (a certified RP)
// for the protocol, jose for verifying tokens against the published JWKS, and a tiny
// node:http server on a free loopback port that the browser is sent back to.
import { createServer } from 'node:http';
import * as client from 'openid-client';
import { createRemoteJWKSet, jwtVerify } from 'jose';

/**
 * The RP's web side: answers /callback and /logged-out with a small page and records
 * every request it gets. `close()` stops it.
 */
export async function startRp() {
  const hits = [];
  const server = createServer((req, res) => {
    const url = new URL(req.url, origin);
    hits.push(url);
    const known = url.pathname === '/callback' || url.pathname === '/logged-out';
    res.writeHead(known ? 200 : 404, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
    res.end(`<!doctype html><title>shop</title><h1 id="rp">shop ${known ? url.pathname : 'not found'}</h1>`);
  });
  await new Promise((ok, fail) => {
    server.once('error', fail);
    server.listen(0, '127.0.0.1', ok);
  });
  const origin = `http://127.0.0.1:${server.address().port}`;
  return {
    origin,
    redirectUri: `${origin}/callback`,
    postLogoutRedirectUri: `${origin}/logged-out`,
    hits,
    close: () => new Promise((ok) => {
      server.closeAllConnections();
      server.close(() => ok());
    }),
  };
}

/**
 * Registers a client for `rp` with `ponte client create` and returns
 * `{client_id, client_secret}` as printed.
 */
export async function registerClient(ponte, rp, {
  name = 'shop',
  grants = ['authorization_code', 'refresh_token'],
  firstParty = true,
  isPublic = false,
  scopes = [],
  redirectUris = [rp.redirectUri],
} = {}) {
  const args = ['client', 'create', '--name', name];
  for (const grant of grants) args.push('--grant', grant);
  for (const uri of redirectUris) args.push('--redirect-uri', uri);
  args.push('--post-logout-redirect-uri', rp.postLogoutRedirectUri);
  if (firstParty) args.push('--first-party');
  if (isPublic) args.push('--public');
  for (const scope of scopes) args.push('--scope', scope);
  const printed = await ponte.cli(...args);
  try {
    return JSON.parse(printed);
  } catch {
    throw new Error(`\`ponte ${args.join(' ')}\` printed no JSON:\n${printed}`);
  }
}

/**
 * openid-client's view of Ponte for a registered client: discovery over plain http on
 * loopback, client_secret_basic (or none for a public client). `secret` overrides the
 * registered secret, to play an RP with the wrong one.
 */
export async function discover(ponte, registered, { secret = registered.client_secret, auth } = {}) {
  const authentication = auth
    ?? (secret === null || secret === undefined ? client.None() : client.ClientSecretBasic(secret));
  return client.discovery(new URL(ponte.base), registered.client_id, {}, authentication, {
    execute: [client.allowInsecureRequests],
    timeout: 10,
  });
}

/**
 * A fresh authorization request: PKCE S256, state and nonce, as an RP makes one.
 * `params` adds or overrides query parameters (`undefined` removes one).
 */
export async function authorizationRequest(config, rp, params = {}) {
  const verifier = client.randomPKCECodeVerifier();
  const state = client.randomState();
  const nonce = client.randomNonce();
  const all = {
    redirect_uri: rp.redirectUri,
    scope: 'openid profile email offline_access',
    code_challenge: await client.calculatePKCECodeChallenge(verifier),
    code_challenge_method: 'S256',
    state,
    nonce,
    ...params,
  };
  for (const [k, v] of Object.entries(all)) if (v === undefined) delete all[k];
  const url = client.buildAuthorizationUrl(config, all);
  return { url, verifier, state, nonce, checks: { pkceCodeVerifier: verifier, expectedState: state, expectedNonce: nonce, idTokenExpected: true } };
}

/**
 * Waits until the browser is back at the RP's redirect URI with the response to the
 * request whose state is `state`, and returns that URL.
 */
export async function backAtRp(page, rp, state) {
  await page.waitForURL((url) => url.href.startsWith(`${rp.redirectUri}?`) && url.searchParams.get('state') === state);
  return new URL(page.url());
}

/** A resource server's key set: fetched fresh from `jwks_uri` (no cache shared between tests). */
export function remoteJwks(config) {
  return createRemoteJWKSet(new URL(config.serverMetadata().jwks_uri), { timeoutDuration: 5_000 });
}

/** Verifies an ID token for `config`'s client as an RP must (signature included). */
export async function verifyIdToken(config, idToken, jwks = remoteJwks(config)) {
  const metadata = config.serverMetadata();
  return jwtVerify(idToken, jwks, {
    issuer: metadata.issuer,
    audience: config.clientMetadata().client_id,
    algorithms: metadata.id_token_signing_alg_values_supported,
    requiredClaims: ['iss', 'sub', 'aud', 'exp', 'iat'],
  });
}

/** Verifies an access token as a resource server of Ponte's API does (RFC 9068). */
export async function verifyAccessToken(config, accessToken, jwks = remoteJwks(config)) {
  const metadata = config.serverMetadata();
  return jwtVerify(accessToken, jwks, {
    issuer: metadata.issuer,
    audience: 'ponte-api',
    typ: 'at+jwt',
    requiredClaims: ['iss', 'sub', 'aud', 'exp', 'iat', 'jti', 'client_id', 'scope'],
  });
}

/**
 * Runs `promise` (an openid-client call that must fail) and returns the OAuth error it
 * failed with: `{error, status, description}`. Fails the test when it succeeds or fails
 * for another reason. A 401 with `WWW-Authenticate` (RFC 6749 §5.2, client authentication
 * through the Authorization header) reaches openid-client as a challenge error whose body
 * it leaves unread: the error code is read from that body.
 */
export async function oauthError(promise) {
  let result;
  try {
    result = await promise;
  } catch (error) {
    if (error.code === 'OAUTH_WWW_AUTHENTICATE_CHALLENGE') {
      const body = await error.response.json().catch(() => ({}));
      return { error: body.error, status: error.status, description: body.error_description, challenges: error.cause };
    }
    if (typeof error.error !== 'string') throw error;
    return { error: error.error, status: error.status, description: error.error_description };
  }
  throw new Error(`expected an OAuth error, got success: ${JSON.stringify(result)}`);
}

export { client };
