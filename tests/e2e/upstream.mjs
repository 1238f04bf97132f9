// The upstream OpenID Provider ("the company-wide ID") for Ponte's federation tests and
// for trying federation by hand: oidc-provider (OpenID Certified) with small interaction
// pages of our own, so that passwords are really checked and different people really
// are different. oidc-provider's devInteractions (which accept anyone) stay off.
//
// In a test:
//   const upstream = await startUpstream({ ponteBase: 'http://127.0.0.1:8080' });
//   startPonte({ ...upstream.env })   // PONTE_PROVIDERS__TSID__* for this provider
//
// By hand (prints the PONTE_PROVIDERS__… lines for Ponte and keeps running):
//   node tests/e2e/upstream.mjs --port 4000 --ponte http://127.0.0.1:8080
//
// It listens on 127.0.0.2 by default: cookies are per host, not per port, so the upstream
// and Ponte (127.0.0.1) keep separate cookie jars in one browser, as two real sites do.
//
// What it offers:
// - a sign-in form (`#upstream-login`: input[name=login], input[name=password],
//   button#upstream-submit, button#upstream-cancel → access_denied) checked against an
//   in-memory user table (`users`, `addUser()`); a wrong password shows
//   `#upstream-error`;
// - `prompt=create` (unless `promptCreate: false`): a sign-up form (`#upstream-signup`:
//   input[name=email|name|password], button#upstream-create) that adds a user;
// - consent given automatically (`consent: 'auto'`, the default) or on a page
//   (`consent: 'page'`: button#upstream-allow / button#upstream-deny);
// - back-channel logout (ID tokens carry `sid`; logging out at `end_session_endpoint`
//   POSTs a logout token to Ponte), with a confirmation page (button#logout-yes);
// - records of what happened, for assertions: `interactions`, `idTokens` (decoded ID
//   tokens from the token endpoint), `authorizations` (the query of every authorization
//   request), `requests`, `backchannel` (each logout delivery: ok or the error) and
//   `logoutTokens` (decoded).
import { createServer } from 'node:http';
import { randomBytes, randomUUID } from 'node:crypto';
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import Provider, { interactionPolicy } from 'oidc-provider';
import { decodeJwt, exportJWK, generateKeyPair } from 'jose';

/** The people the upstream knows when a test starts (copied, so each start has its own). */
export const DEFAULT_USERS = [
  { sub: 'u-mario', email: 'mario.rossi@gruppo.it', email_verified: true, name: 'Mario Rossi', password: 'mario-password-1' },
  { sub: 'u-bruno', email: 'bruno@gruppo.it', email_verified: true, name: 'Bruno Verdi', password: 'bruno-password-2' },
  { sub: 'u-carla', email: 'carla@gruppo.it', email_verified: true, name: 'Carla Neri', password: 'carla-password-3' },
  { sub: 'u-dario', email: 'dario@gruppo.it', email_verified: false, name: 'Dario Gallo', password: 'dario-password-4' },
];

