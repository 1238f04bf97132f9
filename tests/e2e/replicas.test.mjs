// The production shape (issue 11, item 3): two `ponte serve` on one PostgreSQL database and
// one Redis, behind Debian's nginx running deploy/nginx.conf (proxy.mjs), round-robin.
// The proxy's address is the public URL (the issuer) and the replicas trust it
// (`trusted_proxies = 127.0.0.1`), so the client address comes from X-Forwarded-For.
//
// Through the proxy: the OP flow (openid-client as the RP, Chromium as the person), the
// federation flow (oidc-provider upstream) and the README's REST walkthrough. That the
// requests really alternated is read, not assumed: nginx's access log names the replica
// of every request, and each replica's own `http_requests_total` counters must have grown
// by exactly what nginx says it sent there. Last, one replica is killed with SIGKILL
// between the login page and the form post, and the flow completes through the other.
//
// Needs PostgreSQL and Redis (PONTE_TEST_DATABASE_URL, PONTE_TEST_REDIS_URL, as .ci/run
// sets them), Chromium and nginx; skipped without them, except under CI.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { request } from 'node:http';
import { connect } from 'node:net';
import { createRemoteJWKSet, jwtVerify } from 'jose';
import { startPonte, freePort, csrfFrom } from './ponte.mjs';
import { launchBrowser, needsBrowser, signIn } from './browser.mjs';
import { startUpstream } from './upstream.mjs';
import { freshDatabase, dropRedisPrefix } from './pos.mjs';
import { startProxy, needsNginx, deployConfig } from './proxy.mjs';
import {
  client, startRp, registerClient, discover, authorizationRequest, backAtRp, remoteJwks,
  verifyIdToken, verifyAccessToken,
} from './rp.mjs';

const TEST_DATABASE_URL = process.env.PONTE_TEST_DATABASE_URL;
const TEST_REDIS_URL = process.env.PONTE_TEST_REDIS_URL;
const MISSING_BACKENDS = 'set PONTE_TEST_DATABASE_URL and PONTE_TEST_REDIS_URL (as .ci/run does) to run the replicas behind nginx';
// Skipped on a bare machine; under CI it runs, and fails without the backends.
const skip = needsBrowser || needsNginx || ((TEST_DATABASE_URL && TEST_REDIS_URL) || process.env.CI ? false : MISSING_BACKENDS);

/** The REST walkthrough's own source address: what the replicas must see as the client. */
const CLIENT = '127.0.0.7';

