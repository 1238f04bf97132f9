// The reference invoicing platform: the README's "invoicing-platform connector contract"
// implemented in memory with node:http only, for Ponte's end-to-end tests and for trying
// the connector by hand. It is what a platform team has to build, small enough to read.
//
// In a test:
//   const platform = await startPlatform({ clientId: 'ponte', clientSecret: 's3cret', webhookSecret: 'w' });
//   startPonte({ ...platform.env })   // PONTE_PLATFORM__* for this platform
//   platform.seedAccount({ vat_number: '01234567890', legal_name: 'Bar Rossi', owner_email: 'mario@esempio.it' });
//   platform.setOutage(true); ... platform.activations(); await platform.sendWebhook(url, event);
//
// By hand (prints its URL and the PONTE_PLATFORM__… lines, and keeps running):
//   node tests/e2e/platform.mjs --port 8090 --client-id ponte --client-secret s3cret --webhook-secret w
//
// What it does, beyond the contract's operations:
// - the token endpoint (`POST /oauth/token`, client_secret_basic, grant client_credentials)
//   issues random opaque tokens that live `tokenTtl` seconds (`--token-ttl`, default 300);
// - every /v1 call needs a live bearer token (else 401) and an Idempotency-Key (else 400);
//   a repeated key on the same operation (method and path) replays the first answer and
//   has no second effect; the same key with another body is 422 `idempotency_key_reused`;
//   GETs have no effect and are answered fresh;
// - one effective activation per (account, VAT number, kind), however many keys ask;
// - control endpoints for tests, unauthenticated (it listens on loopback):
//   POST /_control/accounts {vat_number, legal_name?, owner_email?} seeds an account;
//   POST /_control/outage {down} makes every /v1 call answer 503 while down;
//   POST /_control/credentials {vat_number, username, password} sets the one platform
//   login that checks `ok` for that VAT number (otherwise any password but "invalid" does);
//   POST /_control/tokens/revoke forgets every issued token (the next call gets a 401);
//   POST /_control/delay {ms, match?} holds every /v1 call whose path contains `match`
//   (every /v1 call without it) for `ms` before it is answered, `ms` 0 ends it; a held
//   call is recorded in /_control/requests (status 0) as it arrives, and has its effect
//   when the hold ends even if the caller has gone (as a real server that is slow);
//   GET /_control/activations → {effective, calls, by_vat: {vat: {effective, calls, activation_id}}};
//   GET /_control/collaborators → {collaborators: [...]};
//   GET /_control/requests → {requests: [{method, path, idempotency_key, replayed, status}]};
//   POST /_control/webhook {url, event, timestamp?, secret?} signs `event` as the contract
//   says (with the configured webhook secret unless `secret` is given) and posts it to
//   `url`; answers {status, body} with Ponte's answer.
import { createServer } from 'node:http';
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const MAX_BODY = 64 * 1024;
const KINDS = new Set(['digital_invoice']);

/** `v1=<hex>`: the contract's signature of a webhook body sent at `timestamp` (Unix seconds). */
export function signWebhook(secret, timestamp, body) {
  return `v1=${createHmac('sha256', secret).update(`${timestamp}.${body}`).digest('hex')}`;
}

function id(prefix) {
  return `${prefix}_${randomBytes(9).toString('base64url')}`;
}

function mask(email) {
  if (!email) return undefined;
  const [local, domain] = String(email).split('@');
  return `${local.slice(0, 1)}***@${domain ?? ''}`;
}

class HttpError extends Error {
  constructor(status, error, message) {
    super(message ?? error);
    this.status = status;
    this.body = { error, message: message ?? error };
  }
}

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY) throw new HttpError(413, 'body_too_large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function parseJson(text) {
  if (text === '') return {};
  try {
    const value = JSON.parse(text);
    if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new Error('not an object');
    return value;
  } catch {
    throw new HttpError(400, 'invalid_json', 'the body is not a JSON object');
  }
}

function send(res, status, body, headers = {}) {
  const text = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, { ...(text ? { 'content-type': 'application/json' } : {}), ...headers });
  res.end(text);
}

function sameSecret(a, b) {
  const x = Buffer.from(String(a));
  const y = Buffer.from(String(b));
  return x.length === y.length && timingSafeEqual(x, y);
}

