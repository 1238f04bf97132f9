// Starts the real `ponte` binary on a free loopback port with a data folder of its own,
// and stops it afterwards. Shared by every end-to-end test.
import { spawn, execFile } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export const ponteBin = process.env.PONTE_BIN
  ?? resolve(process.env.CARGO_TARGET_DIR ?? resolve(import.meta.dirname, '../../target'), 'debug/ponte');

/** Whether `path` is a file this process may run. */
export function executable(path) {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

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

/**
 * Starts `ponte serve` with `extraEnv` on top of a loopback bind, public URL and data
 * folder of its own. `options.port` picks the port (a caller that must name Ponte's URL
 * before it starts, e.g. to register it at an upstream provider); `base` is always the
 * address this process answers on, even when `PONTE_PUBLIC_URL` names another replica.
 */
export async function startPonte(extraEnv = {}, options = {}) {
  const dataDir = await mkdtemp(join(tmpdir(), 'ponte-e2e-'));
  const port = options.port ?? await freePort();
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
    /** The process id (e.g. to read its resident size from /proc). */
    pid: child.pid,
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
     * The REST API with the admin token: `{status, headers, body}` (body parsed when
     * JSON, else text; null when empty).
     */
    async api(method, path, body) {
      const response = await fetch(`${base}${path}`, {
        method,
        headers: {
          authorization: `Bearer ${await ponte.adminToken()}`,
          ...(body === undefined ? {} : { 'content-type': 'application/json' }),
        },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(10_000),
      });
      const text = await response.text();
      let parsed = text || null;
      if (text && /json/.test(response.headers.get('content-type') ?? '')) parsed = JSON.parse(text);
      return { status: response.status, headers: response.headers, body: parsed };
    },
    /**
     * A new account with its owner, who can sign in with the returned email and
     * password. Each call makes a different person (the login rate limit is per email).
     * `overrides` replaces the generated `email`, `name` or `password`.
     */
    async newUser(label = 'user', overrides = {}) {
      const n = ++users;
      const person = {
        email: `${label}-${n}@esempio.it`,
        name: `Utente ${label} ${n}`,
        password: `una password lunga ${n}`,
        ...overrides,
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
    /**
     * The mail written to the embedded outbox (`<data_dir>/outbox/*.eml`), oldest first:
     * `{file, to, subject, body}`.
     */
    async outbox() {
      const dir = join(dataDir, 'outbox');
      let names;
      try {
        names = (await readdir(dir)).filter((n) => n.endsWith('.eml')).sort();
      } catch (error) {
        if (error.code === 'ENOENT') return [];
        throw error;
      }
      return Promise.all(names.map(async (name) => {
        const text = await readFile(join(dir, name), 'utf8');
        const split = text.indexOf('\r\n\r\n');
        const head = split === -1 ? text : text.slice(0, split);
        const header = (key) => head.match(new RegExp(`^${key}: (.*)$`, 'mi'))?.[1]?.trim();
        return { file: name, to: header('To'), subject: header('Subject'), body: split === -1 ? '' : quotedPrintable(text.slice(split + 4)) };
      }));
    },
    /** The outbox once it holds at least `count` messages (the worker writes them shortly after the request). */
    async waitForOutbox(count, timeoutMs = 10000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const mail = await ponte.outbox();
        if (mail.length >= count) return mail;
        if (Date.now() > deadline) throw new Error(`the outbox has ${mail.length} of ${count} messages`);
        await new Promise((ok) => setTimeout(ok, 50));
      }
    },
    /** Sends `signal` (e.g. SIGKILL, to play a crash) and waits for the exit; `stop()` still cleans up. */
    async kill(signal) {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
    stop,
  };
  return ponte;
}

/** Decodes quoted-printable text (the mail parts' transfer encoding) as UTF-8. */
export function quotedPrintable(text) {
  const joined = text.replace(/=\r?\n/g, '');
  const bytes = [];
  for (let i = 0; i < joined.length; i++) {
    const hex = joined.slice(i + 1, i + 3);
    if (joined[i] === '=' && /^[0-9A-F]{2}$/.test(hex)) {
      bytes.push(parseInt(hex, 16));
      i += 2;
    } else {
      bytes.push(...Buffer.from(joined[i], 'utf8'));
    }
  }
  return Buffer.from(bytes).toString('utf8');
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