describe('two replicas behind nginx', { skip }, () => {
  let database;
  let prefix;
  let upstream;
  let replicas = [];
  let proxy;
  let rp;
  let browser;
  let people = 0;

  before(async () => {
    assert.ok(TEST_DATABASE_URL && TEST_REDIS_URL, MISSING_BACKENDS);
    database = await freshDatabase(TEST_DATABASE_URL, 'replicas');
    prefix = `ponte-e2e-replicas-${randomBytes(6).toString('hex')}:`;
    const port = await freePort();
    const publicUrl = `http://127.0.0.1:${port}`;
    upstream = await startUpstream({ ponteBase: publicUrl });
    const shared = {
      ...upstream.env,
      PONTE_PUBLIC_URL: publicUrl,
      PONTE_DATABASE_URL: database.url,
      PONTE_REDIS_URL: TEST_REDIS_URL,
      PONTE_REDIS_KEY_PREFIX: prefix,
      PONTE_MASTER_KEY: randomBytes(32).toString('base64'),
      PONTE_TRUSTED_PROXIES: '127.0.0.1',
    };
    // One after the other: the first applies the migrations.
    replicas.push(await startPonte(shared));
    replicas.push(await startPonte(shared));
    proxy = await startProxy(replicas.map((r) => r.base), { port });
    assert.equal(proxy.base, publicUrl);
    rp = await startRp();
  });

  after(async () => {
    const opened = await browser?.catch(() => null);
    const blocked = opened?.blocked ?? [];
    await opened?.close();
    await rp?.close();
    const logs = replicas.map((r) => r.stderr());
    for (const replica of replicas) await replica.stop();
    await proxy?.stop();
    await upstream?.stop();
    await database?.drop();
    if (prefix) await dropRedisPrefix(TEST_REDIS_URL, prefix);
    for (const log of logs) assert.doesNotMatch(log, /panicked/, `a replica panicked:\n${log}`);
    assert.deepEqual(blocked, [], 'no page asked for anything beyond loopback');
  });

  /** A new tab in a cookie-less browser (Chromium starts with the first test). */
  async function freshPage() {
    browser ??= launchBrowser();
    return (await browser).page();
  }

  /** `host:port` of a replica, as nginx's log names it. */
  const hostOf = (replica) => new URL(replica.base).host;

  /**
   * The requests a replica counted itself (`http_requests_total`, its own /metrics scrapes
   * left out): `{total, by}` with `by` keyed `METHOD route status`.
   */
  async function counted(replica) {
    const text = await (await fetch(`${replica.base}/metrics`, { signal: AbortSignal.timeout(5_000) })).text();
    const by = new Map();
    let total = 0;
    for (const [, method, route, status, value] of text.matchAll(/^http_requests_total\{method="([^"]*)",route="([^"]*)",status="(\d+)"\} (\d+)$/gm)) {
      if (route === '/metrics') continue;
      by.set(`${method} ${route} ${status}`, Number(value));
      total += Number(value);
    }
    return { total, by };
  }

  /** What a replica counted between two `counted()` readings, as `METHOD route status × n`. */
  function growth(before, now) {
    return [...now.by].filter(([k, n]) => n !== (before.by.get(k) ?? 0)).map(([k, n]) => `${k} × ${n - (before.by.get(k) ?? 0)}`);
  }

  /**
   * Runs `body` (a flow through the proxy) and proves where its requests went: both
   * replicas served some, each replica's own counters grew by exactly the requests nginx
   * logged for it, and the flow's `steps` (request paths that carry its state forward)
   * moved from one replica to the other at least once. Returns nginx's entries of the flow.
   */
  async function alternating(t, steps, body) {
    const [startLog, ...startCounts] = await Promise.all([proxy.log(), ...replicas.map(counted)]);
    await body();
    let entries;
    let grown;
    let nowCounts;
    const deadline = Date.now() + 3_000;
    for (;;) {
      // nginx writes its log line once the response is out: wait for the last ones.
      entries = (await proxy.log()).slice(startLog.length);
      nowCounts = await Promise.all(replicas.map(counted));
      grown = nowCounts.map((c, i) => c.total - startCounts[i].total);
      const logged = replicas.map((r) => entries.filter((e) => e.replica === hostOf(r)).length);
      if (logged.every((n, i) => n === grown[i]) || Date.now() > deadline) break;
      await new Promise((ok) => { setTimeout(ok, 50); });
    }
    const sequence = entries.map((e) => `${replicas.findIndex((r) => hostOf(r) === e.replica) + 1} ${e.status} ${e.method} ${e.uri.split('?')[0]}`);
    t.diagnostic(`via nginx (replica status request): ${sequence.join(' | ')}`);
    for (const [i, replica] of replicas.entries()) {
      const logged = entries.filter((e) => e.replica === hostOf(replica)).length;
      assert.ok(logged > 0, `replica ${i + 1} served part of the flow:\n${sequence.join('\n')}`);
      assert.equal(grown[i], logged, `replica ${i + 1} counted as many requests as nginx sent it: `
        + `${growth(startCounts[i], nowCounts[i]).join(', ')}\n${sequence.join('\n')}`);
    }
    assert.deepEqual(entries.filter((e) => e.status >= 500), [], 'no server error through the proxy');
    const stepped = entries.filter((e) => steps.some((s) => e.uri.split('?')[0] === s)).map((e) => e.replica);
    const handoffs = stepped.filter((r, i) => i > 0 && r !== stepped[i - 1]).length;
    assert.ok(handoffs > 0, `the flow's steps (${steps.join(', ')}) went from one replica to the other:\n${sequence.join('\n')}`);
    t.diagnostic(`requests per replica: ${grown.join(' / ')}; the flow's steps changed replica ${handoffs} times`);
    return entries;
  }

  /** The OP flow of a signed-out browser up to the RP's callback; returns the request and callback URL. */
  async function signInAtRp(page, config, user) {
    const flow = await authorizationRequest(config, rp);
    await page.goto(flow.url.href);
    assert.equal(new URL(page.url()).href.split('?')[0], `${proxy.base}/login`, 'Ponte\'s login page, through the proxy');
    await signIn(page, user);
    return { ...flow, callback: await backAtRp(page, rp, flow.state) };
  }

  /**
   * A request through the proxy from the walkthrough's own address (CLIENT):
   * `{status, headers, text, json()}`.
   */
  function call(method, path, { headers = {}, body } = {}) {
    return new Promise((ok, fail) => {
      const req = request(`${proxy.base}${path}`, { method, headers, localAddress: CLIENT, timeout: 10_000 }, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          ok({ status: res.statusCode, headers: res.headers, text, json: () => JSON.parse(text) });
        });
      });
      req.on('timeout', () => req.destroy(new Error(`${method} ${path}: timed out`)));
      req.on('error', fail);
      req.end(body);
    });
  }

  test('the OP flow through nginx: openid-client and Chromium, requests alternating between the replicas', { timeout: 60_000 }, async (t) => {
    const user = await replicas[0].newUser('op');
    const registered = await registerClient(replicas[0], rp);
    const page = await freshPage();
    await alternating(t, ['/oauth2/authorize', '/login', '/oauth2/token', '/oauth2/userinfo'], async () => {
      const config = await discover(proxy, registered);
      assert.equal(config.serverMetadata().issuer, proxy.base, 'the issuer is the proxy\'s address');
      const flow = await signInAtRp(page, config, user);
      assert.equal(flow.callback.searchParams.get('iss'), proxy.base);
      const tokens = await client.authorizationCodeGrant(config, flow.callback, flow.checks);
      const jwks = remoteJwks(config);
      const { payload } = await verifyIdToken(config, tokens.id_token, jwks);
      assert.equal(payload.nonce, flow.nonce);
      await verifyAccessToken(config, tokens.access_token, jwks);
      const info = await client.fetchUserInfo(config, tokens.access_token, payload.sub);
      assert.equal(info.email, user.email);
      // The session made on one replica serves SSO on either: a second authorization
      // returns to the RP without the login page.
      const again = await authorizationRequest(config, rp);
      await page.goto(again.url.href);
      const callback = await backAtRp(page, rp, again.state);
      const second = await client.authorizationCodeGrant(config, callback, again.checks);
      assert.equal((await verifyIdToken(config, second.id_token, jwks)).payload.sub, payload.sub);
      // The refresh token family, kept in the database, rotates whichever replica answers.
      const refreshed = await client.refreshTokenGrant(config, tokens.refresh_token);
      assert.notEqual(refreshed.refresh_token, tokens.refresh_token);
      const rotated = await client.refreshTokenGrant(config, refreshed.refresh_token);
      await verifyAccessToken(config, rotated.access_token, jwks);
    });
  });

  test('the federation flow through nginx: link an upstream ID, then sign in with it', { timeout: 60_000 }, async (t) => {
    const owner = await replicas[0].newUser('fed');
    const n = ++people;
    const person = upstream.addUser({ email: `replicas-${n}@teamsystem.example`, name: `Replica Person ${n}`, password: `replicas-password-${n}` });
    const page = await freshPage();
    const atUpstreamLogin = async () => {
      await page.waitForURL((url) => url.origin === upstream.issuer && url.pathname.startsWith('/interaction/'));
      await page.fill('#upstream-login input[name=login]', person.email);
      await page.fill('#upstream-login input[name=password]', person.password);
      await page.click('#upstream-submit');
    };
    await alternating(t, ['/login', '/federation/tsid/start', '/federation/tsid/callback', '/link/confirm', '/'], async () => {
      await page.goto(`${proxy.base}/login`);
      await signIn(page, owner);
      await page.waitForURL(`${proxy.base}/`);
      await page.click('#connect-tsid');
      await atUpstreamLogin();
      await page.waitForURL((url) => url.origin === proxy.base && url.pathname === '/link/confirm');
      assert.equal(await page.textContent('#upstream-email'), person.email);
      await page.click('#link-continue');
      await page.waitForURL(`${proxy.base}/`);
      // A new browser session: in through the upstream alone.
      await (await browser).context.clearCookies();
      await page.goto(`${proxy.base}/login`);
      await page.click('#login-with-tsid');
      await atUpstreamLogin();
      await page.waitForURL(`${proxy.base}/`);
      assert.equal(await page.textContent('#user-email'), owner.email);
    });
    // Written once, seen by both.
    for (const replica of replicas) {
      const listed = await replica.api('GET', `/api/v1/accounts/${owner.accountId}/users/${owner.userId}/identities`);
      assert.equal(listed.status, 200, JSON.stringify(listed.body));
      assert.deepEqual(listed.body.identities.map((i) => i.subject), [person.sub]);
    }
  });

  test('the REST walkthrough through nginx: the replicas see the client\'s address, not the proxy\'s', { timeout: 60_000 }, async (t) => {
    const created = JSON.parse(await replicas[0].cli('client', 'create', '--name', 'pos-backend', '--grant', 'client_credentials', '--scope', 'ponte.admin'));
    const basic = Buffer.from(`${created.client_id}:${created.client_secret}`).toString('base64');
    const email = `walk-${randomBytes(4).toString('hex')}@esempio.it`;
    let account;
    await alternating(t, ['/oauth2/token', '/api/v1/accounts', '/login', '/'], async () => {
      const tokenResponse = await call('POST', '/oauth2/token', {
        headers: { authorization: `Basic ${basic}`, 'content-type': 'application/x-www-form-urlencoded' },
        body: 'grant_type=client_credentials',
      });
      assert.equal(tokenResponse.status, 200, tokenResponse.text);
      const token = tokenResponse.json().access_token;
      const discovery = (await call('GET', '/.well-known/openid-configuration')).json();
      assert.equal(discovery.issuer, proxy.base);
      const { payload } = await jwtVerify(token, createRemoteJWKSet(new URL(discovery.jwks_uri)), {
        issuer: proxy.base, audience: 'ponte-api', typ: 'at+jwt', algorithms: ['ES256'],
      });
      assert.equal(payload.client_id, created.client_id);

      const bearer = { authorization: `Bearer ${token}` };
      // What the client writes into X-Forwarded-For itself lands left of nginx's entry: ignored.
      const made = await call('POST', '/api/v1/accounts', {
        headers: { ...bearer, 'content-type': 'application/json', 'x-forwarded-for': '198.51.100.7' },
        body: JSON.stringify({ name: 'Pizzeria Due Repliche', owner: { email, name: 'Gino Verdi', password: 'una password lunga' } }),
      });
      assert.equal(made.status, 201, made.text);
      account = made.json();
      assert.equal(made.headers.location, `/api/v1/accounts/${account.id}`);
      const fetched = await call('GET', `/api/v1/accounts/${account.id}`, { headers: bearer });
      assert.equal(fetched.json().name, 'Pizzeria Due Repliche');

      // The login form from one replica, posted to the other: its CSRF pair holds on both.
      const loginPage = await call('GET', '/login', { headers: { 'accept-language': 'it' } });
      assert.match(loginPage.text, /Accedi a Ponte/);
      const cookies = (loginPage.headers['set-cookie'] ?? []).map((c) => c.split(';')[0]);
      const signedIn = await call('POST', '/login', {
        headers: { cookie: cookies.join('; '), 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ email, password: 'una password lunga', csrf_token: csrfFrom(loginPage.text) }).toString(),
      });
      assert.equal(signedIn.status, 303, signedIn.text);
      const session = (signedIn.headers['set-cookie'] ?? []).map((c) => c.split(';')[0]).find((c) => c.startsWith('ponte_session='));
      assert.ok(session, 'session cookie set');
      for (let i = 0; i < 2; i += 1) {
        const home = await call('GET', '/', { headers: { cookie: [...cookies, session].join('; ') } });
        assert.equal(home.status, 200);
        assert.match(home.text, /Gino Verdi/);
        assert.match(home.text, /Pizzeria Due Repliche/);
      }
    });
    // Every replica saw nginx (127.0.0.1) as the TCP peer; the address recorded is the client's.
    const audit = await replicas[1].api('GET', `/api/v1/accounts/${account.id}/audit`);
    assert.equal(audit.status, 200, JSON.stringify(audit.body));
    assert.ok(audit.body.entries.length > 0, 'the account creation is audited');
    assert.deepEqual([...new Set(audit.body.entries.map((e) => e.ip))], [CLIENT], JSON.stringify(audit.body.entries));
    const sessions = await replicas[0].api('GET', `/api/v1/accounts/${account.id}/users/${account.owner.id}/sessions`);
    assert.deepEqual(sessions.body.sessions.map((s) => s.ip), [CLIENT]);
  });

  test('nginx drops an idle connection to a replica before the replica does', { timeout: 30_000 }, async () => {
    // Otherwise a request nginx sends on a connection just as the replica closes it gets no
    // answer, and a POST (not retried) comes back 502: what the soak once saw.
    const upstreamBlock = (await readFile(deployConfig, 'utf8')).match(/^\s*upstream ponte \{[^}]*\}/m)?.[0] ?? '';
    const nginxIdle = Number(upstreamBlock.match(/^\s*keepalive_timeout\s+(\d+)s;/m)?.[1]);
    assert.ok(nginxIdle > 0, `deploy/nginx.conf sets keepalive_timeout (in seconds) for its upstream:\n${upstreamBlock}`);
    // How long a replica keeps an idle keep-alive connection: one request, then wait for the close.
    const idle = await new Promise((ok, fail) => {
      const socket = connect(Number(new URL(replicas[0].base).port), '127.0.0.1');
      let answered = null;
      socket.setTimeout(20_000, () => fail(new Error('the replica kept an idle connection for 20 s')));
      socket.on('data', (chunk) => { if (!answered && chunk.includes('\r\n\r\n')) answered = Date.now(); });
      socket.on('end', () => { socket.destroy(); ok(Date.now() - answered); });
      socket.on('error', fail);
      socket.write(`GET /healthz HTTP/1.1\r\nHost: ${new URL(replicas[0].base).host}\r\n\r\n`);
    });
    assert.ok(nginxIdle * 1000 <= idle - 500, `nginx keeps idle upstream connections ${nginxIdle} s, the replica closes them after ${idle} ms`);
  });

  test('a replica killed with SIGKILL between the login page and the form post: the flow completes through the other', { timeout: 60_000 }, async (t) => {
    const user = await replicas[0].newUser('kill');
    const registered = await registerClient(replicas[0], rp);
    const config = await discover(proxy, registered);
    const page = await freshPage();
    const flow = await authorizationRequest(config, rp);
    const mark = (await proxy.log()).length;
    await page.goto(flow.url.href);
    assert.equal(new URL(page.url()).href.split('?')[0], `${proxy.base}/login`);
    await page.waitForSelector('input[name=email]');
    // The replica that served the login page dies; the form it rendered is posted anyway.
    const served = (await proxy.log()).slice(mark).findLast((e) => e.method === 'GET' && e.uri.startsWith('/login'));
    assert.ok(served, 'nginx logged the login page');
    const victim = replicas.findIndex((r) => hostOf(r) === served.replica);
    const survivor = replicas[1 - victim];
    assert.ok(victim >= 0, `the login page came from a replica (${served.replica})`);
    const { signal } = await replicas[victim].kill('SIGKILL');
    assert.equal(signal, 'SIGKILL');
    const killedAt = Date.now();
    // A person takes a moment to type; meanwhile nginx sees its kept-alive connections to
    // the dead replica close. (A POST nginx had already sent on one is not retried: it is
    // not idempotent. See the README, "Replicas".)
    await new Promise((ok) => { setTimeout(ok, 250); });

    await signIn(page, user);
    const callback = await backAtRp(page, rp, flow.state);
    const tokens = await client.authorizationCodeGrant(config, callback, flow.checks);
    const { payload } = await verifyIdToken(config, tokens.id_token);
    assert.equal(payload.iss, proxy.base);
    assert.equal((await client.fetchUserInfo(config, tokens.access_token, payload.sub)).email, user.email);

    const since = (await proxy.log()).filter((e) => e.t >= killedAt - 1);
    const sequence = since.map((e) => `${e.status} ${e.method} ${e.uri.split('?')[0]} via ${e.upstreams.join(', ')} (${e.upstreamStatuses.join(', ')})`);
    t.diagnostic(`after the kill of replica ${victim + 1}: ${sequence.join(' | ')}`);
    assert.deepEqual(since.filter((e) => e.status >= 500), [], `no client saw a 5xx:\n${sequence.join('\n')}`);
    assert.ok(since.every((e) => e.replica === hostOf(survivor)), `every answer came from the survivor:\n${sequence.join('\n')}`);
    // nginx tried the dead replica (connection refused) and retried on the other.
    assert.ok(since.some((e) => e.upstreams.length === 2 && e.upstreams[0] === hostOf(replicas[victim])),
      `a request went to the dead replica first and was retried:\n${sequence.join('\n')}`);
    assert.ok(since.some((e) => e.method === 'POST' && e.uri === '/login'), 'the form post went through the proxy');
  });
});
