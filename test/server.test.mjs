// The OpenAI-compatible server (lib/server.ts) and its ReAct tool-calling layer (lib/react.ts), on the
// CPU with the tiny random-weight chat fixture, driven by the official `openai` client and by raw
// HTTP where the client would hide what is checked (status codes, bodies, disconnects).
//
// Random weights never write "Action:", so tool calling is checked as units (prompt construction
// and reply parsing) plus end-to-end requests whose prompt size proves the ReAct prompt was built.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import OpenAI from 'openai';
import { Model, Tokenizer } from '../dist/index.mjs';
import { makeContext } from '../dist/chat.js';
import { createServer, serve } from '../dist/server.js';
import { toQwenTurns, parseReactResponse, reactInstruction, normalizeTools, MessageError, REACT_STOP } from '../dist/react.js';
import { fixture, device } from './helpers/fixtures.mjs';

const MODEL_ID = 'chat-tiny-bf16';
const CONTEXT = 512;
let model;
let tok;
let idleKv;
const servers = [];

before(async () => {
  tok = await Tokenizer.load(fixture('tokenizer'));
  model = await Model.load(fixture(MODEL_ID), { device, tokenizer: tok, contextLength: CONTEXT });
  idleKv = model.memory().kvCache;
});

after(async () => {
  for (const s of servers) {
    s.closeAllConnections();
    await new Promise((r) => s.close(r));
  }
  model?.dispose();
});

/** A listening server on a free loopback port; returns its base URL and an openai client. */
async function start(options = {}) {
  const server = createServer(model, options);
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  servers.push(server);
  const base = `http://127.0.0.1:${server.address().port}`;
  const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: options.apiKey ?? 'unused', maxRetries: 0, timeout: 30_000 });
  return { server, base, client };
}

/** A long streamed completion (480 tokens) to hold the model busy; abort it through `ctl`. */
async function openLongStream(base) {
  const ctl = new AbortController();
  const res = await fetch(base + '/v1/completions', {
    method: 'POST',
    body: JSON.stringify({ prompt: 'Once upon a time', max_tokens: 480, temperature: 0, stream: true }),
    signal: ctl.signal,
  });
  return { ctl, reader: res.body.getReader() };
}

async function post(base, route, body, headers = {}) {
  const res = await fetch(base + route, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {}
  return { status: res.status, json, text, headers: res.headers };
}

async function waitFor(what, cond, ms = 10_000) {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
/** Polls /health until no request is in flight. */
async function noneActive(base) {
  const t0 = Date.now();
  while ((await (await fetch(`${base}/health`)).json()).active !== 0) {
    if (Date.now() - t0 > 10_000) assert.fail('requests still in flight after 10 s');
    await new Promise((r) => setTimeout(r, 10));
  }
}
const kvIdle = () => waitFor(`kvCache back to idle (${idleKv})`, () => model.memory().kvCache === idleKv);

async function assertAlive(base) {
  const r = await fetch(`${base}/health`);
  assert.equal(r.status, 200);
  assert.equal((await r.json()).status, 'ok');
}

function assertError(r, status, param, code) {
  assert.equal(r.status, status, r.text);
  assert.ok(r.json?.error, r.text);
  assert.equal(typeof r.json.error.message, 'string');
  assert.ok(r.json.error.message.length > 0);
  assert.ok('type' in r.json.error && 'param' in r.json.error && 'code' in r.json.error, r.text);
  if (param !== undefined) assert.equal(r.json.error.param, param, r.text);
  if (code !== undefined) assert.equal(r.json.error.code, code, r.text);
}

const USER = [{ role: 'user', content: 'Hello, who are you?' }];
const WEATHER = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Current weather of a city.',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
  },
};

