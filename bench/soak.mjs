// Soak of the production shape (issue 11, item 8; not part of the test run: `node
// bench/soak.mjs`, see bench/README.md): two `ponte serve` behind nginx (deploy/nginx.conf,
// as tests/e2e/replicas.test.mjs runs it) on one PostgreSQL and one Redis, under mixed
// load for SOAK_SECS, with one Redis restart and one PostgreSQL restart in the middle.
//
// Load (open loop, each kind at its own rate, from loopback addresses of its own so the
// per-address limits see many clients through the proxy): client_credentials tokens,
// introspection, SSO hops (/oauth2/authorize with a live session, then the code redeemed),
// REST reads, REST writes (companies, and accounts with an owner password), password
// sign-ins through the login form.
//
// It fails (exit 1) on: a 5xx other than 503, a 503 or a network error outside the
// outages, a row acknowledged (201) but missing, a row present for a refused write. It
// prints each replica's resident size over time (reported, not judged).
import { execFile, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { chmod, chown, mkdtemp, rm } from 'node:fs/promises';
import { Agent, request } from 'node:http';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
const e2e = resolve(import.meta.dirname, '../tests/e2e');
const target = process.env.CARGO_TARGET_DIR ?? resolve(import.meta.dirname, '../target');
if (!process.env.PONTE_BIN) {
  const release = resolve(target, 'release/ponte');
  process.env.PONTE_BIN = existsSync(release) ? release : resolve(target, 'debug/ponte');
}
const { startPonte, freePort, csrfFrom } = await import(`${e2e}/ponte.mjs`);
const { startProxy } = await import(`${e2e}/proxy.mjs`);
const { partitaIva, companyJson } = await import(`${e2e}/pos.mjs`);

const num = (name, fallback) => (process.env[name] === undefined ? fallback : Number(process.env[name]));
const SECS = num('SOAK_SECS', 600);
const REDIS_AT = num('SOAK_REDIS_RESTART_AT', Math.round(SECS * 0.4));
const POSTGRES_AT = num('SOAK_POSTGRES_RESTART_AT', Math.round(SECS * 0.6));
const WARMUP = num('SOAK_WARMUP_SECS', Math.min(60, Math.round(SECS / 5)));
const GRACE = num('SOAK_OUTAGE_GRACE_SECS', 5);
/** How long each server stays stopped in its restart (0: a plain restart). */
const DOWN = num('SOAK_DOWN_SECS', 0);
const SAMPLE = num('SOAK_RSS_EVERY_SECS', 5);
const SCALE = num('SOAK_SCALE', 1);
const POSTGRES = process.env.SOAK_POSTGRES ?? 'own';
const SHARED_DATABASE = process.env.PONTE_TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const USERS = num('SOAK_USERS', 100);
const SESSIONS = num('SOAK_SESSIONS', 10);
/** Requests (or flows) per second of each kind, times SOAK_SCALE. */
const RATES = {
  token: 20, introspect: 20, sso: 5, read: 20, write: 5, account: 0.2, login: 1,
};
for (const kind of Object.keys(RATES)) RATES[kind] = num(`SOAK_RATE_${kind.toUpperCase()}`, RATES[kind] * SCALE);

const say = (line) => console.log(`soak: ${line}`);
const sleep = (ms) => new Promise((ok) => { setTimeout(ok, ms); });
/** Seconds since the load started (since the script started, before that). */
let epoch = Date.now();
const at = (t = Date.now()) => ((t - epoch) / 1000).toFixed(1);

// --- HTTP through the proxy, from a loopback address of the caller's choosing -----------

const agents = new Map();
function agentFor(address) {
  if (!agents.has(address)) agents.set(address, new Agent({ keepAlive: true, maxSockets: 16, localAddress: address }));
  return agents.get(address);
}

/** Every HTTP exchange: `{kind, t0, t1, status}` (status 0: no answer, `error` says why). */
const results = [];
let base;

function call(kind, from, method, path, { headers = {}, body } = {}) {
  const t0 = Date.now();
  return new Promise((ok) => {
    const req = request(`${base}${path}`, { method, headers, agent: agentFor(from), timeout: 15_000 }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        results.push({ kind, t0, t1: Date.now(), status: res.statusCode });
        ok({ status: res.statusCode, headers: res.headers, text });
      });
      res.on('error', (error) => {
        results.push({ kind, t0, t1: Date.now(), status: 0, error: error.message });
        ok({ status: 0, headers: {}, text: '', error });
      });
    });
    req.on('timeout', () => req.destroy(new Error('timed out after 15 s')));
    req.on('error', (error) => {
      results.push({ kind, t0, t1: Date.now(), status: 0, error: error.message });
      ok({ status: 0, headers: {}, text: '', error });
    });
    req.end(body);
  });
}

