// The POS backend's side of the integration tests and the benchmark: valid Italian company
// data, a webhook receiver that checks Ponte's signatures, aiosmtpd as the mail server the
// invites go through (a Maildir read back by the test), and a poll helper.
import { spawn, execFile } from 'node:child_process';
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { createServer } from 'node:http';
import { connect } from 'node:net';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { freePort, quotedPrintable } from './ponte.mjs';

const run = promisify(execFile);

/** Polls `attempt` every `every` ms until it returns a truthy value; throws after `ms`. */
export async function until(what, attempt, { ms = 15_000, every = 50 } = {}) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    last = await attempt();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms (last: ${JSON.stringify(last)})`);
    await new Promise((ok) => { setTimeout(ok, every); });
  }
}

/** A valid Partita IVA: `serial` (0 … 9 999 999) at the Rome office (058), with its Luhn check digit. */
export function partitaIva(serial) {
  const ten = `${String(serial).padStart(7, '0')}058`;
  for (let check = 0; check < 10; check += 1) {
    const digits = `${ten}${check}`.split('').map(Number).reverse();
    const sum = digits.reduce((s, d, i) => s + (i % 2 === 1 ? Math.floor((2 * d) / 10) + ((2 * d) % 10) : d), 0);
    if (sum % 10 === 0) return `${ten}${check}`;
  }
  throw new Error('unreachable: one check digit always fits');
}

/** A company's JSON as the POS sends it, with `vat_number` and a legal name of its own. */
export function companyJson(vatNumber, legalName = `Bar ${vatNumber} S.r.l.`) {
  return {
    legal_name: legalName,
    vat_number: vatNumber,
    address: { street: 'Via Roma 1', city: 'Milano', postal_code: '20121', province: 'MI' },
    sdi_code: 'M5UXCR1',
  };
}

/** `v1=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>`, as Ponte signs its webhooks. */
export function ponteSignature(secret, timestamp, rawBody) {
  return `v1=${createHmac('sha256', secret).update(`${timestamp}.`).update(rawBody).digest('hex')}`;
}

/**
 * The POS backend's webhook receiver: answers 204 and records every delivery as
 * `{headers, raw, event, authentic}` (`authentic`: some `v1=` value of Ponte-Signature is the
 * HMAC over the raw body, checked before parsing, in constant time). `env` configures it
 * in Ponte as `[webhooks.pos]`.
 */
export async function startReceiver({ secret = randomBytes(24).toString('base64url') } = {}) {
  const deliveries = [];
  const server = createServer(async (req, res) => {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const raw = Buffer.concat(chunks);
    const timestamp = req.headers['ponte-timestamp'] ?? '';
    const expected = Buffer.from(ponteSignature(secret, timestamp, raw));
    const authentic = String(req.headers['ponte-signature'] ?? '').split(',').map((v) => Buffer.from(v.trim()))
      .some((given) => given.length === expected.length && timingSafeEqual(given, expected));
    let event = null;
    try { event = JSON.parse(raw.toString('utf8')); } catch { /* recorded as is */ }
    deliveries.push({ headers: req.headers, raw: raw.toString('utf8'), event, authentic });
    res.writeHead(authentic ? 204 : 401).end();
  });
  await new Promise((ok, fail) => {
    server.once('error', fail);
    server.listen(0, '127.0.0.1', ok);
  });
  const url = `http://127.0.0.1:${server.address().port}/hooks/ponte`;
  return {
    url,
    secret,
    deliveries,
    env: { PONTE_WEBHOOKS__POS__URL: url, PONTE_WEBHOOKS__POS__SECRET: secret },
    /** The `integration.state_changed` events about `companyId`, in the order of their `since`. */
    changes(companyId) {
      return deliveries.map((d) => d.event)
        .filter((e) => e?.type === 'integration.state_changed' && e.data?.company_id === companyId)
        .sort((a, b) => Date.parse(a.data.since) - Date.parse(b.data.since) || a.id.localeCompare(b.id));
    },
    close: () => new Promise((ok) => {
      server.closeAllConnections();
      server.close(() => ok());
    }),
  };
}

/** Where aiosmtpd is: PONTE_TEST_AIOSMTPD (scripts/test installs it in a venv). */
export const aiosmtpdPath = process.env.PONTE_TEST_AIOSMTPD ?? null;

/**
 * The `skip` option of a test that reads mail: skipped without aiosmtpd on a developer's
 * machine, but under CI it runs and fails with a clear message.
 */
export const needsAiosmtpd = aiosmtpdPath || process.env.CI ? false
  : 'aiosmtpd not found: set PONTE_TEST_AIOSMTPD to its path (scripts/test installs it into a venv)';