describe('ReAct prompt and parser (units)', () => {
  test('the instruction follows Qwen openai_api.py TOOL_DESC / REACT_INSTRUCTION', () => {
    const text = reactInstruction(normalizeTools([WEATHER]));
    const expected =
      'Answer the following questions as best you can. You have access to the following APIs:\n\n' +
      'get_weather: Call this tool to interact with the get_weather API. What is the get_weather API useful for? ' +
      'Current weather of a city. Parameters: {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}\n\n' +
      'Use the following format:\n\n' +
      'Question: the input question you must answer\n' +
      'Thought: you should always think about what to do\n' +
      'Action: the action to take, should be one of [get_weather]\n' +
      'Action Input: the input to the action\n' +
      'Observation: the result of the action\n' +
      '... (this Thought/Action/Action Input/Observation can be repeated zero or more times)\n' +
      'Thought: I now know the final answer\n' +
      'Final Answer: the final answer to the original input question\n\n' +
      'Begin!';
    assert.equal(text, expected);
    assert.equal(reactInstruction([]), '');
    assert.equal(REACT_STOP, 'Observation:');
  });

  test('messages -> system, history, query (no tools)', () => {
    const t = toQwenTurns(
      [
        { role: 'system', content: '\nBe brief.  ' },
        { role: 'user', content: 'Q1' },
        { role: 'assistant', content: 'A1\n' },
        { role: 'user', content: [{ type: 'text', text: 'Q2' }] },
      ],
      [],
    );
    assert.deepEqual(t, { system: 'Be brief.', systemGiven: true, history: [['Q1', 'A1']], query: 'Q2', continuation: null });
    // No system message: v1's default, marked as not given (a qwen2/qwen3 model uses its template's).
    assert.equal(toQwenTurns(USER, []).system, 'You are a helpful assistant.');
    assert.equal(toQwenTurns(USER, []).systemGiven, false);
    // Consecutive user messages are joined.
    assert.equal(toQwenTurns([{ role: 'user', content: 'a' }, { role: 'user', content: 'b' }], []).query, 'a\nb');
  });

  test('a tool round trip becomes Thought/Action/Action Input/Observation, continued after "Thought:"', () => {
    const tools = normalizeTools([WEATHER]);
    const instruction = reactInstruction(tools);
    const t = toQwenTurns(
      [
        { role: 'system', content: 'sys' },
        { role: 'user', content: 'Weather in Paris?' },
        {
          role: 'assistant',
          content: 'I should look it up.',
          tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city": "Paris"}' } }],
        },
        { role: 'tool', tool_call_id: 'call_1', content: '{"temp": 21}' },
      ],
      tools,
    );
    assert.equal(t.system, 'sys');
    assert.equal(t.query, null);
    assert.deepEqual(t.history, []);
    assert.deepEqual(t.continuation, [
      `${instruction}\n\nQuestion: Weather in Paris?`,
      'Thought: I should look it up.\nAction: get_weather\nAction Input: {"city": "Paris"}\nObservation: {"temp": 21}\nThought:',
    ]);
    // With a new user question after a finished tool turn, the instruction stays on the newest
    // history turn (as the original places it) and earlier answers become "Final Answer:".
    const t2 = toQwenTurns(
      [
        { role: 'user', content: 'Q1' },
        { role: 'assistant', content: 'A1' },
        { role: 'user', content: 'Q2' },
      ],
      tools,
    );
    assert.deepEqual(t2.history, [[`${instruction}\n\nQuestion: Q1`, 'Thought: I now know the final answer.\nFinal Answer: A1']]);
    assert.equal(t2.query, 'Q2');
    // No history: the instruction goes on the query.
    assert.equal(toQwenTurns(USER, tools).query, `${instruction}\n\nQuestion: ${USER[0].content}`);
  });

  test('bad conversations are refused with the offending field', () => {
    const err = (messages, param) =>
      assert.throws(() => toQwenTurns(messages, []), (e) => e instanceof MessageError && e.param === param, JSON.stringify(messages));
    err('nope', 'messages');
    err([], 'messages');
    err([{ role: 'system', content: 'only a system message' }], 'messages');
    err([{ role: 'tool', content: 'x' }], 'messages[0].role');
    err([{ role: 'wizard', content: 'x' }], 'messages[0].role');
    err([{ role: 'user', content: 42 }], 'messages[0].content');
    err([{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }], 'messages[0].content[0]');
    assert.throws(() => normalizeTools([{ type: 'function', function: { description: 'no name' } }]), MessageError);
    assert.throws(() => normalizeTools('x'), MessageError);
  });

  test('the reply parser: a call, a call without Observation, a final answer, plain text', () => {
    assert.deepEqual(parseReactResponse('Thought: I need the weather.\nAction: get_weather\nAction Input: {"city": "Paris"}\nObservation:'), {
      content: 'I need the weather.',
      call: { name: 'get_weather', arguments: '{"city": "Paris"}' },
    });
    // Generation stopped at "Observation:", which the stop string removed.
    assert.deepEqual(parseReactResponse('Thought: look up\nAction: get_weather\nAction Input: {"city": "Rome"}\n'), {
      content: 'look up',
      call: { name: 'get_weather', arguments: '{"city": "Rome"}' },
    });
    // A continued turn starts right after "Thought:".
    assert.deepEqual(parseReactResponse(' again\nAction: f\nAction Input: {}'), { content: 'again', call: { name: 'f', arguments: '{}' } });
    assert.deepEqual(parseReactResponse('Thought: I now know the final answer.\nFinal Answer: 21 degrees.'), { content: '21 degrees.', call: null });
    assert.deepEqual(parseReactResponse('Just text.'), { content: 'Just text.', call: null });
    assert.deepEqual(parseReactResponse('Action Input: before\nAction: x'), { content: 'Action Input: before\nAction: x', call: null });
  });
});