function html(value) {
  return String(value ?? '').replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function page(title, body) {
  // No web fonts, no remote anything: the browser tests refuse non-loopback requests.
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>${html(title)}</title>
<style>body{font-family:sans-serif;max-width:28rem;margin:2rem auto}label,input,button{display:block;width:100%;margin:.3rem 0}</style>
</head><body><p id="upstream-brand">TeamSystem ID (test upstream)</p>${body}</body></html>`;
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 16_384) throw new Error('form too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function shellQuote(value) {
  return /^[\w.:/@%+=,-]+$/.test(value) ? value : `'${value.replaceAll("'", "'\\''")}'`;
}

function isLoopbackUrl(url) {
  const { hostname } = new URL(url);
  return hostname === 'localhost' || hostname === '[::1]' || /^127\.\d+\.\d+\.\d+$/.test(hostname);
}

/**
 * Starts the upstream provider. `ponteBase` is the Ponte origin (its PONTE_PUBLIC_URL)
 * whose callback and back-channel logout URIs the client is registered with;
 * `clientMetadata` adds to (or overrides) that client's registration.
 * Returns `{issuer, clientId, clientSecret, providerId, users, env, envLines(), addUser(),
 * interactions, idTokens, authorizations, requests, backchannel, logoutTokens, provider,
 * setCallbackHook(), stop()}`.
 */
export async function startUpstream({
  ponteBase,
  host = '127.0.0.2',
  port = 0,
  providerId = 'tsid',
  displayName = 'TeamSystem ID',
  clientId = 'ponte',
  clientSecret = randomBytes(32).toString('base64url'),
  conformIdTokenClaims = true,
  promptCreate = true,
  consent = 'auto',
  users = DEFAULT_USERS,
  clientMetadata = {},
} = {}) {
  if (!ponteBase) throw new Error('startUpstream needs ponteBase (Ponte\'s public URL)');
  if (!/^[a-z0-9-]+$/.test(providerId)) throw new Error(`provider id ${providerId}: lowercase letters, digits and '-'`);
  const ponte = ponteBase.replace(/\/+$/, '');
  const table = users.map((u) => ({ ...u }));
  const interactions = [];
  const idTokens = [];
  const requests = [];
  const authorizations = [];
  const backchannel = [];
  const logoutTokens = [];

  const bySub = (sub) => table.find((u) => u.sub === sub);
  const byLogin = (login) => table.find((u) => u.email.toLowerCase() === String(login).trim().toLowerCase());
  function addUser({ email, name, password, email_verified = true, sub = `u-${randomUUID()}` }) {
    if (!email || !password) throw new Error('addUser needs email and password');
    if (byLogin(email)) throw new Error(`upstream user ${email} exists`);
    const user = { sub, email, email_verified, name: name ?? email, password };
    table.push(user);
    return user;
  }

  // Listen first: the issuer names the port.
  let handler = (_req, res) => { res.writeHead(503).end(); };
  const server = createServer((req, res) => handler(req, res));
  await new Promise((ok, fail) => {
    server.once('error', fail);
    server.listen(port, host, ok);
  });
  const issuer = `http://${host}:${server.address().port}`;

  const { privateKey } = await generateKeyPair('RS256', { extractable: true });
  const signingKey = { ...(await exportJWK(privateKey)), kid: `up-${randomUUID().slice(0, 8)}`, use: 'sig', alg: 'RS256' };

  const policy = interactionPolicy.base();
  if (promptCreate) {
    // OpenID Connect Prompt Create 1.0: `prompt=create` asks for the sign-up form. A
    // requestable prompt is resolved once the interaction result carries `create`.
    policy.add(new interactionPolicy.Prompt({ name: 'create', requestable: true }), 0);
  }

  const provider = new Provider(issuer, {
    clients: [{
      client_id: clientId,
      client_secret: clientSecret,
      client_name: 'Ponte',
      redirect_uris: [`${ponte}/federation/${providerId}/callback`],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
      backchannel_logout_uri: `${ponte}/federation/${providerId}/backchannel-logout`,
      backchannel_logout_session_required: true,
      ...clientMetadata,
    }],
    jwks: { keys: [signingKey] },
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
    conformIdTokenClaims,
    pkce: { required: () => true },
    // Explicit lifetimes (seconds); the defaults print a notice at each first use.
    ttl: { AccessToken: 600, AuthorizationCode: 60, IdToken: 600, Interaction: 600, Session: 86_400, Grant: 86_400 },
    features: {
      devInteractions: { enabled: false },
      backchannelLogout: { enabled: true },
      rpInitiatedLogout: {
        enabled: true,
        async logoutSource(ctx, form) {
          ctx.body = page('Sign out', `<h1 id="logout-question">Sign out of TeamSystem ID?</h1>${form}
<button id="logout-yes" type="submit" form="op.logoutForm" value="yes" name="logout">Yes, sign me out</button>
<button id="logout-no" type="submit" form="op.logoutForm">No, stay signed in</button>`);
        },
        async postLogoutSuccessSource(ctx) {
          ctx.body = page('Signed out', '<h1 id="logout-done">You are signed out of TeamSystem ID</h1>');
        },
      },
    },
    interactions: {
      policy,
      url: (_ctx, interaction) => `/interaction/${interaction.uid}`,
    },
    async findAccount(_ctx, sub) {
      const user = bySub(sub);
      if (!user) return undefined;
      return {
        accountId: sub,
        async claims() {
          return { sub, email: user.email, email_verified: user.email_verified, name: user.name };
        },
      };
    },
    async renderError(ctx, out) {
      ctx.type = 'html';
      ctx.body = page('Error', `<h1 id="upstream-error-page">${html(out.error)}</h1><p>${html(out.error_description)}</p>`);
    },
    // oidc-provider refuses to call special-use addresses (loopback included) from its
    // back-channel requests, to stop SSRF. Here Ponte is on loopback on purpose: let
    // loopback through and nothing else.
    fetch(url, options) {
      if (!isLoopbackUrl(url)) return Promise.reject(new Error(`the test upstream only calls loopback, not ${url}`));
      const { dispatcher: _ignored, ...rest } = options;
      const token = rest.body instanceof URLSearchParams ? rest.body.get('logout_token') : null;
      if (token) logoutTokens.push(decodeJwt(token));
      return globalThis.fetch(url, rest);
    },
  });
  provider.on('backchannel.success', (_ctx, client, sub, sid) => backchannel.push({ ok: true, clientId: client.clientId, sub, sid }));
  provider.on('backchannel.error', (_ctx, error, client, sub, sid) => backchannel.push({ ok: false, clientId: client.clientId, sub, sid, error: error.message }));
  const oidc = provider.callback();

  function loginForm(uid, details, { error, login } = {}) {
    const hint = login ?? details.params.login_hint ?? '';
    return page('Sign in', `<h1>Sign in to TeamSystem ID</h1>
${error ? `<p id="upstream-error" role="alert">${html(error)}</p>` : ''}
<form id="upstream-login" method="post" action="/interaction/${html(uid)}/login">
<label for="login">Email</label><input id="login" name="login" type="email" value="${html(hint)}" autocomplete="username" required>
<label for="password">Password</label><input id="password" name="password" type="password" autocomplete="current-password" required>
<button id="upstream-submit" type="submit">Sign in</button>
</form>
<form method="post" action="/interaction/${html(uid)}/abort"><button id="upstream-cancel" type="submit">Cancel</button></form>`);
  }

  function signupForm(uid, { error, email = '', name = '' } = {}) {
    return page('Create your ID', `<h1>Create your TeamSystem ID</h1>
${error ? `<p id="upstream-error" role="alert">${html(error)}</p>` : ''}
<form id="upstream-signup" method="post" action="/interaction/${html(uid)}/create">
<label for="email">Email</label><input id="email" name="email" type="email" value="${html(email)}" required>
<label for="name">Name</label><input id="name" name="name" value="${html(name)}" required>
<label for="password">Password</label><input id="password" name="password" type="password" autocomplete="new-password" required>
<button id="upstream-create" type="submit">Create my ID</button>
</form>
<form method="post" action="/interaction/${html(uid)}/abort"><button id="upstream-cancel" type="submit">Cancel</button></form>`);
  }

  async function grantConsent(req, res, details) {
    const { prompt: { details: missing }, params, session: { accountId } } = details;
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId, clientId: params.client_id });
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const grantId = await grant.save();
    await provider.interactionFinished(req, res, { consent: details.grantId ? {} : { grantId } }, { mergeWithLastSubmission: true });
  }

  function send(res, status, body) {
    res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
    res.end(body);
  }

  async function interaction(req, res, uid, action) {
    const details = await provider.interactionDetails(req, res);
    if (details.uid !== uid) return send(res, 400, page('Error', '<h1>interaction mismatch</h1>'));
    const name = details.prompt.name;
    if (req.method === 'GET' && !action) {
      interactions.push({
        uid,
        prompt: name,
        reasons: [...details.prompt.reasons],
        params: { ...details.params },
        sessionAccountId: details.session?.accountId ?? null,
      });
      if (name === 'login') return send(res, 200, loginForm(uid, details));
      if (name === 'create') return send(res, 200, signupForm(uid));
      if (name === 'consent' && consent === 'auto') return grantConsent(req, res, details);
      if (name === 'consent') {
        const client = await provider.Client.find(details.params.client_id);
        return send(res, 200, page('Allow access', `<h1>Allow ${html(client?.clientName ?? details.params.client_id)} to know who you are?</h1>
<p id="upstream-scopes">${html(details.params.scope)}</p>
<form method="post" action="/interaction/${html(uid)}/confirm"><button id="upstream-allow" type="submit">Allow</button></form>
<form method="post" action="/interaction/${html(uid)}/abort"><button id="upstream-deny" type="submit">Deny</button></form>`));
      }
      return send(res, 400, page('Error', `<h1>unknown prompt ${html(name)}</h1>`));
    }
    if (req.method !== 'POST') return send(res, 405, page('Error', '<h1>method not allowed</h1>'));
    const form = await readForm(req);
    switch (action) {
      case 'login': {
        const user = byLogin(form.get('login') ?? '');
        // The same answer for an unknown email and a wrong password.
        if (!user || user.password !== form.get('password')) {
          return send(res, 200, loginForm(uid, details, { error: 'Wrong email or password.', login: form.get('login') }));
        }
        return provider.interactionFinished(req, res, { login: { accountId: user.sub } }, { mergeWithLastSubmission: false });
      }
      case 'create': {
        const email = (form.get('email') ?? '').trim();
        const password = form.get('password') ?? '';
        if (!email.includes('@') || password.length < 8 || byLogin(email)) {
          const error = byLogin(email) ? 'This email already has an ID.' : 'Enter an email and a password of 8 characters or more.';
          return send(res, 200, signupForm(uid, { error, email, name: form.get('name') }));
        }
        // The test upstream plays a provider that verifies the address during sign-up.
        const user = addUser({ email, name: (form.get('name') ?? '').trim() || email, password, email_verified: true });
        return provider.interactionFinished(req, res, { create: { accountId: user.sub }, login: { accountId: user.sub } }, { mergeWithLastSubmission: false });
      }
      case 'confirm':
        if (name !== 'consent') return send(res, 400, page('Error', '<h1>nothing to confirm</h1>'));
        return grantConsent(req, res, details);
      case 'abort':
        return provider.interactionFinished(req, res, { error: 'access_denied', error_description: 'The person cancelled at the provider.' }, { mergeWithLastSubmission: false });
      default:
        return send(res, 404, page('Error', '<h1>not found</h1>'));
    }
  }

  const callbackPrefix = `${ponte}/federation/${providerId}/callback?`;
  let callbackHook = null;

  handler = (req, res) => {
    const url = new URL(req.url, issuer);
    if (req.method === 'GET' && url.pathname === '/held') {
      const to = url.searchParams.get('to') ?? '';
      return send(res, 200, page('Held', `<p id="held" data-url="${html(to)}">The redirect back to Ponte was held here by the test.</p>`));
    }
    if (callbackHook) {
      // The redirect back to Ponte, as the test wants it (see setCallbackHook).
      const setHeader = res.setHeader.bind(res);
      res.setHeader = (name, value) => {
        if (name.toLowerCase() === 'location' && typeof value === 'string' && value.startsWith(callbackPrefix) && callbackHook) {
          const changed = callbackHook(value);
          if (changed === null) value = `${issuer}/held?to=${encodeURIComponent(value)}`;
          else if (changed !== undefined) value = String(changed);
        }
        return setHeader(name, value);
      };
    }
    requests.push({ method: req.method, path: url.pathname });
    if (url.pathname === '/auth') authorizations.push(Object.fromEntries(url.searchParams));
    const match = url.pathname.match(/^\/interaction\/([\w-]+)(?:\/(login|create|confirm|abort))?$/);
    if (match) {
      interaction(req, res, match[1], match[2]).catch((error) => {
        if (!res.headersSent) send(res, 400, page('Error', `<h1 id="upstream-error-page">${html(error.name)}</h1><p>${html(error.message)}</p>`));
        else res.destroy(error);
      });
      return;
    }
    if (req.method === 'POST' && url.pathname === '/token') {
      // Keep the ID tokens the token endpoint hands out, decoded, for assertions.
      const end = res.end.bind(res);
      res.end = (chunk, ...rest) => {
        try {
          const body = JSON.parse(Buffer.isBuffer(chunk) ? chunk.toString('utf8') : String(chunk ?? ''));
          if (body.id_token) idTokens.push(decodeJwt(body.id_token));
        } catch { /* not JSON: an error page */ }
        return end(chunk, ...rest);
      };
    }
    oidc(req, res);
  };

  const env = {
    [`PONTE_PROVIDERS__${providerId.toUpperCase()}__ISSUER`]: issuer,
    [`PONTE_PROVIDERS__${providerId.toUpperCase()}__CLIENT_ID`]: clientId,
    [`PONTE_PROVIDERS__${providerId.toUpperCase()}__CLIENT_SECRET`]: clientSecret,
    [`PONTE_PROVIDERS__${providerId.toUpperCase()}__DISPLAY_NAME`]: displayName,
    [`PONTE_PROVIDERS__${providerId.toUpperCase()}__SUPPORTS_PROMPT_CREATE`]: String(promptCreate),
  };

  return {
    issuer,
    clientId,
    clientSecret,
    providerId,
    displayName,
    ponteBase: ponte,
    users: table,
    /** A user by email (case-insensitive). */
    user: (email) => byLogin(email),
    addUser,
    env,
    /** The env lines that configure Ponte for this provider, quoted for a shell. */
    envLines: () => Object.entries(env).map(([k, v]) => `${k}=${shellQuote(v)}`),
    interactions,
    idTokens,
    requests,
    authorizations,
    backchannel,
    logoutTokens,
    provider,
    /**
     * For tests: while set, every redirect back to Ponte's callback goes through
     * `hook(url)`, which returns another URL to send the browser there instead, `null`
     * to hold the browser on an upstream page (`#held`, its `data-url` the callback URL),
     * or `undefined` to leave it. `setCallbackHook(null)` ends it. (A browser-side
     * `page.route` cannot do this: Playwright does not intercept redirect targets.)
     */
    setCallbackHook(hook) {
      callbackHook = hook;
    },
    stop: () => new Promise((ok) => {
      server.closeAllConnections();
      server.close(() => ok());
    }),
  };
}