/** RFC 6749 §2.3.1: id and secret are form-urlencoded before they are joined and base64'd. */
function basicCredentials(header) {
  const match = /^Basic\s+(.+)$/i.exec(header ?? '');
  if (!match) return null;
  const decoded = Buffer.from(match[1], 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) return null;
  const unform = (s) => decodeURIComponent(s.replace(/\+/g, ' '));
  try {
    return { id: unform(decoded.slice(0, colon)), secret: unform(decoded.slice(colon + 1)) };
  } catch {
    return null;
  }
}

function checkCompany(company) {
  const ok = company && typeof company === 'object'
    && typeof company.legal_name === 'string' && company.legal_name.trim() !== ''
    && typeof company.vat_number === 'string' && /^[0-9]{11}$/.test(company.vat_number);
  if (!ok) throw new HttpError(422, 'invalid_company', 'company needs a legal_name and an 11-digit vat_number');
  return company;
}

/** Starts the reference platform; `port` 0 (the default) picks a free one. */
export async function startPlatform({
  clientId,
  clientSecret,
  webhookSecret,
  port = 0,
  host = '127.0.0.1',
  tokenTtl = 300,
  platformSendsInvites = false,
} = {}) {
  if (!clientId || !clientSecret) throw new Error('startPlatform needs clientId and clientSecret');
  const tokens = new Map(); // token → expiry (ms)
  const accounts = new Map(); // id → account (with its companies)
  const byVat = new Map(); // vat → account id
  const collaborators = []; // {account_id, email, reference, status, platform_sent_invite}
  const activations = new Map(); // `${account}|${vat}|${kind}` → activation
  const activationCalls = new Map(); // vat → calls
  const idempotent = new Map(); // `${method} ${path} ${key}` → {body, status, response}
  const requests = [];
  let delay = { ms: 0, match: null };
  const apiKeys = [];
  /** vat_number → {username, password}: the valid login, once set over /_control/credentials. */
  const logins = new Map();
  let down = false;
  let tokenRequests = 0;

  const publicAccount = (a) => ({
    id: a.id,
    legal_name: a.legal_name,
    vat_number: a.vat_number,
    ...(a.owner_email ? { owner_email: mask(a.owner_email) } : {}),
    created_at: a.created_at,
  });

  function addAccount({ vat_number, legal_name, owner_email, company }) {
    if (byVat.has(vat_number)) throw new HttpError(409, 'account_exists', `${vat_number} already has an account`);
    const account = {
      id: id('pa'),
      legal_name: legal_name ?? `Company ${vat_number}`,
      vat_number,
      owner_email,
      created_at: new Date().toISOString(),
      companies: company ? [company] : [],
    };
    accounts.set(account.id, account);
    byVat.set(vat_number, account.id);
    return account;
  }

  function accountOf(accountId) {
    const account = accounts.get(accountId);
    if (!account) throw new HttpError(404, 'account_not_found', `no account ${accountId}`);
    return account;
  }

  function seedAccount({ vat_number, legal_name, owner_email }) {
    if (!/^[0-9]{11}$/.test(vat_number ?? '')) throw new HttpError(422, 'invalid_vat_number');
    return publicAccount(addAccount({ vat_number, legal_name, owner_email }));
  }

  function activationCounts() {
    const by_vat = {};
    for (const [vat, calls] of activationCalls) by_vat[vat] = { effective: 0, calls };
    for (const activation of activations.values()) {
      by_vat[activation.vat_number] ??= { effective: 0, calls: 0 };
      by_vat[activation.vat_number].effective += 1;
      by_vat[activation.vat_number].activation_id = activation.id;
    }
    const calls = [...activationCalls.values()].reduce((a, b) => a + b, 0);
    return { effective: activations.size, calls, by_vat };
  }

  /** The contract's operations: `route` → [status, body]. */
  function operate(method, segments, query, body) {
    const [v1, resource, accountId, sub, kind, leaf] = segments;
    if (v1 !== 'v1') throw new HttpError(404, 'not_found');
    if (resource === 'accounts' && segments.length === 2 && method === 'GET') {
      const vat = query.get('vat_number') ?? '';
      const found = byVat.has(vat) ? [publicAccount(accounts.get(byVat.get(vat)))] : [];
      return [200, { accounts: found }];
    }
    if (resource === 'accounts' && segments.length === 2 && method === 'POST') {
      const company = checkCompany(body.company);
      const account = addAccount({ vat_number: company.vat_number, legal_name: company.legal_name, company });
      return [201, { account: publicAccount(account) }];
    }
    if (resource === 'accounts' && sub === 'companies' && segments.length === 4 && method === 'POST') {
      const account = accountOf(accountId);
      const company = checkCompany(body.company);
      const holder = byVat.get(company.vat_number);
      if (holder && holder !== account.id) {
        throw new HttpError(409, 'account_exists', `${company.vat_number} belongs to another account`);
      }
      byVat.set(company.vat_number, account.id);
      account.companies = account.companies.filter((c) => c.vat_number !== company.vat_number).concat([company]);
      return [200, { account: publicAccount(account) }];
    }
    if (resource === 'accounts' && sub === 'collaborators' && segments.length === 4 && method === 'POST') {
      const account = accountOf(accountId);
      if (typeof body.email !== 'string' || !/^[^@\s]+@[^@\s]+$/.test(body.email)) {
        throw new HttpError(422, 'invalid_email', 'email must be an address');
      }
      let collaborator = collaborators.find((c) => c.account_id === account.id && c.email === body.email);
      if (!collaborator) {
        collaborator = {
          account_id: account.id,
          email: body.email,
          reference: body.reference ?? null,
          status: 'invited',
          platform_sent_invite: platformSendsInvites,
        };
        collaborators.push(collaborator);
      }
      const { email, status, platform_sent_invite } = collaborator;
      return [200, { collaborator: { email, status, platform_sent_invite } }];
    }
    if (resource === 'accounts' && sub === 'integrations' && leaf === 'activations' && segments.length === 6
      && method === 'POST') {
      const account = accountOf(accountId);
      if (!KINDS.has(kind)) throw new HttpError(404, 'integration_not_found', `no integration ${kind}`);
      const vat = body.vat_number;
      const vats = new Set([account.vat_number, ...account.companies.map((c) => c.vat_number)]);
      if (!vats.has(vat)) throw new HttpError(422, 'vat_number_not_in_account', `${vat} is not in ${account.id}`);
      if (typeof body.collaborator_email !== 'string' || body.collaborator_email === '') {
        throw new HttpError(422, 'invalid_email', 'collaborator_email is required');
      }
      const slot = `${account.id}|${vat}|${kind}`;
      if (!activations.has(slot)) {
        activations.set(slot, {
          id: id('act'),
          status: 'active',
          activated_at: new Date().toISOString(),
          account_id: account.id,
          vat_number: vat,
          kind,
        });
      }
      const { id: activationId, status, activated_at } = activations.get(slot);
      return [200, { activation: { id: activationId, status, activated_at } }];
    }
    if (resource === 'accounts' && sub === 'api-keys' && segments.length === 4 && method === 'POST') {
      const account = accountOf(accountId);
      const apiKey = `pk_${randomBytes(24).toString('base64url')}`;
      apiKeys.push({ account_id: account.id, vat_number: body.vat_number, api_key: apiKey });
      return [201, { api_key: apiKey }];
    }
    if (resource === 'credentials' && accountId === 'check' && segments.length === 3 && method === 'POST') {
      // Simply: no account for the VAT number means no delegation. An API key is valid if
      // it was issued for that VAT number; a technical key unless it is "invalid"; a login
      // if it is the one set over /_control/credentials, or else any password but
      // "invalid". No credentials at all are wrong. (`type` is optional, as it once was.)
      const credentials = body.credentials ?? {};
      const type = credentials.type ?? (credentials.api_key ? 'api_key' : credentials.key ? 'technical_key' : 'username_password');
      const valid = () => {
        if (type === 'api_key') return apiKeys.some((k) => k.api_key === credentials.api_key && k.vat_number === body.vat_number);
        if (type === 'technical_key') return typeof credentials.key === 'string' && credentials.key !== '' && credentials.key !== 'invalid';
        if (typeof credentials.username !== 'string' || typeof credentials.password !== 'string') return false;
        const login = logins.get(body.vat_number);
        if (login) return login.username === credentials.username && login.password === credentials.password;
        return credentials.password !== '' && credentials.password !== 'invalid';
      };
      let outcome = 'ok';
      if (!byVat.has(body.vat_number)) outcome = 'delegation_missing';
      else if (!valid()) outcome = 'invalid_credentials';
      return [200, { outcome }];
    }
    throw new HttpError(404, 'not_found', `no operation ${method} /${segments.join('/')}`);
  }

  async function api(req, res, url, text) {
    const segments = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
    const key = req.headers['idempotency-key'];
    const record = { method: req.method, path: url.pathname, idempotency_key: key ?? null, replayed: false, status: 0 };
    requests.push(record);
    const answer = (status, body) => { record.status = status; send(res, status, body); };
    if (delay.ms > 0 && (!delay.match || url.pathname.includes(delay.match))) {
      await new Promise((resolve) => { setTimeout(resolve, delay.ms); });
    }
    if (down) return answer(503, { error: 'unavailable', message: 'the platform is down for maintenance' });
    const bearer = /^Bearer\s+(.+)$/i.exec(req.headers.authorization ?? '')?.[1];
    const expiry = bearer && tokens.get(bearer);
    if (!expiry || expiry < Date.now()) {
      record.status = 401;
      return send(res, 401, { error: 'invalid_token', message: 'a live bearer token is required' },
        { 'www-authenticate': 'Bearer error="invalid_token"' });
    }
    if (!key) return answer(400, { error: 'idempotency_key_required', message: 'send an Idempotency-Key header' });
    const isActivation = segments[5] === 'activations' && KINDS.has(segments[4]) && req.method === 'POST';
    let body;
    try {
      body = req.method === 'GET' ? {} : parseJson(text);
    } catch (error) {
      return answer(error.status, error.body);
    }
    if (isActivation) {
      const vat = String(body.vat_number ?? '');
      activationCalls.set(vat, (activationCalls.get(vat) ?? 0) + 1);
    }
    const slot = `${req.method} ${url.pathname} ${key}`;
    if (req.method !== 'GET' && idempotent.has(slot)) {
      const first = idempotent.get(slot);
      if (first.body !== JSON.stringify(body)) {
        return answer(422, { error: 'idempotency_key_reused', message: 'this key was used for another request' });
      }
      record.replayed = true;
      return answer(first.status, first.response);
    }
    let status;
    let response;
    try {
      [status, response] = operate(req.method, segments, url.searchParams, body);
    } catch (error) {
      if (!(error instanceof HttpError)) throw error;
      [status, response] = [error.status, error.body];
    }
    // Refusals are replayed too: the same request gets the same answer.
    if (req.method !== 'GET') idempotent.set(slot, { body: JSON.stringify(body), status, response });
    return answer(status, response);
  }

  function tokenEndpoint(req, res, text) {
    const client = basicCredentials(req.headers.authorization);
    if (!client || !sameSecret(client.id, clientId) || !sameSecret(client.secret, clientSecret)) {
      return send(res, 401, { error: 'invalid_client' }, { 'www-authenticate': 'Basic realm="platform"' });
    }
    const form = new URLSearchParams(text);
    if (form.get('grant_type') !== 'client_credentials') {
      return send(res, 400, { error: 'unsupported_grant_type' });
    }
    const token = randomBytes(24).toString('base64url');
    tokens.set(token, Date.now() + tokenTtl * 1000);
    tokenRequests += 1;
    const scope = form.get('scope');
    return send(res, 200, { access_token: token, token_type: 'Bearer', expires_in: tokenTtl, ...(scope ? { scope } : {}) },
      { 'cache-control': 'no-store' });
  }

  async function sendWebhook(target, event, { timestamp, secret } = {}) {
    const key = secret ?? webhookSecret;
    if (!key) throw new Error('no webhook secret configured');
    const full = { id: id('evt'), occurred_at: new Date().toISOString(), ...event };
    const body = JSON.stringify(full);
    const ts = String(timestamp ?? Math.floor(Date.now() / 1000));
    const response = await fetch(target, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'platform-timestamp': ts, 'platform-signature': signWebhook(key, ts, body) },
      body,
      redirect: 'manual',
    });
    return { status: response.status, body: await response.text(), event: full };
  }

  async function control(req, res, url, text) {
    const route = `${req.method} ${url.pathname}`;
    const body = req.method === 'GET' ? {} : parseJson(text);
    switch (route) {
      case 'POST /_control/accounts':
        return send(res, 201, { account: seedAccount(body) });
      case 'POST /_control/outage':
        down = Boolean(body.down);
        return send(res, 200, { down });
      case 'POST /_control/delay':
        delay = { ms: Math.max(0, Number(body.ms) || 0), match: typeof body.match === 'string' ? body.match : null };
        return send(res, 200, delay);
      case 'POST /_control/credentials':
        if (typeof body.vat_number !== 'string' || typeof body.username !== 'string' || typeof body.password !== 'string') {
          throw new HttpError(400, 'invalid_request', 'vat_number, username and password are required');
        }
        logins.set(body.vat_number, { username: body.username, password: body.password });
        return send(res, 200, { vat_number: body.vat_number });
      case 'POST /_control/tokens/revoke':
        tokens.clear();
        return send(res, 200, { revoked: true });
      case 'GET /_control/activations':
        return send(res, 200, activationCounts());
      case 'GET /_control/collaborators':
        return send(res, 200, { collaborators });
      case 'GET /_control/requests':
        return send(res, 200, { requests });
      case 'POST /_control/webhook': {
        if (typeof body.url !== 'string' || typeof body.event !== 'object' || body.event === null) {
          throw new HttpError(400, 'invalid_request', 'url and event are required');
        }
        const { status, body: answer, event } = await sendWebhook(body.url, body.event, body);
        return send(res, 200, { status, body: answer, event });
      }
      default:
        throw new HttpError(404, 'not_found');
    }
  }

  const server = createServer(async (req, res) => {
    try {
      const url = new URL(req.url, 'http://platform.invalid');
      const text = await readBody(req);
      if (url.pathname === '/oauth/token' && req.method === 'POST') return tokenEndpoint(req, res, text);
      if (url.pathname.startsWith('/_control/')) return await control(req, res, url, text);
      if (url.pathname.startsWith('/v1/')) return await api(req, res, url, text);
      return send(res, 404, { error: 'not_found', message: 'not_found' });
    } catch (error) {
      if (error instanceof HttpError) return send(res, error.status, error.body);
      console.error('platform:', error);
      return send(res, 500, { error: 'internal', message: 'internal error' });
    }
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, resolve);
  });
  const url = `http://${host}:${server.address().port}`;
  return {
    url,
    /** Ponte's environment for this platform. */
    env: {
      PONTE_PLATFORM__BASE_URL: url,
      PONTE_PLATFORM__CLIENT_ID: clientId,
      PONTE_PLATFORM_CLIENT_SECRET: clientSecret,
      ...(webhookSecret ? { PONTE_PLATFORM_WEBHOOK_SECRET: webhookSecret } : {}),
    },
    seedAccount: (account) => seedAccount(account),
    setOutage: (value) => { down = Boolean(value); },
    /** Holds the /v1 calls whose path contains `match` (all without it) `ms` before answering; 0 ends it. */
    setDelay: (ms, match = null) => { delay = { ms, match }; },
    /** The one login that checks `ok` for `vat_number` from now on. */
    setValidLogin: (vatNumber, username, password) => { logins.set(vatNumber, { username, password }); },
    revokeTokens: () => tokens.clear(),
    activations: () => activationCounts(),
    collaborators: () => collaborators.map((c) => ({ ...c })),
    accounts: () => [...accounts.values()].map((a) => ({ ...publicAccount(a), owner_email: a.owner_email, companies: a.companies })),
    apiKeys: () => apiKeys.map((k) => ({ ...k })),
    requests,
    tokenRequests: () => tokenRequests,
    sendWebhook,
    stop: () => new Promise((resolve) => {
      server.closeAllConnections?.();
      server.close(() => resolve());
    }),
  };
}

const USAGE = `usage: node tests/e2e/platform.mjs [--port 8090] [--host 127.0.0.1] --client-id ID --client-secret SECRET
       [--webhook-secret SECRET] [--token-ttl SECONDS] [--platform-sends-invites]`;

function parseArgs(argv) {
  const options = { port: 8090 };
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
      case '--client-id': options.clientId = value(); break;
      case '--client-secret': options.clientSecret = value(); break;
      case '--webhook-secret': options.webhookSecret = value(); break;
      case '--token-ttl': options.tokenTtl = Number(value()); break;
      case '--platform-sends-invites': options.platformSendsInvites = true; break;
      case '--help': options.help = true; break;
      default: throw new Error(`unknown option ${arg}`);
    }
  }
  if (!options.help && (!options.clientId || !options.clientSecret)) throw new Error('--client-id and --client-secret are required');
  return options;
}

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
  const platform = await startPlatform(options);
  console.log(platform.url);
  for (const [name, value] of Object.entries(platform.env)) console.log(`${name}=${value}`);
  const stop = () => platform.stop().then(() => process.exit(0));
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
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