describe('OpenAI API over HTTP', () => {
  let base, client;
  before(async () => ({ base, client } = await start()));

  test('GET /v1/models, /v1/models/:id, /health, / (the chat page)', async () => {
    const list = await client.models.list();
    assert.deepEqual(
      list.data.map((m) => m.id),
      [MODEL_ID],
    );
    assert.equal((await client.models.retrieve(MODEL_ID)).id, MODEL_ID);
    await assertAlive(base);
    const page = await fetch(base + '/');
    assert.equal(page.status, 200);
    assert.match(page.headers.get('content-type'), /text\/html/);
    assert.match(await page.text(), /v1\/chat\/completions/);
  });

  test('chat, non-streaming: message, finish_reason, usage as OpenAI defines them', async () => {
    const r = await client.chat.completions.create({ model: MODEL_ID, messages: USER, max_tokens: 6, temperature: 0 });
    assert.equal(r.object, 'chat.completion');
    assert.equal(r.model, MODEL_ID);
    assert.match(r.id, /^chatcmpl-/);
    assert.equal(r.choices.length, 1);
    const c = r.choices[0];
    assert.equal(c.index, 0);
    assert.equal(c.message.role, 'assistant');
    assert.equal(typeof c.message.content, 'string');
    assert.ok(['stop', 'length'].includes(c.finish_reason));
    const promptTokens = makeContext(tok, USER[0].content).tokens.length;
    assert.equal(r.usage.prompt_tokens, promptTokens);
    assert.ok(r.usage.completion_tokens >= 1 && r.usage.completion_tokens <= 6);
    assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
    if (r.usage.completion_tokens === 6) assert.equal(c.finish_reason, 'length');
    // The same greedy turn through the library gives the same reply.
    const lib = await model.chat(USER[0].content, { maxNewTokens: 6, temperature: 0 });
    assert.equal(c.message.content, lib.text);
  });

  test('chat, streaming: SSE chunks join to the non-streamed reply (same seed); include_usage; [DONE]', async () => {
    const req = { model: MODEL_ID, messages: USER, max_tokens: 8, temperature: 0.9, seed: 1234 };
    const whole = await client.chat.completions.create(req);
    const stream = await client.chat.completions.create({ ...req, stream: true, stream_options: { include_usage: true } });
    let text = '';
    let finish = null;
    let usage = null;
    let first = true;
    for await (const ch of stream) {
      assert.equal(ch.object, 'chat.completion.chunk');
      if (ch.usage) {
        usage = ch.usage;
        assert.deepEqual(ch.choices, []);
        continue;
      }
      if (first) assert.equal(ch.choices[0].delta.role, 'assistant');
      first = false;
      text += ch.choices[0].delta.content ?? '';
      if (ch.choices[0].finish_reason) finish = ch.choices[0].finish_reason;
    }
    assert.equal(text, whole.choices[0].message.content);
    assert.equal(finish, whole.choices[0].finish_reason);
    assert.deepEqual(usage, whole.usage);
    // Raw bytes: every event is "data: {...}\n\n" and the last is "data: [DONE]".
    const raw = await post(base, '/v1/chat/completions', { ...req, stream: true });
    assert.match(raw.headers.get('content-type'), /text\/event-stream/);
    const events = raw.text.split('\n\n').filter(Boolean);
    assert.equal(events.at(-1), 'data: [DONE]');
    for (const e of events.slice(0, -1)) JSON.parse(e.replace(/^data: /, ''));
  });

  test('seed: the same request twice gives the same reply; n=2 gives two choices (seed, seed+1)', async () => {
    const req = { model: MODEL_ID, messages: USER, max_tokens: 8, temperature: 1, top_p: 1, seed: 99 };
    const a = await client.chat.completions.create(req);
    const b = await client.chat.completions.create(req);
    assert.equal(a.choices[0].message.content, b.choices[0].message.content);
    const two = await client.chat.completions.create({ ...req, n: 2 });
    assert.deepEqual(
      two.choices.map((c) => c.index),
      [0, 1],
    );
    assert.equal(two.choices[0].message.content, a.choices[0].message.content);
    const seed100 = await client.chat.completions.create({ ...req, seed: 100 });
    assert.equal(two.choices[1].message.content, seed100.choices[0].message.content);
    assert.equal(two.usage.prompt_tokens, a.usage.prompt_tokens); // the prompt counts once
    assert.equal(two.usage.completion_tokens, a.usage.completion_tokens + seed100.usage.completion_tokens);
    // Streaming n=2: both indices stream and finish.
    const s = await client.chat.completions.create({ ...req, n: 2, stream: true });
    const texts = ['', ''];
    const finished = [false, false];
    for await (const ch of s)
      for (const c of ch.choices) {
        texts[c.index] += c.delta.content ?? '';
        if (c.finish_reason) finished[c.index] = true;
      }
    assert.deepEqual(texts, two.choices.map((c) => c.message.content));
    assert.deepEqual(finished, [true, true]);
  });

  test('stop (string and array) ends the text before the stop sequence, finish_reason "stop"', async () => {
    const req = { model: MODEL_ID, prompt: 'The weather today is', max_tokens: 16, temperature: 0 };
    const full = (await client.completions.create(req)).choices[0].text;
    assert.ok(full.length > 8, JSON.stringify(full));
    const stop = full.slice(Math.floor(full.length / 2), Math.floor(full.length / 2) + 3);
    const cut = full.slice(0, full.indexOf(stop));
    for (const s of [stop, [stop, 'never-appears']]) {
      const r = await client.completions.create({ ...req, stop: s });
      assert.equal(r.choices[0].text, cut);
      assert.equal(r.choices[0].finish_reason, 'stop');
    }
    // Chat too (streamed): the reply stops before the stop string.
    const chatFull = (await client.chat.completions.create({ model: MODEL_ID, messages: USER, max_tokens: 16, temperature: 0 })).choices[0].message.content;
    const chatStop = chatFull.slice(Math.floor(chatFull.length / 2), Math.floor(chatFull.length / 2) + 2);
    const stream = await client.chat.completions.create({ model: MODEL_ID, messages: USER, max_tokens: 16, temperature: 0, stop: chatStop, stream: true });
    let text = '';
    let finish;
    for await (const ch of stream) {
      text += ch.choices[0]?.delta?.content ?? '';
      finish = ch.choices[0]?.finish_reason ?? finish;
    }
    assert.equal(text, chatFull.slice(0, chatFull.indexOf(chatStop)).trimEnd());
    assert.equal(finish, 'stop');
  });

  test('/v1/completions: text and token prompts, echo, streaming, usage', async () => {
    const ids = tok.encode('Once upon a time');
    const a = await client.completions.create({ model: MODEL_ID, prompt: 'Once upon a time', max_tokens: 5, temperature: 0 });
    assert.equal(a.object, 'text_completion');
    assert.equal(a.usage.prompt_tokens, ids.length);
    assert.equal(a.usage.total_tokens, a.usage.prompt_tokens + a.usage.completion_tokens);
    const lib = await model.complete('Once upon a time', { maxNewTokens: 5, temperature: 0 });
    assert.equal(a.choices[0].text, lib.text);
    assert.equal(a.choices[0].finish_reason, lib.finishReason === 'stop' ? 'stop' : 'length');
    const b = await client.completions.create({ model: MODEL_ID, prompt: ids, max_tokens: 5, temperature: 0, echo: true });
    assert.equal(b.choices[0].text, 'Once upon a time' + lib.text);
    const s = await client.completions.create({ model: MODEL_ID, prompt: 'Once upon a time', max_tokens: 5, temperature: 0, stream: true });
    let text = '';
    for await (const ch of s) text += ch.choices[0]?.text ?? '';
    assert.equal(text, lib.text);
    const two = await client.completions.create({ model: MODEL_ID, prompt: ['a', 'b'], max_tokens: 2, temperature: 0 });
    assert.equal(two.choices.length, 2);
  });

  test('tools: the ReAct prompt is sent (prompt_tokens) and a non-call reply comes back as a message', async () => {
    const tools = normalizeTools([WEATHER]);
    const instruction = reactInstruction(tools);
    const messages = [{ role: 'user', content: 'Weather in Paris?' }];
    const r = await client.chat.completions.create({ model: MODEL_ID, messages, tools: [WEATHER], max_tokens: 8, temperature: 0 });
    assert.equal(r.usage.prompt_tokens, makeContext(tok, `${instruction}\n\nQuestion: Weather in Paris?`).tokens.length);
    assert.equal(r.choices[0].message.role, 'assistant');
    assert.equal(r.choices[0].message.tool_calls, undefined);
    assert.ok(['stop', 'length'].includes(r.choices[0].finish_reason));

    // The round trip: the assistant's call and the tool's result; the prompt is the unfinished
    // assistant turn that Qwen's text_complete_last_message builds.
    const round = [
      ...messages,
      { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city": "Paris"}' } }] },
      { role: 'tool', tool_call_id: 'call_1', content: '{"temp": 21}' },
    ];
    const r2 = await client.chat.completions.create({ model: MODEL_ID, messages: round, tools: [WEATHER], max_tokens: 8, temperature: 0 });
    const prompt =
      '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' +
      `<|im_start|>user\n${instruction}\n\nQuestion: Weather in Paris?<|im_end|>\n` +
      '<|im_start|>assistant\nThought: \nAction: get_weather\nAction Input: {"city": "Paris"}\nObservation: {"temp": 21}\nThought:';
    assert.equal(r2.usage.prompt_tokens, tok.encode(prompt, { allowSpecial: true }).length);
    assert.equal(r2.choices[0].message.role, 'assistant');
    // Streaming with tools works too (the parsed reply arrives at the end).
    const s = await client.chat.completions.create({ model: MODEL_ID, messages, tools: [WEATHER], max_tokens: 4, temperature: 0, stream: true });
    let text = '';
    for await (const ch of s) text += ch.choices[0]?.delta?.content ?? '';
    const whole = await client.chat.completions.create({ model: MODEL_ID, messages, tools: [WEATHER], max_tokens: 4, temperature: 0 });
    assert.equal(text, whole.choices[0].message.content ?? '');
  });

  test('bad requests get OpenAI-style 400s and the server stays up', async () => {
    assertError(await post(base, '/v1/chat/completions', '{"messages": [', {}), 400, null, 'invalid_json');
    assertError(await post(base, '/v1/chat/completions', '[1, 2]'), 400, null, 'invalid_json');
    assertError(await post(base, '/v1/chat/completions', { messages: USER, temperature: 'hot' }), 400, 'temperature', 'invalid_type');
    assertError(await post(base, '/v1/chat/completions', { messages: USER, temperature: 3 }), 400, 'temperature');
    assertError(await post(base, '/v1/chat/completions', { messages: USER, max_tokens: 1.5 }), 400, 'max_tokens');
    assertError(await post(base, '/v1/chat/completions', { messages: USER, n: 0 }), 400, 'n');
    assertError(await post(base, '/v1/chat/completions', { messages: USER, stream: 'yes' }), 400, 'stream');
    assertError(await post(base, '/v1/chat/completions', { messages: USER, stop: [1] }), 400, 'stop[0]');
    assertError(await post(base, '/v1/chat/completions', { messages: 'hi' }), 400, 'messages');
    assertError(await post(base, '/v1/chat/completions', { messages: [{ role: 'user', content: 5 }] }), 400, 'messages[0].content');
    assertError(await post(base, '/v1/chat/completions', { messages: USER, tools: [{ type: 'function', function: {} }] }), 400, 'tools[0].function.name');
    assertError(await post(base, '/v1/completions', { prompt: 7 }), 400, 'prompt');
    assertError(await post(base, '/v1/completions', {}), 400, 'prompt');
    // logprobs out of range or without its switch (the rest: test/logprobs.test.mjs).
    assertError(await post(base, '/v1/chat/completions', { messages: USER, top_logprobs: 2 }), 400, 'top_logprobs');
    assertError(await post(base, '/v1/chat/completions', { messages: USER, logprobs: true, top_logprobs: 21 }), 400, 'top_logprobs');
    assertError(await post(base, '/v1/completions', { prompt: 'x', logprobs: 6 }), 400, 'logprobs');
    // What the engine cannot do is refused by name, not faked.
    assertError(await post(base, '/v1/chat/completions', { messages: USER, presence_penalty: 0.5 }), 400, 'presence_penalty');
    // A prompt past the context.
    const long = 'lorem ipsum dolor sit amet '.repeat(150);
    assert.ok(tok.encode(long).length > CONTEXT);
    assertError(await post(base, '/v1/chat/completions', { messages: [{ role: 'user', content: long }] }), 400, 'messages', 'context_length_exceeded');
    assertError(await post(base, '/v1/completions', { prompt: long }), 400, 'prompt', 'context_length_exceeded');
    // The client surfaces them as BadRequestError.
    await assert.rejects(client.chat.completions.create({ model: MODEL_ID, messages: USER, temperature: -1 }), (e) => e.status === 400);
    // Unknown model, unknown route, wrong method.
    assertError(await post(base, '/v1/chat/completions', { model: 'gpt-4o', messages: USER }), 404, 'model', 'model_not_found');
    await assert.rejects(client.chat.completions.create({ model: 'gpt-4o', messages: USER }), (e) => e.status === 404);
    await assert.rejects(client.models.retrieve('gpt-4o'), (e) => e.status === 404);
    assertError(await post(base, '/v1/nothing', {}), 404);
    assert.equal((await fetch(base + '/v1/chat/completions')).status, 405);
    await assertAlive(base);
    const ok = await client.chat.completions.create({ model: MODEL_ID, messages: USER, max_tokens: 2, temperature: 0 });
    assert.equal(ok.choices.length, 1);
    assert.equal(model.memory().kvCache, idleKv);
  });

  test('a client that disconnects mid-stream aborts its generation and frees its sequence', async () => {
    const { ctl, reader } = await openLongStream(base);
    let got = '';
    while ((got.match(/data: /g) ?? []).length < 3) got += new TextDecoder().decode((await reader.read()).value);
    assert.ok(model.memory().kvCache > idleKv, 'a live sequence holds KV memory');
    ctl.abort();
    await kvIdle();
    await noneActive(base);
  });

  test('a non-streaming request whose client goes away is aborted too', async () => {
    const { port } = new URL(base);
    const req = http.request({ host: '127.0.0.1', port, path: '/v1/completions', method: 'POST' });
    req.on('error', () => {});
    req.end(JSON.stringify({ prompt: 'Once upon a time', max_tokens: 480, temperature: 0 }));
    await waitFor('the generation to start', () => model.memory().kvCache > idleKv);
    req.destroy();
    await kvIdle();
    await noneActive(base);
  });

  test('load: 200 requests, 16 at a time, every one answered, KV memory back to idle', async () => {
    const N = 200;
    const CONCURRENCY = 16;
    let next = 0;
    const answered = new Array(N).fill(false);
    async function one(i) {
      const kind = i % 4;
      if (kind === 0) {
        const r = await client.chat.completions.create({ model: MODEL_ID, messages: [{ role: 'user', content: `request ${i}` }], max_tokens: 3, temperature: 0 });
        assert.equal(typeof r.choices[0].message.content, 'string');
      } else if (kind === 1) {
        const s = await client.chat.completions.create({ model: MODEL_ID, messages: [{ role: 'user', content: `request ${i}` }], max_tokens: 3, temperature: 0, stream: true });
        let finished = false;
        for await (const ch of s) finished ||= Boolean(ch.choices[0]?.finish_reason);
        assert.ok(finished);
      } else if (kind === 2) {
        const r = await client.completions.create({ model: MODEL_ID, prompt: `request ${i}:`, max_tokens: 3, temperature: 0 });
        assert.equal(r.choices.length, 1);
      } else {
        const r = await client.chat.completions.create({ model: MODEL_ID, messages: [{ role: 'user', content: `request ${i}` }], max_tokens: 2, n: 2, seed: i, temperature: 0.8, top_p: 1 });
        assert.equal(r.choices.length, 2);
      }
      answered[i] = true;
    }
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        while (next < N) await one(next++);
      }),
    );
    assert.equal(answered.filter(Boolean).length, N);
    await kvIdle();
    await noneActive(base);
    console.log(`# load: ${N} requests, ${CONCURRENCY} at a time, in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  });
});

describe('limits and authentication', () => {
  test('API key: 401 without or with a wrong key, 200 with it; /health and / stay open', async () => {
    const { base, client } = await start({ apiKey: 'sekret' });
    const wrong = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'nope', maxRetries: 0 });
    await assert.rejects(wrong.models.list(), (e) => e.status === 401);
    await assert.rejects(wrong.chat.completions.create({ model: MODEL_ID, messages: USER }), (e) => e.status === 401);
    const none = await fetch(`${base}/v1/models`);
    assert.equal(none.status, 401);
    assert.equal((await none.json()).error.code, 'invalid_api_key');
    assertError(await post(base, '/v1/chat/completions', { messages: USER }, { Authorization: 'Bearer sekreT' }), 401, null, 'invalid_api_key');
    assert.equal((await client.models.list()).data[0].id, MODEL_ID);
    const r = await client.chat.completions.create({ model: MODEL_ID, messages: USER, max_tokens: 2, temperature: 0 });
    assert.equal(r.choices.length, 1);
    await assertAlive(base);
    assert.equal((await fetch(base + '/')).status, 200);
  });

  test('a body over maxBodyBytes gets 413 (declared or chunked) and the server stays up', async () => {
    const { base } = await start({ maxBodyBytes: 4096 });
    const big = JSON.stringify({ messages: [{ role: 'user', content: 'x'.repeat(200_000) }] });
    assertError(await post(base, '/v1/chat/completions', big), 413, null, 'request_too_large');
    // Chunked upload (no Content-Length): cut off while reading.
    const status = await new Promise((resolve, reject) => {
      const req = http.request(`${base}/v1/chat/completions`, { method: 'POST', headers: { 'Transfer-Encoding': 'chunked' } }, (res) => {
        res.resume();
        resolve(res.statusCode);
      });
      req.on('error', reject);
      for (let i = 0; i < 10; i++) req.write('x'.repeat(1000));
      req.end();
    });
    assert.equal(status, 413);
    await assertAlive(base);
    const ok = await post(base, '/v1/chat/completions', { messages: USER, max_tokens: 2, temperature: 0 });
    assert.equal(ok.status, 200, ok.text);
  });

  test('the model engine\'s full queue is a 503 too (not a 500)', async () => {
    // The server admits more than this model's engine holds (maxBatch 1, maxQueue 0): the engine's
    // refusal must reach the client as overload.
    const small = await Model.load(fixture(MODEL_ID), { device, tokenizer: tok, contextLength: CONTEXT, maxBatch: 1, maxQueue: 0 });
    try {
      const server = createServer(small, {});
      await new Promise((r) => server.listen(0, '127.0.0.1', r));
      servers.push(server);
      const base = `http://127.0.0.1:${server.address().port}`;
      const body = { prompt: 'Once upon a time', max_tokens: 200, temperature: 0 };
      const rs = await Promise.all([0, 1, 2].map(() => post(base, '/v1/completions', body)));
      const statuses = rs.map((r) => r.status).sort();
      assert.ok(statuses.includes(200), `statuses ${statuses}`);
      assert.ok(!statuses.includes(500), `statuses ${statuses}`);
      for (const r of rs.filter((x) => x.status !== 200)) assertError(r, 503, null, 'overloaded');
      assert.equal(rs.filter((x) => x.status === 503).length, 2, `statuses ${statuses}`);
    } finally {
      small.dispose();
    }
  });

  test('maxQueue 1: a second request while one generates gets 503; afterwards requests pass', async () => {
    const { base, client } = await start({ maxQueue: 1 });
    const { ctl, reader } = await openLongStream(base);
    await reader.read(); // generating now
    const busy = await post(base, '/v1/chat/completions', { messages: USER, max_tokens: 2 });
    assertError(busy, 503, null, 'overloaded');
    await assert.rejects(client.completions.create({ model: MODEL_ID, prompt: 'x', max_tokens: 2 }), (e) => e.status === 503);
    ctl.abort();
    await kvIdle();
    await noneActive(base);
    const r = await post(base, '/v1/completions', { prompt: 'x', max_tokens: 2, temperature: 0 });
    assert.equal(r.status, 200, r.text);
  });

  test('serve() listens and answers', async () => {
    const server = await serve(model, { port: 0, host: '127.0.0.1' });
    servers.push(server);
    await assertAlive(`http://127.0.0.1:${server.address().port}`);
  });
});

