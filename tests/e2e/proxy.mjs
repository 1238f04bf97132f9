// nginx in front of Ponte replicas, as deploy/compose.yaml runs it: Debian's nginx as a
// foreground process on a free loopback port, with deploy/nginx.conf itself (its upstream
// servers and listen address pointed at loopback, its files kept in a temp prefix) plus an
// access log that names the replica each request went to. Shared by the replica tests and
// bench/soak.mjs.
//
//   const proxy = await startProxy([replica1.base, replica2.base], { port });
//   proxy.base                  // http://127.0.0.1:<port>, the public URL of the replicas
//   await proxy.log()           // [{t, method, uri, status, upstreams: ['127.0.0.1:P', …], …}]
//   await proxy.stop()
import { spawn } from 'node:child_process';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join, resolve } from 'node:path';
import { executable, freePort } from './ponte.mjs';

/** The configuration the compose file gives nginx: the one these tests run. */
export const deployConfig = resolve(import.meta.dirname, '../../deploy/nginx.conf');

/** nginx: PONTE_TEST_NGINX, else on PATH, else Debian's /usr/sbin/nginx (not on a user's PATH). */
function findNginx() {
  const chosen = process.env.PONTE_TEST_NGINX;
  if (chosen) return executable(chosen) ? chosen : null;
  for (const dir of [...(process.env.PATH ?? '').split(delimiter), '/usr/sbin']) {
    if (dir && executable(join(dir, 'nginx'))) return join(dir, 'nginx');
  }
  return null;
}

export const nginxPath = findNginx();

const MISSING = 'nginx not found: install Debian\'s package (apt-get install --no-install-recommends nginx; '
  + 'scripts/test does it when run as root) or point PONTE_TEST_NGINX at an nginx binary';

/** The `skip` reason of a test that needs nginx: false when it is there, and always under CI (where it must fail). */
export const needsNginx = nginxPath || process.env.CI ? false : MISSING;

/**
 * deploy/nginx.conf with `upstreams` (`http://127.0.0.1:P` bases) for its replicas, a
 * loopback `listen`, and everything nginx writes (pid, temp files, logs) under `prefix`.
 * Throws when the file no longer has the shape this expects, so a change there is noticed.
 */
export function proxyConfig(source, { upstreams, port, prefix }) {
  const servers = [...source.matchAll(/^(\s*)server\s+\S+:\d+(.*);$/gm)];
  if (servers.length !== upstreams.length) {
    throw new Error(`deploy/nginx.conf names ${servers.length} upstream servers, the test has ${upstreams.length} replicas`);
  }
  let n = 0;
  let config = source.replace(/^(\s*)server\s+\S+:\d+(.*);$/gm, (_all, indent, rest) => `${indent}server ${new URL(upstreams[n++]).host}${rest};`);
  let listens = 0;
  config = config.replace(/^(\s*)listen\s+\d+;$/gm, (_all, indent) => {
    listens += 1;
    return `${indent}listen 127.0.0.1:${port};`;
  });
  if (listens !== 1) throw new Error(`deploy/nginx.conf has ${listens} plain \`listen PORT;\` lines, expected 1`);
  if (!/^http \{$/m.test(config)) throw new Error('deploy/nginx.conf has no `http {` line');
  const local = `pid ${prefix}/nginx.pid;
error_log ${prefix}/error.log info;
`;
  // One JSON object per request: which replica(s) nginx tried, in order, and what each said.
  const http = `http {
    log_format replicas escape=json '{"t":$msec,"method":"$request_method","uri":"$request_uri",'
        '"status":$status,"upstream":"$upstream_addr","upstream_status":"$upstream_status",'
        '"client":"$remote_addr"}';
    access_log ${prefix}/access.log replicas;
    client_body_temp_path ${prefix}/client_body;
    proxy_temp_path ${prefix}/proxy;
    fastcgi_temp_path ${prefix}/fastcgi;
    uwsgi_temp_path ${prefix}/uwsgi;
    scgi_temp_path ${prefix}/scgi;`;
  return local + config.replace(/^http \{$/m, http);
}

async function listening(port) {
  return new Promise((ok) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => { socket.destroy(); ok(true); });
    socket.once('error', () => ok(false));
  });
}

/**
 * Starts nginx round-robin in front of `upstreams` (the replicas' own bases) on `port`
 * (a free one unless given). Returns `{base, port, prefix, config, log(), stderr(), stop()}`.
 */
export async function startProxy(upstreams, { port } = {}) {
  if (!nginxPath) throw new Error(MISSING);
  const listen = port ?? await freePort();
  const prefix = await mkdtemp(join(tmpdir(), 'ponte-nginx-'));
  // nginx's workers run as an unprivileged user when the master is root: let them reach
  // the temp folders it creates here.
  await chmod(prefix, 0o755);
  const config = proxyConfig(await readFile(deployConfig, 'utf8'), { upstreams, port: listen, prefix });
  const file = join(prefix, 'nginx.conf');
  await writeFile(file, config);
  const child = spawn(nginxPath, ['-c', file, '-p', prefix, '-e', join(prefix, 'error.log'), '-g', 'daemon off;'],
    { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (chunk) => { stderr += chunk; });
  const exited = new Promise((ok) => child.once('exit', (code, signal) => ok({ code, signal })));
  const spawned = new Promise((ok) => { child.once('spawn', () => ok(null)); child.once('error', ok); });
  const errorLog = () => readFile(join(prefix, 'error.log'), 'utf8').catch(() => '');

  async function stop() {
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
      child.kill('SIGTERM'); // nginx's fast shutdown
      const killer = setTimeout(() => child.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(killer);
    }
    await rm(prefix, { recursive: true, force: true });
  }

  const spawnError = await spawned;
  if (spawnError) {
    await rm(prefix, { recursive: true, force: true });
    throw new Error(`cannot start ${nginxPath}: ${spawnError.message}`);
  }
  const deadline = Date.now() + 10_000;
  while (!(await listening(listen))) {
    if (child.exitCode !== null || Date.now() > deadline) {
      const why = `${stderr}${await errorLog()}`;
      await stop();
      throw new Error(`nginx did not listen on ${listen}:\n${why}\nconfig:\n${config}`);
    }
    await new Promise((ok) => { setTimeout(ok, 25); });
  }

  return {
    base: `http://127.0.0.1:${listen}`,
    port: listen,
    prefix,
    config,
    /**
     * Every request nginx finished so far, oldest first: `{t (ms), method, uri, status,
     * upstreams, upstreamStatuses, client, replica}`; `upstreams` lists each replica tried
     * (`host:port`; a retry after a failed one adds the next), `replica` the one that answered.
     */
    async log() {
      const text = await readFile(join(prefix, 'access.log'), 'utf8').catch(() => '');
      return text.split('\n').filter(Boolean).map((line) => {
        const entry = JSON.parse(line);
        const upstreams = entry.upstream.split(/[,:]\s+/).map((s) => s.trim()).filter(Boolean);
        return {
          t: entry.t * 1000,
          method: entry.method,
          uri: entry.uri,
          status: entry.status,
          upstreams,
          upstreamStatuses: entry.upstream_status.split(/[,:]\s+/).map((s) => s.trim()).filter(Boolean),
          client: entry.client,
          replica: upstreams.at(-1) ?? null,
        };
      });
    },
    stderr: async () => `${stderr}${await errorLog()}`,
    stop,
  };
}
