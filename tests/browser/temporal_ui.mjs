// Drives Debian's Chromium through the Temporal web UI, as support staff would.
//
// Run by tests/integration/test_temporal_ui.py (which starts the stack, places the
// order and asserts on the report); configuration comes from the environment:
//   UI_URL, GATEWAY_URL, CODEC_ENDPOINT, NAMESPACE, CUSTOMER_ID, WORKFLOW_ID, SKU,
//   STAFF_EMAIL, CUSTOMER_EMAIL, PASSWORD, SCREENSHOT_DIR.
// The last line on stdout is a JSON report; progress goes to stderr.
//
// Two browsers, each with a fresh profile:
//   1. signed out: a customer's sign-in at /codec/login is refused, the codec answers
//      401, and the order's input stays encrypted in the UI;
//   2. staff: support signs in at /codec/login (HttpOnly cookie), finds the order in
//      the UI's workflow list by its CustomerId search attribute, opens it, and reads
//      the order's lines decoded by the codec server.
import fs from 'node:fs';
import path from 'node:path';

import { chromium } from 'playwright-core';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const UI = env('UI_URL');
const GATEWAY = env('GATEWAY_URL');
const CODEC = env('CODEC_ENDPOINT');
const NAMESPACE = env('NAMESPACE');
const SHOTS = env('SCREENSHOT_DIR');
const say = (message) => process.stderr.write(`  browser        ${message}\n`);

const LAUNCH_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

async function freshBrowser(name) {
  // A fresh --user-data-dir per run: no cookie or setting leaks between scenarios.
  const profile = fs.mkdtempSync(path.join(SHOTS, `.profile-${name}-`));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: LAUNCH_FLAGS,
    viewport: { width: 1440, height: 1000 },
  });
  // The UI's own codec settings (Settings -> Codec Server), kept in its local storage:
  // use this browser's setting and include cross-origin credentials, so the codec
  // call carries the HttpOnly session cookie. The dev server cannot set this flag.
  await context.addInitScript(
    ({ endpoint, ui }) => {
      if (window.location.origin !== ui) return;
      window.localStorage.setItem('endpoint', JSON.stringify(endpoint));
      window.localStorage.setItem('includeCredentials', 'true');
      window.localStorage.setItem('passAccessToken', 'false');
      window.localStorage.setItem('overrideRemoteCodecConfiguration', 'true');
    },
    { endpoint: CODEC, ui: new URL(UI).origin },
  );
  const codecStatuses = [];
  context.on('response', (response) => {
    const url = response.url();
    if (url.startsWith(CODEC) && response.request().method() === 'POST') {
      codecStatuses.push(response.status());
    }
  });
  return { context, profile, codecStatuses };
}

async function closeBrowser({ context, profile }) {
  await context.close();
  fs.rmSync(profile, { recursive: true, force: true });
}

async function signIn(page, email) {
  await page.goto(`${GATEWAY}/codec/login`);
  await page.fill('input[name=email]', email);
  await page.fill('input[name=password]', env('PASSWORD'));
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith('/codec/session')),
    page.click('button[type=submit]'),
  ]);
  return response.status();
}

async function findInList(page) {
  // The UI's workflow list filtered by the search attribute: the list takes its
  // visibility query from ?query= and shows it as a filter chip over the results.
  const query = `CustomerId = "${env('CUSTOMER_ID')}"`;
  await page.goto(`${UI}/namespaces/${NAMESPACE}/workflows?query=${encodeURIComponent(query)}`);
  await page.getByText(env('CUSTOMER_ID')).first().waitFor({ timeout: 30_000 });
  const row = page.locator(`a[href*="/workflows/${env('WORKFLOW_ID')}/"]`).first();
  await row.waitFor({ timeout: 30_000 });
  // What the filter found, read from the list's links: a row (one run of one order)
  // has several links to its timeline, so rows are the distinct workflow/run pairs.
  const links = page.locator('a[href*="/workflows/order-"][href$="/timeline"]');
  const hrefs = await links.evaluateAll((anchors) => anchors.map((a) => a.getAttribute('href')));
  const runOf = (href) => href.match(/\/workflows\/([^/]+\/[^/]+)\/timeline$/)[1];
  const runs = new Set(hrefs.map(runOf));
  const listed = [...runs].map((run) => decodeURIComponent(run.split('/')[0]));
  const applied = new URL(page.url()).searchParams.get('query');
  return { row, rows: runs.size, listed, applied };
}

async function pageTextOnce(page, expected) {
  // The details page shows the workflow's Input and Result cards once decoded (or not).
  await page
    .getByText(expected)
    .first()
    .waitFor({ timeout: 30_000 })
    .catch(() => say(`"${expected}" did not appear within 30 s`));
  await page.waitForLoadState('networkidle').catch(() => {});
  return page.locator('body').innerText();
}

async function signedOut() {
  const browser = await freshBrowser('signed-out');
  const page = await browser.context.newPage();
  const customerStatus = await signIn(page, env('CUSTOMER_EMAIL'));
  say(`customer sign-in at /codec/login answered ${customerStatus}`);
  await page.goto(`${UI}/namespaces/${NAMESPACE}/workflows/${env('WORKFLOW_ID')}`);
  const text = await pageTextOnce(page, 'Codec Server could not');
  const screenshot = 'temporal-ui-order-signed-out.png';
  await page.screenshot({ path: path.join(SHOTS, screenshot), fullPage: true });
  const status = browser.codecStatuses.at(-1) ?? null;
  say(`signed out: codec answered ${status}; screenshot ${screenshot}`);
  await closeBrowser(browser);
  return { customerStatus, report: { codec_status: status, input_text: text, screenshot } };
}

async function staff() {
  const browser = await freshBrowser('staff');
  const page = await browser.context.newPage();
  const status = await signIn(page, env('STAFF_EMAIL'));
  say(`support sign-in at /codec/login answered ${status}`);
  const { row, rows, listed, applied } = await findInList(page);
  say(`the workflow list filtered by ${applied} shows ${rows} link(s): ${listed.join(', ')}`);
  await page.screenshot({ path: path.join(SHOTS, 'temporal-ui-order-list.png') });
  await row.click();
  await page.waitForURL(new RegExp(`/workflows/${env('WORKFLOW_ID')}`));
  const text = await pageTextOnce(page, env('SKU'));
  const screenshot = 'temporal-ui-order-decoded.png';
  await page.screenshot({ path: path.join(SHOTS, screenshot), fullPage: true });
  const codecStatus = browser.codecStatuses.includes(200) ? 200 : (browser.codecStatuses.at(-1) ?? null);
  say(`staff: codec answered ${browser.codecStatuses.join(',')}; screenshot ${screenshot}`);
  await closeBrowser(browser);
  return {
    sign_in_status: status,
    list_query: applied,
    listed_rows: rows,
    listed_workflow_ids: listed,
    codec_status: codecStatus,
    input_text: text,
    screenshot,
  };
}

const out = await signedOut();
const staffReport = await staff();
process.stdout.write(
  `${JSON.stringify({
    customer_sign_in_status: out.customerStatus,
    signed_out: out.report,
    staff: staffReport,
  })}\n`,
);