test('runServeCommand (the `serve` subcommand): flags, listening line, SIGINT stops it with code 0', async () => {
  const cache = fs.mkdtempSync(path.join(os.tmpdir(), 'qwen-native-serve-'));
  const serverJs = fileURLToPath(new URL('../dist/server.js', import.meta.url));
  const script = `require(${JSON.stringify(serverJs)}).runServeCommand(process.argv.slice(1)).then((c) => { process.exitCode = c; }, (e) => { console.error('ERR ' + e.message); process.exitCode = 1; })`;
  const run = (args) => spawn(process.execPath, ['-e', script, '--', ...args], { env: { ...process.env, QWEN_NATIVE_CACHE: cache } });
  try {
    const bad = run(['--model', 'demo', '--port', 'eighty']);
    let err = '';
    bad.stderr.on('data', (d) => (err += d));
    assert.equal(await new Promise((r) => bad.on('close', r)), 1);
    assert.match(err, /--port must be an integer/);

    const child = run(['--model', 'demo', '--port', '0', '--context-length', '256', '--api-key', 'k', '--max-queue', '4']);
    let out = '';
    child.stderr.on('data', (d) => (out += d));
    const exited = new Promise((r) => child.on('close', r));
    await waitFor('the listening line', () => /http:\/\/127\.0\.0\.1:\d+/.test(out), 30_000);
    const url = /http:\/\/127\.0\.0\.1:\d+/.exec(out)[0];
    const health = await (await fetch(`${url}/health`)).json();
    assert.equal(health.model, 'demo');
    assert.equal(health.max_queue, 4);
    assert.equal((await fetch(`${url}/v1/models`)).status, 401);
    const r = await post(url, '/v1/chat/completions', { messages: USER, max_tokens: 2 }, { Authorization: 'Bearer k' });
    assert.equal(r.status, 200, r.text);
    child.kill('SIGINT');
    assert.equal(await exited, 0, out);
  } finally {
    fs.rmSync(cache, { recursive: true, force: true });
  }
});