function parseArgs(argv) {
  const options = {};
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${arg} needs a value`);
      i += 1;
      return argv[i];
    };
    switch (arg) {
      case '--port': options.port = Number(value()); break;
      case '--host': options.host = value(); break;
      case '--ponte': options.ponteBase = value(); break;
      case '--id': options.providerId = value(); break;
      case '--client-secret': options.clientSecret = value(); break;
      case '--no-prompt-create': options.promptCreate = false; break;
      case '--claims-in-id-token': options.conformIdTokenClaims = false; break;
      case '--consent-page': options.consent = 'page'; break;
      case '-h': case '--help': options.help = true; break;
      default: throw new Error(`unknown argument ${arg}`);
    }
  }
  return options;
}

const USAGE = `usage: node tests/e2e/upstream.mjs [--port 4000] [--host 127.0.0.2] [--ponte http://127.0.0.1:8080]
       [--id tsid] [--client-secret S] [--no-prompt-create] [--claims-in-id-token] [--consent-page]
Starts a test upstream OpenID Provider for Ponte and prints the PONTE_PROVIDERS__… lines.`;

async function main() {
  let options;
  try {
    options = parseArgs(process.argv.slice(2));
  } catch (error) {
    console.error(`${error.message}\n${USAGE}`);
    process.exit(2);
  }
  if (options.help) {
    console.log(USAGE);
    return;
  }
  const upstream = await startUpstream({ ponteBase: 'http://127.0.0.1:8080', port: 4000, ...options });
  console.log(`# Test upstream OpenID Provider at ${upstream.issuer}, client "${upstream.clientId}" for Ponte at ${upstream.ponteBase}.`);
  console.log('# Start Ponte with these variables (Ctrl-C here stops the provider):');
  for (const line of upstream.envLines()) console.log(line);
  console.log('# Upstream users (email / password):');
  for (const u of upstream.users) console.log(`#   ${u.email} / ${u.password}${u.email_verified ? '' : ' (email not verified)'}`);
  const stop = async () => {
    await upstream.stop();
    process.exit(0);
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

const invoked = process.argv[1] && (() => {
  try {
    return realpathSync(process.argv[1]) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
})();
if (invoked) {
  main().catch((error) => {
    console.error(error);
    process.exit(1);
  });
}