const form = (fields) => new URLSearchParams(fields).toString();
const basic = (id, secret) => `Basic ${Buffer.from(`${id}:${secret}`).toString('base64')}`;
const json = (r) => { try { return JSON.parse(r.text); } catch { return null; } };
const cookiesOf = (r) => (r.headers['set-cookie'] ?? []).map((c) => c.split(';')[0]);

// --- the soak's own Redis and (by default) PostgreSQL ----------------------------------

/** A process started in the background, with its stderr kept. */
function daemon(command, args, options = {}) {
  const child = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'], ...options });
  let stderr = '';
  child.stderr.on('data', (c) => { stderr += c; });
  const exited = new Promise((ok) => child.once('exit', (code, signal) => ok({ code, signal })));
  return { child, exited, stderr: () => stderr };
}

async function until(what, attempt, ms = 30_000) {
  const deadline = Date.now() + ms;
  while (!(await attempt().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await sleep(50);
  }
}

/**
 * Redis of the soak's own on a free port, with an append-only file, so a restart is a
 * restart and not a flush (sessions survive it, as with a production Redis that persists).
 */
async function startRedis() {
  const dir = await mkdtemp(join(tmpdir(), 'ponte-soak-redis-'));
  const port = await freePort();
  const args = ['--bind', '127.0.0.1', '--port', String(port), '--save', '', '--appendonly', 'yes',
    '--appendfsync', 'everysec', '--dir', dir, '--logfile', ''];
  let proc;
  const ping = async () => (await run('redis-cli', ['-p', String(port), 'ping'], { timeout: 2_000 })).stdout.trim() === 'PONG';
  const up = async () => {
    proc = daemon('redis-server', args);
    await until('redis answers', ping);
  };
  await up();
  return {
    url: `redis://127.0.0.1:${port}/`,
    /** SHUTDOWN (the AOF is flushed), SOAK_DOWN_SECS, the same server again; returns when it answers. */
    async restart() {
      await run('redis-cli', ['-p', String(port), 'shutdown'], { timeout: 10_000 }).catch(() => {});
      await proc.exited;
      await sleep(DOWN * 1000);
      await up();
    },
    async stop() {
      if (proc.child.exitCode === null) proc.child.kill('SIGTERM');
      await proc.exited;
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** The newest PostgreSQL server binaries Debian installed. */
function postgresBin() {
  const root = '/usr/lib/postgresql';
  const versions = readdirSync(root).filter((v) => /^\d+$/.test(v)).sort((a, b) => Number(b) - Number(a));
  if (!versions.length) throw new Error(`no PostgreSQL under ${root}`);
  return join(root, versions[0], 'bin');
}

/**
 * PostgreSQL for the soak. `own` (the default): a cluster of its own (initdb in a temp
 * folder, trust on loopback, a free port), so restarting it disturbs no one else on the
 * machine. `shared`: a database on PONTE_TEST_DATABASE_URL's server, restarted with
 * pg_ctlcluster (every other user of that server sees the outage too).
 */
async function startPostgres() {
  if (POSTGRES === 'shared') {
    const name = `ponte_soak_${randomBytes(4).toString('hex')}`;
    await run('psql', [SHARED_DATABASE, '-v', 'ON_ERROR_STOP=1', '-qc', `CREATE DATABASE ${name}`]);
    const url = new URL(SHARED_DATABASE);
    url.pathname = `/${name}`;
    const version = readdirSync('/etc/postgresql')[0];
    return {
      url: url.href,
      async restart() {
        const ctl = (action) => run('pg_ctlcluster', ['--skip-systemctl-redirect', version, 'main', action], { timeout: 60_000 });
        if (!DOWN) return ctl('restart');
        await ctl('stop');
        await sleep(DOWN * 1000);
        return ctl('start');
      },
      stop: () => run('psql', [SHARED_DATABASE, '-qc', `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`]).catch(() => {}),
    };
  }
  if (POSTGRES !== 'own') throw new Error(`SOAK_POSTGRES=${POSTGRES}: own or shared`);
  const bin = postgresBin();
  const dir = await mkdtemp(join(tmpdir(), 'ponte-soak-pg-'));
  const data = join(dir, 'data');
  const port = await freePort();
  // initdb refuses root: as root, the cluster belongs to the postgres user.
  const asRoot = process.getuid?.() === 0;
  if (asRoot) {
    const { stdout } = await run('id', ['-u', 'postgres']);
    const { stdout: gid } = await run('id', ['-g', 'postgres']);
    await chown(dir, Number(stdout), Number(gid));
    await chmod(dir, 0o700);
  }
  const pg = (tool, args, timeout = 60_000) => (asRoot
    ? run('runuser', ['-u', 'postgres', '--', join(bin, tool), ...args], { timeout })
    : run(join(bin, tool), args, { timeout }));
  await pg('initdb', ['-D', data, '-A', 'trust', '-U', 'postgres', '--no-sync', '-E', 'UTF8']);
  const options = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c max_connections=100 -c fsync=on`;
  await pg('pg_ctl', ['-D', data, '-o', options, '-l', join(dir, 'log'), '-w', 'start']);
  const url = `postgres://postgres@127.0.0.1:${port}/postgres`;
  return {
    url,
    log: () => { try { return readFileSync(join(dir, 'log'), 'utf8'); } catch { return ''; } },
    /** A fast restart (active connections are ended), as `pg_ctlcluster … restart` does; stopped SOAK_DOWN_SECS between. */
    async restart() {
      if (!DOWN) return pg('pg_ctl', ['-D', data, '-o', options, '-l', join(dir, 'log'), '-m', 'fast', '-w', 'restart']);
      await pg('pg_ctl', ['-D', data, '-m', 'fast', '-w', 'stop']);
      await sleep(DOWN * 1000);
      return pg('pg_ctl', ['-D', data, '-o', options, '-l', join(dir, 'log'), '-w', 'start']);
    },
    async stop() {
      await pg('pg_ctl', ['-D', data, '-m', 'fast', '-w', 'stop']).catch(() => {});
      await rm(dir, { recursive: true, force: true });
    },
  };
}

// --- resident size --------------------------------------------------------------------

function rssMiB(pid) {
  try {
    const kb = Number(readFileSync(`/proc/${pid}/status`, 'utf8').match(/^VmRSS:\s+(\d+) kB/m)[1]);
    return kb / 1024;
  } catch {
    return null;
  }
}

// --- main -----------------------------------------------------------------------------

async function main() {
  const cleanups = [];
  const cleanup = async () => {
    for (const c of cleanups.reverse()) await c().catch((e) => console.error(`soak: cleanup: ${e.message}`));
    cleanups.length = 0;
    for (const agent of agents.values()) agent.destroy();
  };
  process.once('SIGINT', () => { cleanup().finally(() => process.exit(130)); });
  try {
    say(`${SECS} s of load, Redis restart at ${REDIS_AT} s, PostgreSQL (${POSTGRES}) restart at ${POSTGRES_AT} s`
      + `${DOWN ? ` (each down ${DOWN} s)` : ''}, `
      + `warm-up ${WARMUP} s, binary ${process.env.PONTE_BIN}`);
    say(`rates per second: ${Object.entries(RATES).map(([k, v]) => `${k} ${v}`).join(', ')}`);
    const redis = await startRedis();
    cleanups.push(() => redis.stop());
    const postgres = await startPostgres();
    cleanups.push(() => postgres.stop());

    const port = await freePort();
    base = `http://127.0.0.1:${port}`;
    const shared = {
      PONTE_PUBLIC_URL: base,
      PONTE_DATABASE_URL: postgres.url,
      PONTE_REDIS_URL: redis.url,
      PONTE_REDIS_KEY_PREFIX: 'ponte-soak:',
      PONTE_MASTER_KEY: randomBytes(32).toString('base64'),
      PONTE_TRUSTED_PROXIES: '127.0.0.1',
      PONTE_LOG_LEVEL: 'warn',
    };
    const replicas = [];
    for (let i = 0; i < 2; i += 1) {
      const replica = await startPonte(shared);
      replicas.push(replica);
      cleanups.push(() => replica.stop());
    }
    const proxy = await startProxy(replicas.map((r) => r.base), { port });
    cleanups.push(() => proxy.stop());
    say(`nginx at ${base} in front of ${replicas.map((r) => `${r.base} (pid ${r.pid})`).join(' and ')}`);

    // Clients: the POS backend (client_credentials, ponte.admin) and a first-party web app.
    const pos = JSON.parse(await replicas[0].cli('client', 'create', '--name', 'soak-pos', '--grant', 'client_credentials', '--scope', 'ponte.admin'));
    const redirectUri = 'http://127.0.0.1:9/callback'; // never followed: the code is read from Location
    const app = JSON.parse(await replicas[0].cli('client', 'create', '--name', 'soak-app', '--grant', 'authorization_code',
      '--redirect-uri', redirectUri, '--first-party'));
    let adminToken = null;
    async function refreshAdmin() {
      const r = await call('setup', '127.0.0.1', 'POST', '/oauth2/token', {
        headers: { authorization: basic(pos.client_id, pos.client_secret), 'content-type': 'application/x-www-form-urlencoded' },
        body: form({ grant_type: 'client_credentials' }),
      });
      if (r.status === 200) adminToken = json(r).access_token;
      return r.status;
    }
    if (await refreshAdmin() !== 200) throw new Error('no admin token');
    const bearer = () => ({ authorization: `Bearer ${adminToken}` });

    // People: USERS account owners (who sign in), each with a password.
    say(`creating ${USERS} accounts with their owners`);
    const people = [];
    for (let i = 0; i < USERS; i += 1) {
      const person = { email: `soak-${i}@esempio.it`, name: `Soak Owner ${i}`, password: `una password lunga ${i}` };
      const r = await call('setup', '127.0.0.1', 'POST', '/api/v1/accounts', {
        headers: { ...bearer(), 'content-type': 'application/json' },
        body: JSON.stringify({ name: `Soak Setup ${i}`, owner: person }),
      });
      if (r.status !== 201) throw new Error(`setup account ${i}: ${r.status} ${r.text}`);
      const made = json(r);
      people.push({ ...person, accountId: made.id, userId: made.owner.id });
    }

    // Addresses: each kind of load comes from 20 of its own (the limits are per address).
    const kinds = Object.keys(RATES);
    const from = (kind, n) => `127.0.${10 + kinds.indexOf(kind)}.${1 + (n % 20)}`;

    /** The login form, then the post; returns the Cookie header of the new session or null. */
    async function signIn(person, address) {
      const page = await call('login', address, 'GET', '/login');
      if (page.status !== 200) return null;
      const cookies = cookiesOf(page);
      const posted = await call('login', address, 'POST', '/login', {
        headers: { cookie: cookies.join('; '), 'content-type': 'application/x-www-form-urlencoded' },
        body: form({ email: person.email, password: person.password, csrf_token: csrfFrom(page.text) }),
      });
      if (posted.status !== 303) return null;
      const session = cookiesOf(posted).find((c) => c.startsWith('ponte_session='));
      return session ? [...cookies, session].join('; ') : null;
    }

    const sessions = [];
    for (let i = 0; i < SESSIONS; i += 1) {
      const cookie = await signIn(people[i], from('sso', i));
      if (!cookie) throw new Error(`setup session ${i}: sign-in failed`);
      sessions.push({ person: people[i], cookie, address: from('sso', i) });
    }

    // What the writes did, for the count at the end.
    const companies = { acknowledged: new Map(), refused: new Map(), unknown: new Map() };
    const accounts = { acknowledged: new Map(), refused: new Map(), unknown: new Map() };
    const note = (book, key, r, id) => {
      if (r.status === 201) book.acknowledged.set(key, id);
      else if (r.status === 0 || r.status === 502 || r.status === 504) book.unknown.set(key, r.status);
      else book.refused.set(key, r.status);
    };
    let latestToken = null;
    let serial = Number.parseInt(randomBytes(2).toString('hex'), 16) * 100;
    const counters = { ssoRelogins: 0, inactive: 0, backlog: 0 };

    const flows = {
      async token(n) {
        const r = await call('token', from('token', n), 'POST', '/oauth2/token', {
          headers: { authorization: basic(pos.client_id, pos.client_secret), 'content-type': 'application/x-www-form-urlencoded' },
          body: form({ grant_type: 'client_credentials' }),
        });
        if (r.status === 200) latestToken = json(r).access_token;
      },
      async introspect(n) {
        if (!latestToken) return;
        const r = await call('introspect', from('introspect', n), 'POST', '/oauth2/introspect', {
          headers: { authorization: basic(pos.client_id, pos.client_secret), 'content-type': 'application/x-www-form-urlencoded' },
          body: form({ token: latestToken }),
        });
        if (r.status === 200 && json(r)?.active !== true) counters.inactive += 1;
      },
      async sso(n) {
        const s = sessions[n % sessions.length];
        const verifier = randomBytes(32).toString('base64url');
        const query = new URLSearchParams({
          response_type: 'code', client_id: app.client_id, redirect_uri: redirectUri, scope: 'openid email',
          state: randomBytes(8).toString('hex'), nonce: randomBytes(8).toString('hex'),
          code_challenge: createHash('sha256').update(verifier).digest('base64url'), code_challenge_method: 'S256',
        });
        const r = await call('sso.authorize', s.address, 'GET', `/oauth2/authorize?${query}`, { headers: { cookie: s.cookie } });
        const location = r.headers.location ?? '';
        const error = location.startsWith(redirectUri) ? new URL(location).searchParams.get('error') : null;
        if (error) {
          // An error sent back to the app (e.g. temporarily_unavailable): a failure like a 503.
          results.push({ kind: 'sso.authorize', t0: Date.now(), t1: Date.now(), status: -2, error });
        } else if (r.status === 303 && location.startsWith(redirectUri)) {
          const code = new URL(location).searchParams.get('code');
          await call('sso.code', s.address, 'POST', '/oauth2/token', {
            headers: { authorization: basic(app.client_id, app.client_secret), 'content-type': 'application/x-www-form-urlencoded' },
            body: form({ grant_type: 'authorization_code', code, redirect_uri: redirectUri, code_verifier: verifier }),
          });
        } else if (r.status === 303 && !s.busy) {
          // The session is gone (sent to the login page): sign in again.
          counters.ssoRelogins += 1;
          s.busy = true;
          s.cookie = (await signIn(s.person, s.address)) ?? s.cookie;
          s.busy = false;
        }
      },
      async read(n) {
        const person = people[n % people.length];
        const path = n % 2 ? `/api/v1/accounts/${person.accountId}` : `/api/v1/accounts/${person.accountId}/companies`;
        await call('read', from('read', n), 'GET', path, { headers: bearer() });
      },
      async write(n) {
        const person = people[n % people.length];
        serial += 1;
        const vat = partitaIva(serial % 10_000_000);
        const r = await call('write', from('write', n), 'POST', `/api/v1/accounts/${person.accountId}/companies`, {
          headers: { ...bearer(), 'content-type': 'application/json' },
          body: JSON.stringify(companyJson(vat)),
        });
        note(companies, vat, r, r.status === 201 ? json(r)?.id : null);
      },
      async account(n) {
        const name = `Soak Account ${randomBytes(6).toString('hex')}`;
        const r = await call('account', from('account', n), 'POST', '/api/v1/accounts', {
          headers: { ...bearer(), 'content-type': 'application/json' },
          body: JSON.stringify({ name, owner: { email: `${name.split(' ')[2]}@esempio.it`, name: 'Nuovo Titolare', password: 'una password lunga' } }),
        });
        note(accounts, name, r, r.status === 201 ? json(r)?.id : null);
      },
      async login(n) {
        // Owners beyond the SSO sessions, in turn: at most ~10 sign-ins per email per 15 minutes.
        const person = people[SESSIONS + (n % (people.length - SESSIONS))];
        await signIn(person, from('login', n));
      },
    };

    // Outages, known exactly: [start, end] of each restart, end = the server answers again.
    const outages = [];
    const restarts = [
      { name: 'redis', at: REDIS_AT, run: () => redis.restart() },
      { name: 'postgres', at: POSTGRES_AT, run: () => postgres.restart() },
    ].filter((r) => r.at >= 0 && r.at < SECS);

    // RSS of each replica every SAMPLE seconds.
    const rss = [];
    const loadStart = Date.now();
    epoch = loadStart;
    const stopAt = loadStart + SECS * 1000;
    const sampler = (async () => {
      while (Date.now() < stopAt) {
        rss.push({ t: (Date.now() - loadStart) / 1000, mib: replicas.map((r) => rssMiB(r.pid)) });
        await sleep(Math.min(SAMPLE * 1000, Math.max(0, stopAt - Date.now())));
      }
      rss.push({ t: (Date.now() - loadStart) / 1000, mib: replicas.map((r) => rssMiB(r.pid)) });
    })();
    const admin = (async () => {
      while (Date.now() < stopAt) {
        await sleep(Math.min(60_000, Math.max(0, stopAt - Date.now())));
        if (Date.now() < stopAt) await refreshAdmin();
      }
    })();
    const chaos = (async () => {
      for (const restart of restarts) {
        const wait = loadStart + restart.at * 1000 - Date.now();
        if (wait > 0) await sleep(wait);
        const start = Date.now();
        say(`${at()} s: restarting ${restart.name}`);
        await restart.run();
        const end = Date.now();
        outages.push({ name: restart.name, start, end });
        say(`${at()} s: ${restart.name} answers again after ${((end - start) / 1000).toFixed(2)} s`);
      }
    })();
    const progress = (async () => {
      let last = 0;
      while (Date.now() < stopAt) {
        await sleep(Math.min(30_000, Math.max(5_000, SECS * 100), Math.max(0, stopAt - Date.now())));
        const slice = results.slice(last);
        last = results.length;
        const statuses = tally(slice.map((r) => r.status));
        const mem = rss.at(-1)?.mib.map((m) => `${m?.toFixed(1)} MiB`).join(' / ');
        say(`${at()} s: ${slice.length} requests (${statuses}), RSS ${mem}`);
      }
    })();

    // Open loop: each kind starts its flows on a fixed schedule, up to 64 in flight each.
    const inflight = Object.fromEntries(kinds.map((k) => [k, 0]));
    const pending = new Set();
    await Promise.all(kinds.filter((k) => RATES[k] > 0).map(async (kind) => {
      const every = 1000 / RATES[kind];
      for (let n = 0; ; n += 1) {
        const due = loadStart + n * every;
        if (due >= stopAt) break;
        if (due > Date.now()) await sleep(due - Date.now());
        if (inflight[kind] >= 64) {
          counters.backlog += 1;
          continue;
        }
        inflight[kind] += 1;
        const p = flows[kind](n).catch((error) => {
          results.push({ kind, t0: Date.now(), t1: Date.now(), status: -1, error: error.message });
        }).finally(() => { inflight[kind] -= 1; pending.delete(p); });
        pending.add(p);
      }
    }));
    await Promise.all([...pending]);
    await Promise.all([sampler, admin, chaos, progress]);
    const loadSecs = (Date.now() - loadStart) / 1000;

    // --- the count ---------------------------------------------------------------------
    const psql = async (sql) => (await run('psql', [postgres.url, '-At', '-v', 'ON_ERROR_STOP=1', '-c', sql], { timeout: 30_000 })).stdout;
    const dbVats = new Set((await psql('SELECT vat_number FROM companies')).split('\n').filter(Boolean));
    const dbNames = new Set((await psql("SELECT name FROM accounts WHERE name LIKE 'Soak Account %'")).split('\n').filter(Boolean));
    const audit = (book, inDb) => ({
      acknowledged: book.acknowledged.size,
      lost: [...book.acknowledged.keys()].filter((k) => !inDb.has(k)),
      refused: book.refused.size,
      refusedButWritten: [...book.refused.keys()].filter((k) => inDb.has(k)),
      unknown: book.unknown.size,
      unknownWritten: [...book.unknown.keys()].filter((k) => inDb.has(k)).length,
      inDb: inDb.size,
    });
    const companyCount = audit(companies, dbVats);
    const accountCount = audit(accounts, dbNames);

    // --- the verdict -------------------------------------------------------------------
    const during = (r) => outages.some((o) => r.t1 >= o.start && r.t0 <= o.end + GRACE * 1000);
    const load = results.filter((r) => r.kind !== 'setup');
    const serverErrors = load.filter((r) => r.status >= 500 && r.status !== 503);
    const strayUnavailable = load.filter((r) => r.status === 503 && !during(r));
    const strayFailures = load.filter((r) => r.status <= 0 && !during(r));
    const unavailable = load.filter((r) => r.status === 503);

    console.log('');
    say(`load ran ${loadSecs.toFixed(0)} s: ${load.length} requests, ${(load.length / loadSecs).toFixed(1)}/s through nginx`);
    console.log(`\n${'kind'.padEnd(15)}${'requests'.padStart(9)}  statuses`);
    for (const kind of [...new Set(load.map((r) => r.kind))].sort()) {
      const of = load.filter((r) => r.kind === kind);
      console.log(`${kind.padEnd(15)}${String(of.length).padStart(9)}  ${tally(of.map((r) => r.status))}`);
    }
    console.log('');
    for (const o of outages) {
      const in503 = unavailable.filter((r) => r.t1 >= o.start && r.t0 <= o.end + GRACE * 1000);
      const failed = load.filter((r) => r.status <= 0 && r.t1 >= o.start && r.t0 <= o.end + GRACE * 1000);
      const span = in503.length ? `, answered between ${at(Math.min(...in503.map((r) => r.t1)))} and ${at(Math.max(...in503.map((r) => r.t1)))} s` : '';
      say(`${o.name} restart from ${at(o.start)} to ${at(o.end)} s (${((o.end - o.start) / 1000).toFixed(2)} s): ${in503.length} × 503${span}`
        + `${failed.length ? `, ${failed.length} failed otherwise` : ''}`);
    }
    say(`503 outside the outages (+${GRACE} s): ${strayUnavailable.length}; other 5xx: ${serverErrors.length}; `
      + `no answer outside the outages: ${strayFailures.length}`);
    for (const r of [...serverErrors, ...strayUnavailable, ...strayFailures].slice(0, 10)) {
      say(`  ${r.kind} ${r.status} at ${at(r.t0)}–${at(r.t1)} s ${r.error ?? ''}`);
    }
    for (const [what, c] of [['companies', companyCount], ['accounts', accountCount]]) {
      say(`${what}: ${c.acknowledged} acknowledged (201), ${c.inDb} in the database, lost ${c.lost.length}; `
        + `${c.refused} refused, of which written ${c.refusedButWritten.length}; ${c.unknown} without an answer, of which written ${c.unknownWritten}`);
    }
    const routed = tally((await proxy.log()).map((e) => replicas.findIndex((r) => new URL(r.base).host === e.replica) + 1));
    say(`requests per replica (nginx's log; 0: none answered): ${routed}`);
    // What nginx says went wrong with the replicas (connect() refused, a connection reset…).
    const proxyErrors = (await proxy.stderr()).split('\n').filter((l) => /\[(error|crit|alert|emerg)\]/.test(l));
    say(`nginx error log: ${proxyErrors.length} lines at [error] or worse`);
    for (const line of proxyErrors.slice(0, 10)) say(`  ${line.replace(/^\S+ \S+ /, '').replace(/, client: .*?(, request:)/, '$1')}`);
    say(`SSO sessions signed in again: ${counters.ssoRelogins}; introspection saying inactive for a fresh token: ${counters.inactive}; `
      + `flows skipped (64 in flight): ${counters.backlog}`);

    console.log(`\nRSS (MiB)   ${replicas.map((_, i) => `replica ${i + 1}`.padStart(10)).join('')}`);
    const step = Math.max(1, Math.round(rss.length / 20));
    for (const [i, s] of rss.entries()) {
      if (i % step === 0 || i === rss.length - 1) {
        console.log(`${`${s.t.toFixed(0)} s`.padEnd(12)}${s.mib.map((m) => (m === null ? '-' : m.toFixed(1)).padStart(10)).join('')}`);
      }
    }
    const warm = rss.filter((s) => s.t >= WARMUP);
    for (const [i] of replicas.entries()) {
      const values = warm.map((s) => s.mib[i]).filter((m) => m !== null);
      if (!values.length) continue;
      const [first, last] = [values[0], values.at(-1)];
      say(`replica ${i + 1} after the ${WARMUP} s warm-up: ${first.toFixed(1)} → ${last.toFixed(1)} MiB `
        + `(min ${Math.min(...values).toFixed(1)}, max ${Math.max(...values).toFixed(1)}, ${(((last - first) / first) * 100).toFixed(1)}%)`);
    }
    const panicked = replicas.filter((r) => /panicked/.test(r.stderr()));

    const failures = [];
    if (serverErrors.length) failures.push(`${serverErrors.length} server errors other than 503`);
    if (strayUnavailable.length) failures.push(`${strayUnavailable.length} × 503 outside the outages`);
    if (strayFailures.length) failures.push(`${strayFailures.length} requests without an answer outside the outages`);
    for (const [what, c] of [['companies', companyCount], ['accounts', accountCount]]) {
      if (c.lost.length) failures.push(`${c.lost.length} acknowledged ${what} missing`);
      if (c.refusedButWritten.length) failures.push(`${c.refusedButWritten.length} refused ${what} written anyway`);
    }
    if (panicked.length) failures.push('a replica panicked');
    if (outages.length !== restarts.length) failures.push('a restart did not happen');
    console.log('');
    if (failures.length) {
      say(`FAILED: ${failures.join('; ')}`);
      process.exitCode = 1;
    } else {
      say('passed: no 500, no lost row, 503s only during the outages');
    }
  } finally {
    await cleanup();
  }
}

/** `200 × 12, 503 × 3` from a list of statuses. */
function tally(statuses) {
  const counts = new Map();
  for (const s of statuses) counts.set(s, (counts.get(s) ?? 0) + 1);
  const label = (s) => ({ 0: 'no answer', '-1': 'script error', '-2': 'error to the app' }[s] ?? s);
  return [...counts].sort((a, b) => a[0] - b[0]).map(([s, n]) => `${label(s)} × ${n}`).join(', ') || 'none';
}

main().catch((error) => {
  console.error(`soak: FAILED: ${error.stack ?? error.message}`);
  process.exit(1);
});
