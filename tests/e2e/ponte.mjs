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

  const deadline = Date.now() + 20_000;
  for (;;) {
    try {
      const r = await fetch(`${base}/healthz`);
      if (r.ok) break;
    } catch { /* not listening yet */ }
    if (child.exitCode !== null) throw new Error(`ponte exited early:\n${stderr}`);
    if (Date.now() > deadline) throw new Error(`ponte did not become healthy:\n${stderr}`);
    await new Promise((r) => setTimeout(r, 50));
  }

  return {
    base,
    dataDir,
    env,
    /** Runs `ponte <args>` against the same configuration and returns stdout. */
    async cli(...args) {
      const { stdout } = await run(ponteBin, args, { env });
      return stdout;
    },
    stderr: () => stderr,
    async stop() {
      child.kill('SIGTERM');
      const result = await exited;
      await rm(dataDir, { recursive: true, force: true });
      return result;
    },
  };
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
