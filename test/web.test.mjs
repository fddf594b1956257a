// The chat page at "/" in headless Chromium (Debian's /usr/bin/chromium driven by playwright-core):
// a streamed two-turn chat whose replies match the API's, the history sent with the second turn,
// and the stop button (the generation is aborted and its KV memory freed). Saves a screenshot to
// test/artifacts/web-chat.png.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Model, Tokenizer } from '../dist/index.mjs';
import { createServer } from '../dist/server.js';
import { fixture, device } from './helpers/fixtures.mjs';

const CHROMIUM = process.env.QWEN_CHROMIUM || '/usr/bin/chromium';
const skip = fs.existsSync(CHROMIUM) ? false : `no Chromium at ${CHROMIUM} (apt-get install -y chromium, or set QWEN_CHROMIUM)`;
const ARTIFACTS = fileURLToPath(new URL('./artifacts/', import.meta.url));
const MODEL_ID = 'chat-tiny-bf16';

let model, server, base, browser;

before(async () => {
  if (skip) return;
  const tokenizer = await Tokenizer.load(fixture('tokenizer'));
  model = await Model.load(fixture(MODEL_ID), { device, tokenizer, contextLength: 512 });
  server = createServer(model);
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${server.address().port}`;
  const { chromium } = await import('playwright-core');
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await browser?.close();
  if (server) {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
  model?.dispose();
});

async function apiReply(messages, extra) {
  const res = await fetch(`${base}/v1/chat/completions`, { method: 'POST', body: JSON.stringify({ model: MODEL_ID, messages, ...extra }) });
  assert.equal(res.status, 200);
  return (await res.json()).choices[0].message.content;
}

test('chat page: a streamed two-turn chat, then the stop button', { skip, timeout: 60_000 }, async () => {
  const page = await browser.newPage({ viewport: { width: 1000, height: 700 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  const bodies = [];
  page.on('request', (r) => {
    if (r.url().endsWith('/v1/chat/completions')) bodies.push(JSON.parse(r.postData()));
  });
  await page.goto(base + '/');
  await page.waitForFunction((id) => document.getElementById('model-id').textContent === id, MODEL_ID);

  // Greedy, short replies, so the API can say what the page must show.
  await page.click('details.settings summary');
  await page.fill('#system', 'You are a terse assistant.');
  await page.fill('#temperature', '0');
  await page.fill('#max-tokens', '12');

  const turn = async (text, n) => {
    await page.fill('#input', text);
    await page.press('#input', 'Enter');
    await page.waitForFunction((k) => document.querySelectorAll('.msg.assistant').length === k && document.body.dataset.busy === 'false', n);
    return page.locator('.msg.assistant').nth(n - 1).textContent();
  };
  const reply1 = await turn('Hello there', 1);
  const sys = { role: 'system', content: 'You are a terse assistant.' };
  const greedy = { temperature: 0, max_tokens: 12 };
  assert.equal(reply1, await apiReply([sys, { role: 'user', content: 'Hello there' }], greedy));
  const reply2 = await turn('And a second question', 2);
  const second = [sys, { role: 'user', content: 'Hello there' }, { role: 'assistant', content: reply1 }, { role: 'user', content: 'And a second question' }];
  assert.deepEqual(bodies[1].messages, second);
  assert.equal(bodies[1].stream, true);
  assert.equal(reply2, await apiReply(second, greedy));
  assert.match(await page.textContent('#status'), /tokens.*finish: (stop|length)/);

  // Stop: a long sampled reply, stopped once text streams.
  await page.fill('#temperature', '');
  await page.fill('#max-tokens', '480');
  await page.fill('#input', 'Tell me a long story');
  await page.press('#input', 'Enter');
  await page.waitForFunction(() => (document.querySelectorAll('.msg.assistant')[2]?.textContent ?? '').length > 10);
  assert.ok(model.memory().kvCache > 0);
  await page.click('#stop');
  await page.waitForFunction(() => document.body.dataset.busy === 'false');
  const stopped = page.locator('.msg.assistant').nth(2);
  assert.equal(await stopped.getAttribute('data-stopped'), 'true');
  assert.match(await stopped.textContent(), /\[stopped/);
  const t0 = Date.now();
  while (model.memory().kvCache !== 0) {
    assert.ok(Date.now() - t0 < 10_000, 'the stopped generation still holds KV memory after 10 s');
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.equal(await page.isDisabled('#stop'), true);
  assert.equal(await page.isEnabled('#send'), true);
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: path.join(ARTIFACTS, 'web-chat.png'), fullPage: true });
  assert.deepEqual(errors, []);
  await page.close();
});
