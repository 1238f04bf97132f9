// Starts the real `ponte` binary on a free loopback port with a data folder of its own,
// and stops it afterwards. Shared by every end-to-end test.
import { spawn, execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export const ponteBin = process.env.PONTE_BIN
  ?? resolve(process.env.CARGO_TARGET_DIR ?? resolve(import.meta.dirname, '../../target'), 'debug/ponte');

export async function freePort() {
  return new Promise((ok, fail) => {
    const server = createServer();
    server.once('error', fail);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => ok(port));
    });
  });
}

// Only PONTE_* variables we set: a developer's own PONTE_* settings must not leak in.
function cleanEnv(extra) {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('PONTE_')));
  return { ...env, RUST_LOG: 'warn', ...extra };
}

export async function startPonte(extraEnv = {}) {
  const dataDir = await mkdtemp(join(tmpdir(), 'ponte-e2e-'));
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const env = cleanEnv({ PONTE_BIND: `127.0.0.1:${port}`, PONTE_PUBLIC_URL: base, PONTE_DATA_DIR: dataDir, ...extraEnv });
  const child = spawn(ponteBin, ['serve'], { env, stdio: ['ignore', 'inherit', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (chunk) => { stderr += chunk; });
  const exited = new Promise((ok) => child.once('exit', (code, signal) => ok({ code, signal })));
  const spawned = new Promise((ok) => { child.once('spawn', () => ok(null)); child.once('error', ok); });

  async function stop() {
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
      child.kill('SIGTERM');
      const killer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(killer);
    }
    await rm(dataDir, { recursive: true, force: true });
    return child.pid === undefined ? { code: null, signal: null } : exited;
  }

  const spawnError = await spawned;
  if (spawnError) {
    await rm(dataDir, { recursive: true, force: true });
    throw new Error(`cannot start ${ponteBin}: ${spawnError.message}`);
  }
  const deadline = Date.now() + 20_000;
  for (;;) {
    try {
      const r = await fetch(`${base}/healthz`, { signal: AbortSignal.timeout(2_000) });
      if (r.ok) break;
    } catch { /* not listening yet */ }
    if (child.exitCode !== null) {
      await stop();
      throw new Error(`ponte exited early (code ${child.exitCode}):\n${stderr}`);
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`ponte did not become healthy within 20 s:\n${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }

  let admin;
  let users = 0;
  const ponte = {
    base,
    dataDir,
    env,
    /** Runs `ponte <args>` against the same configuration and returns stdout. */
    async cli(...args) {
      try {
        const { stdout } = await run(ponteBin, args, { env, timeout: 30_000 });
        return stdout;
      } catch (error) {
        throw new Error(`\`ponte ${args.join(' ')}\` failed (code ${error.code}, signal ${error.signal}):\n${error.stderr ?? error.message}`);
      }
    },
    stderr: () => stderr,
    /** A bearer token with scope ponte.admin, from a client_credentials client made once. */
    async adminToken() {
      if (!admin) {
        const created = JSON.parse(await ponte.cli('client', 'create', '--name', 'pos-backend', '--grant', 'client_credentials', '--scope', 'ponte.admin'));
        const response = await fetch(`${base}/oauth2/token`, {
          method: 'POST',
          headers: { 'content-type': 'application/x-www-form-urlencoded' },
          body: new URLSearchParams({ grant_type: 'client_credentials', client_id: created.client_id, client_secret: created.client_secret }),
          signal: AbortSignal.timeout(10_000),
        });
        if (response.status !== 200) throw new Error(`admin token: ${response.status} ${await response.text()}`);
        admin = { ...created, ...(await response.json()) };
      }
      return admin.access_token;
    },
    /**
     * A new account with its owner, who can sign in with the returned email and
     * password. Each call makes a different person (the login rate limit is per email).
     */
    async newUser(label = 'user') {
      const n = ++users;
      const person = {
        email: `${label}-${n}@esempio.it`,
        name: `Utente ${label} ${n}`,
        password: `una password lunga ${n}`,
      };
      const response = await fetch(`${base}/api/v1/accounts`, {
        method: 'POST',
        headers: { authorization: `Bearer ${await ponte.adminToken()}`, 'content-type': 'application/json' },
        body: JSON.stringify({ name: `Negozio ${label} ${n}`, owner: person }),
        signal: AbortSignal.timeout(10_000),
      });
      if (response.status !== 201) throw new Error(`create account: ${response.status} ${await response.text()}`);
      const created = await response.json();
      return { ...person, accountId: created.id, userId: created.owner.id, role: created.owner.role };
    },
    stop,
  };
  return ponte;
}

/** The value of a form's hidden csrf_token field. */
export function csrfFrom(html) {
  const match = html.match(/name="csrf_token" value="([^"]+)"/);
  if (!match) throw new Error(`no csrf_token in page:\n${html}`);
  return match[1];
}

/** `name=value` pairs from a response's Set-Cookie headers, for a Cookie header. */
export function cookiesFrom(response) {
  return response.headers.getSetCookie().map((c) => c.split(';')[0]);
}
