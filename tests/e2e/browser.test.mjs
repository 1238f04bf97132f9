// The browser harness on its own: Chromium signs a person in on Ponte's /login page and
// sees the signed-in page. If this fails, the OIDC browser tests cannot be trusted either.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startPonte } from './ponte.mjs';
import { launchBrowser, needsBrowser, signIn } from './browser.mjs';

let ponte;
let browser;
before(async () => { ponte = await startPonte(); });
after(async () => {
  await browser?.close();
  await ponte?.stop();
});

test('a person signs in on /login in Chromium and sees the signed-in page', { skip: needsBrowser, timeout: 60_000 }, async () => {
  const user = await ponte.newUser('browser');
  browser = await launchBrowser();
  const page = await browser.page();

  await page.goto(`${ponte.base}/`);
  assert.equal(page.url(), `${ponte.base}/login`, 'signed out, / sends the browser to /login');
  assert.equal(await page.textContent('h1'), 'Sign in to Ponte');

  await signIn(page, user);
  assert.equal(page.url(), `${ponte.base}/`);
  assert.equal(await page.textContent('#user-name'), user.name);
  assert.equal(await page.textContent('#user-email'), user.email);
  assert.equal(await page.textContent('#user-role'), 'owner');

  const cookies = await browser.context.cookies(ponte.base);
  const session = cookies.find((c) => c.name === 'ponte_session');
  assert.ok(session, 'a session cookie for 127.0.0.1');
  assert.equal(session.httpOnly, true);
  assert.equal(session.sameSite, 'Lax');
  assert.deepEqual(browser.blocked, [], 'the pages asked for nothing beyond loopback');
});