/**
 * Starts aiosmtpd on a free loopback port, writing a Maildir. `env` points Ponte at it;
 * `messages()` reads every message back as `{to, subject, text, invite}` (`invite`: the
 * first `/invites/…` link in it), oldest first.
 */
export async function startAiosmtpd() {
  if (!aiosmtpdPath) {
    throw new Error('PONTE_TEST_AIOSMTPD is not set: the mail tests need aiosmtpd (scripts/test installs it into a venv)');
  }
  const dir = await mkdtemp(join(tmpdir(), 'ponte-e2e-mail-'));
  const maildir = join(dir, 'Maildir'); // aiosmtpd creates it: it must not exist yet
  const port = await freePort();
  const child = spawn(aiosmtpdPath, ['-n', '-l', `127.0.0.1:${port}`, '-c', 'aiosmtpd.handlers.Mailbox', maildir],
    { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (chunk) => { stderr += chunk; });
  const exited = new Promise((ok) => { child.once('exit', ok); });
  await until(`aiosmtpd greeting on ${port}\n${stderr}`, () => greets(port), { ms: 15_000 });
  async function messages() {
    const found = [];
    for (const sub of ['new', 'cur']) {
      let names = [];
      try { names = await readdir(join(maildir, sub)); } catch (error) { if (error.code !== 'ENOENT') throw error; }
      for (const name of names) found.push({ name, text: await readFile(join(maildir, sub, name), 'utf8') });
    }
    // Maildir names start with the delivery time in seconds, then a counter-like part.
    found.sort((a, b) => a.name.localeCompare(b.name, 'en', { numeric: true }));
    return found.map(({ text }) => parseMail(text));
  }
  return {
    url: `smtp://127.0.0.1:${port}`,
    env: { PONTE_SMTP_URL: `smtp://127.0.0.1:${port}` },
    /** The Maildir folder (`new/` holds delivered messages), for a reader that polls it itself. */
    maildir,
    messages,
    /** The invite links mailed to `email` once there are at least `count`, oldest first. */
    async invites(email, count = 1, ms = 15_000) {
      return until(`${count} invite mail(s) to ${email}`, async () => {
        const links = (await messages()).filter((m) => m.to?.toLowerCase().includes(email.toLowerCase()) && m.invite)
          .map((m) => m.invite);
        return links.length >= count ? links : null;
      }, { ms });
    },
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      await exited;
      await rm(dir, { recursive: true, force: true });
    },
  };
}

async function greets(port) {
  return new Promise((ok) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('data', (data) => { socket.destroy(); ok(data.toString().startsWith('220')); });
    socket.once('error', () => ok(false));
  });
}

/** Headers of interest and the text of every part (quoted-printable or base64 decoded). */
function parseMail(raw) {
  const split = raw.search(/\r?\n\r?\n/);
  const head = raw.slice(0, split).replace(/\r?\n[ \t]+/g, ' ');
  const header = (key) => head.match(new RegExp(`^${key}: (.*)$`, 'mi'))?.[1]?.trim();
  const pieces = [quotedPrintable(raw)];
  for (const block of raw.matchAll(/Content-Transfer-Encoding: base64\r?\n(?:[^\r\n]+\r?\n)*\r?\n([A-Za-z0-9+/=\r\n]+)/gi)) {
    pieces.push(Buffer.from(block[1].replace(/\s+/g, ''), 'base64').toString('utf8'));
  }
  const text = pieces.join('\n');
  const invite = text.match(/https?:\/\/[^\s"'<>]+\/invites\/[A-Za-z0-9_-]+/)?.[0] ?? null;
  return { to: header('To'), subject: header('Subject'), text, invite };
}

/**
 * A fresh PostgreSQL database for one test (or one benchmark run) on the server of
 * PONTE_TEST_DATABASE_URL: `{url, drop()}`.
 */
export async function freshDatabase(serverUrl, label) {
  const name = `ponte_e2e_${label}_${randomBytes(5).toString('hex')}`;
  await run('psql', [serverUrl, '-v', 'ON_ERROR_STOP=1', '-qc', `CREATE DATABASE ${name}`], { timeout: 20_000 });
  const url = new URL(serverUrl);
  url.pathname = `/${name}`;
  return {
    url: url.href,
    drop: () => run('psql', [serverUrl, '-qc', `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`], { timeout: 20_000 }),
  };
}

/** Deletes every Redis key under `prefix` on the server at `url` (redis-cli, no client library needed). */
export async function dropRedisPrefix(url, prefix) {
  const { stdout } = await run('redis-cli', ['-u', url, '--scan', '--pattern', `${prefix}*`], { timeout: 10_000 });
  const keys = stdout.split('\n').filter(Boolean);
  for (let i = 0; i < keys.length; i += 100) {
    await run('redis-cli', ['-u', url, 'DEL', ...keys.slice(i, i + 100)], { timeout: 10_000 });
  }
}
