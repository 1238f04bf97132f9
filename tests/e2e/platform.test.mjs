// The reference invoicing platform (platform.mjs) keeps the README's contract: tokens are
// required, a repeated idempotency key replays the first answer, an outage answers 503,
// activating twice is one activation, and webhooks are signed as the contract says.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { createHmac } from 'node:crypto';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { startPlatform, signWebhook } from './platform.mjs';

const CLIENT = { clientId: 'ponte', clientSecret: 's3cret', webhookSecret: 'whsec-test' };
const COMPANY = {
  legal_name: 'Bar Rossi S.r.l.',
  vat_number: '01234567890',
  tax_code: '01234567890',
  address: { street: 'Via Roma 1', city: 'Milano', postal_code: '20100', province: 'MI', country: 'IT' },
  sdi_code: 'ABC1234',
  pec: null,
};

let platform;
before(async () => { platform = await startPlatform(CLIENT); });
after(async () => { await platform.stop(); });

async function token(base = platform.url, { id = CLIENT.clientId, secret = CLIENT.clientSecret } = {}) {
  const response = await fetch(`${base}/oauth/token`, {
    method: 'POST',
    headers: {
      authorization: `Basic ${Buffer.from(`${id}:${secret}`).toString('base64')}`,
      'content-type': 'application/x-www-form-urlencoded',
    },
    body: 'grant_type=client_credentials',
  });
  return { status: response.status, body: await response.json() };
}

