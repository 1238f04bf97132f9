// Debian's Chromium driven by playwright-core: a real browser for the pages and redirects.
// Each launch gets a fresh profile folder; every request that does not go to loopback is
// refused, so a page that names a web font or a remote script stays deterministic and
// nothing leaves the machine.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { chromium } from 'playwright-core';
import { executable } from './ponte.mjs';

const ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** The Chromium to drive: PONTE_TEST_CHROMIUM, else Debian's /usr/bin/chromium, else PATH. */
function findChromium() {
  const chosen = process.env.PONTE_TEST_CHROMIUM;
  if (chosen) return executable(chosen) ? chosen : null;
  if (executable('/usr/bin/chromium')) return '/usr/bin/chromium';
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    for (const name of ['chromium', 'chromium-browser']) {
      if (dir && executable(join(dir, name))) return join(dir, name);
    }
  }
  return null;
}

export const chromiumPath = findChromium();

const MISSING = (process.env.PONTE_TEST_CHROMIUM ? `PONTE_TEST_CHROMIUM=${process.env.PONTE_TEST_CHROMIUM} is not an executable. ` : '')
  + 'Chromium not found: install Debian\'s package (apt-get install --no-install-recommends chromium; '
  + 'scripts/test does it when run as root) or point PONTE_TEST_CHROMIUM at a Chromium binary';

/**
 * The `skip` option for a test that needs the browser: false when Chromium is there.
 * Without Chromium the test is skipped on a developer's machine, but under CI it runs
 * and fails with a clear message: CI must never pass without the browser tests.
 */
export const needsBrowser = chromiumPath || process.env.CI ? false : MISSING;

/**
 * The hosts a page may reach: loopback only, all of 127.0.0.0/8 (the federation tests'
 * upstream provider lives on 127.0.0.2, so that its cookies stay apart from Ponte's).
 */
export function isLoopback(url) {
  const { hostname } = new URL(url);
  return hostname === 'localhost' || hostname === '[::1]' || /^127\.\d+\.\d+\.\d+$/.test(hostname);
}

/**
 * Starts Chromium with a fresh profile. `page()` gives a new tab in a browser with no
 * cookies, so each test starts signed out. `blocked` lists refused non-loopback URLs.
 */
export async function launchBrowser() {
  if (!chromiumPath) throw new Error(MISSING);
  const profile = await mkdtemp(join(tmpdir(), 'ponte-chromium-'));
  let context;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: chromiumPath,
      headless: true,
      args: ARGS,
      timeout: 20_000,
      locale: 'en-US',
    });
  } catch (error) {
    await rm(profile, { recursive: true, force: true });
    throw new Error(`cannot launch ${chromiumPath}: ${error.message}`);
  }
  context.setDefaultTimeout(10_000);
  context.setDefaultNavigationTimeout(10_000);
  const blocked = [];
  await context.route('**/*', (route) => {
    const url = route.request().url();
    if (isLoopback(url)) return route.continue();
    blocked.push(url);
    return route.abort('blockedbyclient');
  });
  return {
    context,
    blocked,
    /** A new tab, with every cookie of earlier tests gone and earlier tabs closed. */
    async page() {
      await context.clearCookies();
      for (const open of context.pages()) await open.close();
      return context.newPage();
    },
    async close() {
      try {
        await context.close();
      } finally {
        await rm(profile, { recursive: true, force: true });
      }
    },
  };
}

/**
 * On Ponte's /login page (the caller checks that it is), fills in the form and submits
 * it. Returns once the browser has left the login page; throws with the page's own error
 * message when it stays there.
 */
export async function signIn(page, { email, password }) {
  await page.fill('input[name=email]', email);
  await page.fill('input[name=password]', password);
  await page.click('button[type=submit]');
  const left = page.waitForURL((url) => url.pathname !== '/login').then(() => true);
  const refused = page.waitForSelector('[role=alert]').then(() => false);
  left.catch(() => {});
  refused.catch(() => {});
  if (!(await Promise.race([left, refused]))) {
    throw new Error(`sign-in refused for ${email}: ${await page.textContent('[role=alert]')}`);
  }
}