async function call(method, path, { body, key = `key-${Math.random()}`, bearer, base = platform.url } = {}) {
  const headers = { accept: 'application/json' };
  if (bearer !== null) headers.authorization = `Bearer ${bearer ?? (await token(base)).body.access_token}`;
  if (key !== null) headers['idempotency-key'] = key;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const response = await fetch(`${base}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  return { status: response.status, body: await response.json() };
}

async function control(method, path, body) {
  const response = await fetch(`${platform.url}/_control/${path}`, {
    method,
    headers: body ? { 'content-type': 'application/json' } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  return { status: response.status, body: await response.json() };
}

test('the token endpoint wants the client credentials, and the API a live token', async () => {
  assert.equal((await token(platform.url, { secret: 'wrong' })).status, 401);
  assert.equal((await token(platform.url, { id: 'someone-else' })).status, 401);
  const issued = await token();
  assert.equal(issued.status, 200);
  assert.equal(issued.body.token_type, 'Bearer');
  assert.equal(issued.body.expires_in, 300);
  assert.ok(issued.body.access_token.length >= 32);
  assert.notEqual((await token()).body.access_token, issued.body.access_token, 'tokens are random');

  assert.equal((await call('GET', '/v1/accounts?vat_number=01234567890', { bearer: null })).status, 401);
  assert.equal((await call('GET', '/v1/accounts?vat_number=01234567890', { bearer: 'made-up' })).status, 401);
  const ok = await call('GET', '/v1/accounts?vat_number=99999999999', { bearer: issued.body.access_token });
  assert.deepEqual(ok, { status: 200, body: { accounts: [] } });
  const noKey = await call('GET', '/v1/accounts?vat_number=99999999999', { key: null });
  assert.equal(noKey.status, 400);
  assert.equal(noKey.body.error, 'idempotency_key_required');

  assert.equal((await control('POST', 'tokens/revoke', {})).status, 200);
  assert.equal((await call('GET', '/v1/accounts?vat_number=99999999999', { bearer: issued.body.access_token })).status, 401,
    'a revoked token is refused, so a client must fetch a new one');
});

test('tokens expire after tokenTtl seconds', async () => {
  const quick = await startPlatform({ ...CLIENT, tokenTtl: 1 });
  try {
    const issued = (await token(quick.url)).body;
    assert.equal(issued.expires_in, 1);
    assert.equal((await call('GET', '/v1/accounts?vat_number=1', { base: quick.url, bearer: issued.access_token })).status, 200);
    await new Promise((resolve) => { setTimeout(resolve, 1100); });
    assert.equal((await call('GET', '/v1/accounts?vat_number=1', { base: quick.url, bearer: issued.access_token })).status, 401);
  } finally {
    await quick.stop();
  }
});

test('a repeated idempotency key replays the first answer and has no second effect', async () => {
  const company = { ...COMPANY, vat_number: '11111111111' };
  const first = await call('POST', '/v1/accounts', { body: { company }, key: 'job-create-1' });
  assert.equal(first.status, 201);
  assert.match(first.body.account.id, /^pa_/);
  const again = await call('POST', '/v1/accounts', { body: { company }, key: 'job-create-1' });
  assert.deepEqual(again, first, 'the same answer, not a 409');
  const other = await call('POST', '/v1/accounts', { body: { company }, key: 'job-create-2' });
  assert.equal(other.status, 409);
  assert.equal(other.body.error, 'account_exists');
  const reused = await call('POST', '/v1/accounts', { body: { company: { ...company, legal_name: 'Other' } }, key: 'job-create-1' });
  assert.equal(reused.status, 422);
  assert.equal(reused.body.error, 'idempotency_key_reused');

  const found = await call('GET', '/v1/accounts?vat_number=11111111111');
  assert.deepEqual(found.body.accounts.map((a) => a.id), [first.body.account.id], 'one account');
  const { requests } = (await control('GET', 'requests')).body;
  assert.deepEqual(requests.filter((r) => r.idempotency_key === 'job-create-1').map((r) => [r.status, r.replayed]),
    [[201, false], [201, true], [422, false]]);
});

test('a seeded account is found by its VAT number, linked, and takes collaborators', async () => {
  const seeded = await control('POST', 'accounts', { vat_number: '22222222222', legal_name: 'Gruppo Verdi', owner_email: 'anna@verdi.it' });
  assert.equal(seeded.status, 201);
  assert.equal(seeded.body.account.owner_email, 'a***@verdi.it', 'the owner email is masked');
  assert.equal((await control('POST', 'accounts', { vat_number: '22222222222' })).status, 409);

  const found = await call('GET', '/v1/accounts?vat_number=22222222222');
  assert.deepEqual(found.body.accounts, [seeded.body.account]);
  const accountId = seeded.body.account.id;
  const company = { ...COMPANY, vat_number: '33333333333' };
  const linked = await call('POST', `/v1/accounts/${accountId}/companies`, { body: { company } });
  assert.deepEqual(linked, { status: 200, body: { account: seeded.body.account } });
  assert.equal((await call('GET', '/v1/accounts?vat_number=33333333333')).body.accounts[0].id, accountId);
  const missing = await call('POST', '/v1/accounts/pa_missing/companies', { body: { company } });
  assert.deepEqual([missing.status, missing.body.error], [404, 'account_not_found']);
  const invalid = await call('POST', `/v1/accounts/${accountId}/companies`, { body: { company: { legal_name: 'x' } } });
  assert.equal(invalid.status, 422);

  const invited = await call('POST', `/v1/accounts/${accountId}/collaborators`, { body: { email: 'bruno@esempio.it', reference: 'inv_1' } });
  assert.deepEqual(invited.body, { collaborator: { email: 'bruno@esempio.it', status: 'invited', platform_sent_invite: false } });
  const { collaborators } = (await control('GET', 'collaborators')).body;
  assert.deepEqual(collaborators.filter((c) => c.account_id === accountId),
    [{ account_id: accountId, email: 'bruno@esempio.it', reference: 'inv_1', status: 'invited', platform_sent_invite: false }]);
});

test('activating again, with any key, is still one effective activation', async () => {
  const account = platform.seedAccount({ vat_number: '44444444444', owner_email: 'carla@esempio.it' });
  const path = `/v1/accounts/${account.id}/integrations/digital_invoice/activations`;
  const body = { vat_number: '44444444444', collaborator_email: 'bruno@esempio.it' };
  const first = await call('POST', path, { body, key: 'job-a' });
  assert.equal(first.status, 200);
  assert.match(first.body.activation.id, /^act_/);
  assert.equal(first.body.activation.status, 'active');
  assert.deepEqual(await call('POST', path, { body, key: 'job-a' }), first, 'a replay');
  assert.deepEqual(await call('POST', path, { body, key: 'job-b' }), first, 'the existing activation');
  const wrongVat = await call('POST', path, { body: { ...body, vat_number: '55555555555' } });
  assert.equal(wrongVat.status, 422);
  const wrongKind = await call('POST', `/v1/accounts/${account.id}/integrations/payroll/activations`, { body });
  assert.equal(wrongKind.status, 404);

  const counts = (await control('GET', 'activations')).body;
  assert.deepEqual(counts.by_vat['44444444444'], { effective: 1, calls: 3, activation_id: first.body.activation.id });
  assert.equal(counts.effective, Object.values(counts.by_vat).reduce((n, v) => n + v.effective, 0));
});

test('during an outage every API call answers 503, and afterwards they work again', async () => {
  const bearer = (await token()).body.access_token;
  assert.deepEqual((await control('POST', 'outage', { down: true })).body, { down: true });
  try {
    const down = await call('GET', '/v1/accounts?vat_number=01234567890', { bearer });
    assert.equal(down.status, 503);
    const create = await call('POST', '/v1/accounts', { body: { company: { ...COMPANY, vat_number: '66666666666' } }, bearer, key: 'job-outage' });
    assert.equal(create.status, 503);
    assert.equal((await token()).status, 200, 'the token endpoint stays up');
  } finally {
    await control('POST', 'outage', { down: false });
  }
  const after = await call('POST', '/v1/accounts', { body: { company: { ...COMPANY, vat_number: '66666666666' } }, bearer, key: 'job-outage' });
  assert.equal(after.status, 201, 'a 503 is not stored as the answer to its key');
});

test('credentials check and API keys answer as the contract says', async () => {
  const account = platform.seedAccount({ vat_number: '77777777777' });
  const check = (credentials, vat_number = '77777777777') => call('POST', '/v1/credentials/check', { body: { vat_number, credentials } });
  assert.equal((await check({ username: 'u', password: 'p' })).body.outcome, 'ok');
  assert.equal((await check({ username: 'u', password: 'invalid' })).body.outcome, 'invalid_credentials');
  assert.equal((await check({ username: 'u', password: 'p' }, '88888888888')).body.outcome, 'delegation_missing');
  const issued = await call('POST', `/v1/accounts/${account.id}/api-keys`, { body: { vat_number: '77777777777' } });
  assert.equal(issued.status, 201);
  assert.match(issued.body.api_key, /^pk_/);
  // Typed credentials, as Ponte sends them.
  assert.equal((await check({ type: 'api_key', api_key: issued.body.api_key })).body.outcome, 'ok');
  assert.equal((await check({ type: 'api_key', api_key: 'pk_never_issued' })).body.outcome, 'invalid_credentials');
  assert.equal((await check({ type: 'technical_key', key: 'tk' })).body.outcome, 'ok');
  platform.setValidLogin('77777777777', 'mario', 'the-new-one');
  assert.equal((await check({ type: 'username_password', username: 'mario', password: 'p' })).body.outcome, 'invalid_credentials');
  assert.equal((await check({ type: 'username_password', username: 'mario', password: 'the-new-one' })).body.outcome, 'ok');
});

test('webhooks are signed over the timestamp and the raw body, and Ponte\'s answer is returned', async () => {
  const received = [];
  const receiver = createServer(async (req, res) => {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    received.push({ headers: req.headers, body: Buffer.concat(chunks).toString('utf8') });
    res.writeHead(204).end();
  });
  await new Promise((resolve) => { receiver.listen(0, '127.0.0.1', resolve); });
  try {
    const url = `http://127.0.0.1:${receiver.address().port}/webhooks/platform`;
    const event = { type: 'invite.accepted', data: { account_id: 'pa_1', vat_number: '01234567890', reference: 'inv_1', email: 'bruno@esempio.it' } };
    const sent = await control('POST', 'webhook', { url, event });
    assert.equal(sent.body.status, 204);
    const [delivery] = received;
    const timestamp = delivery.headers['platform-timestamp'];
    assert.ok(Math.abs(Number(timestamp) - Date.now() / 1000) < 5);
    const expected = `v1=${createHmac('sha256', CLIENT.webhookSecret).update(`${timestamp}.${delivery.body}`).digest('hex')}`;
    assert.equal(delivery.headers['platform-signature'], expected);
    assert.equal(signWebhook(CLIENT.webhookSecret, timestamp, delivery.body), expected);
    const body = JSON.parse(delivery.body);
    assert.match(body.id, /^evt_/);
    assert.ok(!Number.isNaN(Date.parse(body.occurred_at)));
    assert.deepEqual({ type: body.type, data: body.data }, event);

    await control('POST', 'webhook', { url, event: { ...event, id: 'evt_fixed' }, timestamp: 1000, secret: 'other' });
    assert.equal(received[1].headers['platform-timestamp'], '1000');
    assert.equal(received[1].headers['platform-signature'], signWebhook('other', '1000', received[1].body));
  } finally {
    await new Promise((resolve) => { receiver.close(resolve); });
  }
});

test('run standalone, it prints its URL and serves the contract', async () => {
  const script = fileURLToPath(new URL('./platform.mjs', import.meta.url));
  const child = spawn(process.execPath, [script, '--port', '0', '--client-id', 'ponte', '--client-secret', 's3cret', '--webhook-secret', 'w'], { stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    const base = await new Promise((resolve, reject) => {
      let out = '';
      child.stdout.on('data', (chunk) => {
        out += chunk;
        const line = out.split('\n')[0];
        if (out.includes('\n')) resolve(line.trim());
      });
      child.once('exit', (code) => reject(new Error(`exited with ${code}`)));
    });
    assert.match(base, /^http:\/\/127\.0\.0\.1:\d+$/);
    assert.equal((await token(base, { secret: 's3cret' })).status, 200);
  } finally {
    child.kill('SIGTERM');
  }
});
