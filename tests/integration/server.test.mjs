// server.test.mjs — `glimpse serve` from the outside, as its users drive it:
// the official openai client, curl (JSON and both multipart forms) and raw
// HTTP. Every response body is validated against api/openapi.yaml.
//
// Fixtures (made by `make check`, see Makefile.am "integration tests"): a
// random tiny text model with an idefics3 mmproj, a PNG and a JPEG of the same
// picture, a PNG too large for the server's pixel limit.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync, mkdtempSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import OpenAI from 'openai';
import {
  startServer, request, curl, fixture, validateResponse, validateSchema, parseSSE, metric, SRCDIR, GLIMPSE,
} from './helpers.mjs';

const KEY = 'sk-test-0123456789';
const AUTH = { Authorization: `Bearer ${KEY}` };
const MODEL = fixture('server-tiny.gguf');
const MMPROJ = fixture('server-tiny-mmproj.gguf');
const png = readFileSync(fixture('server-shapes.png'));
const jpg = readFileSync(fixture('server-shapes.jpg'));
const big = readFileSync(fixture('server-big.png'));
const uri = (buf, type = 'image/png') => `data:${type};base64,${buf.toString('base64')}`;
const PROMPT = 'What shapes do you see?';
const tmp = mkdtempSync(path.join(os.tmpdir(), 'glimpse-it-'));

const SERVER_ARGS = ['--model', MODEL, '--mmproj', MMPROJ, '--api-key', KEY, '--threads', '2',
  '--ctx-size', '2048', '--max-body-mb', '1', '--max-images', '3', '--max-image-pixels', '100000',
  '--sse-keepalive-ms', '200', '--log-level', 'warn'];
// The same on a wider model (server-slow, a few ms a token) for the tests that need a
// stream to outlast a second: on the tiny model 8 choices of 1500 tokens end in well
// under a second on an idle machine.
const SLOW_ARGS = ['--model', fixture('server-slow.gguf'), '--mmproj', fixture('server-slow-mmproj.gguf')]
  .concat(SERVER_ARGS.slice(4));

let srv, client, modelId, ref;

const imageMessages = (img = uri(png), prompt = PROMPT) => [{
  role: 'user',
  content: [{ type: 'image_url', image_url: { url: img } }, { type: 'text', text: prompt }],
}];

const post = (body, headers = {}) => request(srv.base, 'POST', '/v1/chat/completions', {
  headers: { 'Content-Type': 'application/json', ...AUTH, ...headers }, body: JSON.stringify(body),
});

before(async () => {
  srv = await startServer(SERVER_ARGS);
  client = new OpenAI({ apiKey: KEY, baseURL: `${srv.base}/v1`, maxRetries: 0, timeout: 60000 });
});

after(async () => {
  assert.equal(await srv.stop(), 0, 'SIGTERM drains and exits 0');
});

test('api/openapi.yaml lints clean with redocly', { timeout: 60000 }, async () => {
  const out = await new Promise((resolve, reject) => {
    execFile(path.join(SRCDIR, 'node_modules/.bin/redocly'), ['lint', 'api/openapi.yaml'],
      { cwd: SRCDIR, env: { ...process.env, REDOCLY_TELEMETRY: 'off', REDOCLY_SUPPRESS_UPDATE_NOTICE: 'true' } },
      (err, stdout, stderr) => (err ? reject(new Error(stdout + stderr)) : resolve(stdout + stderr)));
  });
  assert.match(out, /valid/);
  assert.doesNotMatch(out, /warning|error/i, out);
});

test('health, models and metrics', async () => {
  let r = await request(srv.base, 'GET', '/health');
  assert.equal(r.status, 200);
  assert.deepEqual(validateResponse('/health', 'GET', r), { status: 'ok' });
  r = await request(srv.base, 'GET', '/v1/models', { headers: AUTH });
  const list = validateResponse('/v1/models', 'GET', r);
  assert.equal(list.data.length, 1);
  modelId = list.data[0].id;
  assert.equal(modelId, 'server-tiny');
  r = await request(srv.base, 'GET', `/v1/models/${modelId}`, { headers: AUTH });
  assert.equal(validateResponse('/v1/models/{model}', 'GET', r).id, modelId);
  const models = await client.models.list();
  assert.equal(models.data[0].id, modelId);
  r = await request(srv.base, 'GET', '/metrics', { headers: AUTH });
  assert.equal(r.status, 200);
  validateResponse('/metrics', 'GET', r);
  assert.equal(metric(r.text, 'glimpse_model_ready'), 1);
  assert.equal(metric(r.text, 'glimpse_queue_depth'), 0);
  // CORS: preflight is open and echoes the asked headers
  r = await request(srv.base, 'OPTIONS', '/v1/chat/completions', {
    headers: { Origin: 'http://example.test', 'Access-Control-Request-Method': 'POST',
      'Access-Control-Request-Headers': 'authorization, content-type, x-stainless-os' } });
  assert.equal(r.status, 204);
  assert.equal(r.headers['access-control-allow-origin'], '*');
  assert.match(r.headers['access-control-allow-headers'], /x-stainless-os/);
});

test('openai client: non-streaming with an image', async () => {
  const c = await client.chat.completions.create({
    model: 'server-tiny', messages: imageMessages(), max_tokens: 12, temperature: 0 });
  validateSchema('#/components/schemas/ChatCompletion', c);
  assert.equal(c.object, 'chat.completion');
  assert.equal(c.choices.length, 1);
  assert.ok(['stop', 'length'].includes(c.choices[0].finish_reason));
  assert.ok(c.usage.completion_tokens >= 1 && c.usage.completion_tokens <= 12);
  assert.ok(c.usage.prompt_tokens_details.image_tokens > 0, 'image tokens reported');
  assert.ok(c.usage.prompt_tokens > c.usage.prompt_tokens_details.image_tokens);
  assert.equal(c.usage.total_tokens, c.usage.prompt_tokens + c.usage.completion_tokens);
  ref = c;
  // the same request again is the same greedy answer
  const again = await client.chat.completions.create({
    model: 'server-tiny', messages: imageMessages(), max_tokens: 12, temperature: 0 });
  assert.equal(again.choices[0].message.content, ref.choices[0].message.content);
});

test('openai client: streaming with include_usage equals the non-streaming answer', async () => {
  const stream = await client.chat.completions.create({
    model: 'server-tiny', messages: imageMessages(), max_tokens: 12, temperature: 0,
    stream: true, stream_options: { include_usage: true } });
  const chunks = [];
  for await (const ch of stream) { validateSchema('#/components/schemas/ChatCompletionChunk', ch); chunks.push(ch); }
  assert.equal(chunks[0].choices[0].delta.role, 'assistant');
  const text = chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('');
  assert.equal(text, ref.choices[0].message.content);
  const fin = chunks.filter((c) => c.choices[0]?.finish_reason);
  assert.equal(fin.length, 1);
  assert.equal(fin[0].choices[0].finish_reason, ref.choices[0].finish_reason);
  const last = chunks[chunks.length - 1];
  assert.deepEqual(last.choices, []);
  assert.deepEqual(last.usage, ref.usage);
  for (const c of chunks.slice(0, -1)) assert.equal(c.usage, null);
  // raw: SSE framing, [DONE] at the end, headers for proxies
  const r = await post({ messages: imageMessages(), max_tokens: 12, temperature: 0, stream: true });
  assert.equal(r.status, 200);
  assert.match(r.headers['content-type'], /^text\/event-stream/);
  assert.equal(r.headers['cache-control'], 'no-cache');
  validateResponse('/v1/chat/completions', 'POST', r);
  const sse = parseSSE(r.text);
  assert.ok(sse.done, 'ends with data: [DONE]');
  assert.equal(sse.errors.length, 0);
  assert.equal(sse.chunks.map((c) => c.choices[0].delta.content ?? '').join(''), ref.choices[0].message.content);
  assert.ok(sse.chunks.every((c) => !('usage' in c)), 'no usage field without include_usage');
});

test('openai client: logprobs with top_logprobs', async () => {
  const c = await client.chat.completions.create({
    model: 'server-tiny', messages: imageMessages(), max_tokens: 12, temperature: 0, logprobs: true, top_logprobs: 3 });
  validateSchema('#/components/schemas/ChatCompletion', c);
  const ch = c.choices[0];
  assert.equal(ch.message.content, ref.choices[0].message.content);
  const lp = ch.logprobs.content;
  assert.equal(lp.length, c.usage.completion_tokens);
  for (const t of lp) {
    assert.equal(t.top_logprobs.length, 3);
    assert.ok(t.logprob <= 0);
    const tops = t.top_logprobs.map((a) => a.logprob);
    assert.deepEqual(tops, [...tops].sort((a, b) => b - a));
    assert.deepEqual(t.top_logprobs[0].bytes, t.bytes, 'greedy picks the likeliest token');
    assert.equal(t.top_logprobs[0].logprob, t.logprob);
  }
  if (ch.finish_reason === 'length') {
    const bytes = Buffer.from(lp.flatMap((t) => t.bytes));
    assert.equal(bytes.toString('utf8'), ch.message.content, 'the tokens\' bytes make the text');
  }
  // streaming logprobs: one entry per token chunk
  const stream = await client.chat.completions.create({
    model: 'server-tiny', messages: imageMessages(), max_tokens: 12, temperature: 0, logprobs: true, top_logprobs: 2,
    stream: true });
  const got = [];
  for await (const k of stream) got.push(...(k.choices[0]?.logprobs?.content ?? []));
  assert.deepEqual(got.map((t) => t.bytes), lp.map((t) => t.bytes));
});

test('openai client: n=2 with a seed is reproducible', async () => {
  const req = { model: 'server-tiny', messages: imageMessages(), max_tokens: 10, temperature: 1, seed: 42, n: 2 };
  const a = await client.chat.completions.create(req);
  validateSchema('#/components/schemas/ChatCompletion', a);
  assert.deepEqual(a.choices.map((c) => c.index), [0, 1]);
  const b = await client.chat.completions.create(req);
  assert.deepEqual(b.choices.map((c) => c.message.content), a.choices.map((c) => c.message.content));
  // choice i uses seed + i: choice 1 of seed 42 is choice 0 of seed 43
  const c43 = await client.chat.completions.create({ ...req, n: 1, seed: 43 });
  assert.equal(c43.choices[0].message.content, a.choices[1].message.content);
  // streamed, each choice has its role chunk, content and finish chunk
  const s = await client.chat.completions.create({ ...req, stream: true });
  const text = ['', ''];
  const roles = [0, 0];
  const fins = [0, 0];
  for await (const k of s) {
    const ch = k.choices[0];
    if (ch.delta.role) roles[ch.index]++;
    text[ch.index] += ch.delta.content ?? '';
    if (ch.finish_reason) fins[ch.index]++;
  }
  assert.deepEqual(roles, [1, 1]);
  assert.deepEqual(fins, [1, 1]);
  assert.deepEqual(text, a.choices.map((c) => c.message.content));
});

test('curl: JSON with a JPEG, and a data: URI whose label lies', async () => {
  const body = JSON.stringify({ messages: imageMessages(uri(jpg, 'image/jpeg')), max_tokens: 6, temperature: 0 });
  writeFileSync(path.join(tmp, 'req.json'), body);
  const r = await curl(['-H', `Authorization: Bearer ${KEY}`, '-H', 'Content-Type: application/json',
    '--data-binary', `@${path.join(tmp, 'req.json')}`, `${srv.base}/v1/chat/completions`]);
  assert.equal(r.status, 200, r.text);
  validateResponse('/v1/chat/completions', 'POST', { status: r.status, headers: { 'content-type': 'application/json' }, text: r.text });
  // PNG bytes labelled image/jpeg: the bytes decide, the answer is the PNG's
  const lie = await post({ messages: imageMessages(uri(png, 'image/jpeg')), max_tokens: 12, temperature: 0 });
  assert.equal(lie.status, 200, lie.text);
  assert.equal(validateResponse('/v1/chat/completions', 'POST', lie).choices[0].message.content,
    ref.choices[0].message.content);
});

test('curl: multipart with prompt and image fields equals the JSON request', async () => {
  writeFileSync(path.join(tmp, 'shapes.png'), png);
  const r = await curl(['-H', `Authorization: Bearer ${KEY}`, '-F', `image=@${path.join(tmp, 'shapes.png')}`,
    '--form-string', `prompt=${PROMPT}`, '-F', 'max_tokens=12', '-F', 'temperature=0',
    `${srv.base}/v1/chat/completions`]);
  assert.equal(r.status, 200, r.text);
  const c = validateResponse('/v1/chat/completions', 'POST', { status: 200, headers: { 'content-type': 'application/json' }, text: r.text });
  assert.equal(c.choices[0].message.content, ref.choices[0].message.content);
  assert.deepEqual(c.usage, ref.usage);
});

test('curl: multipart with a request field referencing an upload equals the JSON request', async () => {
  writeFileSync(path.join(tmp, 'shapes.png'), png);
  const reqJson = JSON.stringify({ messages: imageMessages('upload:photo'), max_tokens: 12, temperature: 0 });
  const r = await curl(['-H', `Authorization: Bearer ${KEY}`, '--form-string', `request=${reqJson}`,
    '-F', `photo=@${path.join(tmp, 'shapes.png')};type=image/png`, `${srv.base}/v1/chat/completions`]);
  assert.equal(r.status, 200, r.text);
  const c = JSON.parse(r.text);
  validateSchema('#/components/schemas/ChatCompletion', c);
  assert.equal(c.choices[0].message.content, ref.choices[0].message.content);
  // streaming through a multipart request
  const s = await curl(['-N', '-H', `Authorization: Bearer ${KEY}`, '-F', `image=@${path.join(tmp, 'shapes.png')}`,
    '--form-string', `prompt=${PROMPT}`, '-F', 'max_tokens=12', '-F', 'temperature=0', '-F', 'stream=true',
    `${srv.base}/v1/chat/completions`]);
  const sse = parseSSE(s.text);
  assert.ok(sse.done);
  assert.equal(sse.chunks.map((k) => k.choices[0].delta.content ?? '').join(''), ref.choices[0].message.content);
});

// glimpse ask puts its images before the prompt in one user message, like imageMessages().
const ask = (args) => new Promise((resolve, reject) => {
  execFile(GLIMPSE, ['ask', '--model', MODEL, '--max-tokens', '16', '--temp', '0', '--threads', '2', ...args],
    (err, stdout, stderr) => (err ? reject(new Error(stderr)) : resolve(stdout.replace(/\n$/, ''))));
});

test('greedy answers through HTTP equal glimpse ask, with and without images', async () => {
  for (const prompt of ['Hello there', 'Describe this image.', 'How many circles are there in the image?']) {
    const c = await client.chat.completions.create({
      model: 'server-tiny', messages: [{ role: 'user', content: prompt }], max_tokens: 16, temperature: 0 });
    assert.equal(c.choices[0].message.content, await ask(['--prompt', prompt]), `prompt '${prompt}'`);
  }
  writeFileSync(path.join(tmp, 'shapes.png'), png);
  writeFileSync(path.join(tmp, 'shapes.jpg'), jpg);
  for (const [file, img] of [['shapes.png', uri(png)], ['shapes.jpg', uri(jpg, 'image/jpeg')]]) {
    const c = await client.chat.completions.create({
      model: 'server-tiny', messages: imageMessages(img), max_tokens: 16, temperature: 0 });
    const asked = await ask(['--mmproj', MMPROJ, '--image', path.join(tmp, file), '--prompt', PROMPT]);
    assert.equal(c.choices[0].message.content, asked, file);
  }
  // two images in one message
  const c2 = await client.chat.completions.create({ model: 'server-tiny', max_tokens: 16, temperature: 0,
    messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: uri(png) } },
      { type: 'image_url', image_url: { url: uri(jpg, 'image/jpeg') } }, { type: 'text', text: PROMPT }] }] });
  const asked2 = await ask(['--mmproj', MMPROJ, '--image', path.join(tmp, 'shapes.png'), '--image',
    path.join(tmp, 'shapes.jpg'), '--prompt', PROMPT]);
  assert.equal(c2.choices[0].message.content, asked2);
});

// ---- the bad-request table -------------------------------------------------

const MSG = [{ role: 'user', content: 'hi' }];
const json = (obj) => ({ headers: { 'Content-Type': 'application/json', ...AUTH }, body: JSON.stringify(obj) });
const raw = (body, ctype = 'application/json') => ({ headers: { 'Content-Type': ctype, ...AUTH }, body });
const imgReq = (url, role = 'user') => json({ messages: [{ role, content: [{ type: 'image_url', image_url: { url } }] }] });
const MP = 'multipart/form-data; boundary=XyZ';
const form = (parts) => parts.map(([name, value, file]) => `--XyZ\r\nContent-Disposition: form-data; name="${name}"` +
  `${file ? `; filename="${file}"` : ''}\r\n\r\n${value}\r\n`).join('') + '--XyZ--\r\n';

const BAD = [
  ['broken JSON', raw('{"messages": [')],
  ['empty body', raw('')],
  ['trailing garbage', raw('{"messages":[{"role":"user","content":"hi"}]} x')],
  ['a JSON array', raw('[]'), 400, 'invalid_type'],
  ['no messages', json({ max_tokens: 3 }), 400, 'invalid_type'],
  ['messages not an array', json({ messages: 'hi' }), 400, 'invalid_type'],
  ['empty messages', json({ messages: [] }), 400, 'invalid_type'],
  ['unknown role', json({ messages: [{ role: 'tool', content: 'x' }] }), 400, 'invalid_value'],
  ['content a number', json({ messages: [{ role: 'user', content: 5 }] }), 400, 'invalid_type'],
  ['unknown parameter', json({ messages: MSG, temprature: 0 }), 400, 'unknown_parameter'],
  ['unknown key in a message', json({ messages: [{ role: 'user', content: 'x', colour: 1 }] }), 400, 'unknown_parameter'],
  ['unknown key in a part', json({ messages: [{ role: 'user', content: [{ type: 'text', text: 'a', x: 1 }] }] }), 400, 'unknown_parameter'],
  ['unknown key in image_url', json({ messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: uri(png), size: 1 } }] }] }), 400, 'unknown_parameter'],
  ['unknown part type', json({ messages: [{ role: 'user', content: [{ type: 'input_audio' }] }] }), 400, 'invalid_value'],
  ['temperature a string', json({ messages: MSG, temperature: 'hot' }), 400, 'invalid_type'],
  ['temperature too high', json({ messages: MSG, temperature: 3 }), 400, 'invalid_value'],
  ['max_tokens 0', json({ messages: MSG, max_tokens: 0 }), 400, 'invalid_value'],
  ['max_tokens fractional', json({ messages: MSG, max_tokens: 2.5 }), 400, 'invalid_type'],
  ['max_completion_tokens a string', json({ messages: MSG, max_completion_tokens: '7' }), 400, 'invalid_type'],
  ['n 0', json({ messages: MSG, n: 0 }), 400, 'invalid_value'],
  ['n above --max-n', json({ messages: MSG, n: 100 }), 400, 'invalid_value'],
  ['top_p above 1', json({ messages: MSG, top_p: 1.5 }), 400, 'invalid_value'],
  ['top_k negative', json({ messages: MSG, top_k: -1 }), 400, 'invalid_value'],
  ['repetition_penalty 0', json({ messages: MSG, repetition_penalty: 0 }), 400, 'invalid_value'],
  ['seed fractional', json({ messages: MSG, seed: 1.5 }), 400, 'invalid_type'],
  ['top_logprobs without logprobs', json({ messages: MSG, top_logprobs: 2 }), 400, 'invalid_value'],
  ['top_logprobs 21', json({ messages: MSG, logprobs: true, top_logprobs: 21 }), 400, 'invalid_value'],
  ['five stop strings', json({ messages: MSG, stop: ['a', 'b', 'c', 'd', 'e'] }), 400, 'invalid_value'],
  ['stop a number', json({ messages: MSG, stop: 5 }), 400, 'invalid_type'],
  ['stream a string', json({ messages: MSG, stream: 'yes' }), 400, 'invalid_type'],
  ['stream_options without stream', json({ messages: MSG, stream_options: { include_usage: true } }), 400, 'invalid_value'],
  ['bad base64', imgReq('data:image/png;base64,iVBOR!!!'), 400, 'invalid_base64'],
  ['non-image bytes', imgReq(`data:image/png;base64,${Buffer.from('hello, I am not a picture').toString('base64')}`), 400, 'invalid_image'],
  ['truncated PNG', imgReq(uri(png.subarray(0, 60))), 400, 'invalid_image'],
  ['http URL', imgReq('http://127.0.0.1/secret.png'), 400, 'image_url_not_supported'],
  ['https URL', imgReq('https://example.com/cat.jpg'), 400, 'image_url_not_supported'],
  ['file URL', imgReq('file:///etc/passwd'), 400, 'invalid_image_url'],
  ['data: URI of text', imgReq('data:text/plain;base64,aGVsbG8='), 400, 'invalid_image_url'],
  ['image in an assistant message', imgReq(uri(png), 'assistant'), 400, 'invalid_value'],
  ['too many images', json({ messages: [{ role: 'user', content: [1, 2, 3, 4].map(() => ({ type: 'image_url', image_url: { url: uri(png) } })) }] }), 400, 'too_many_images'],
  ['too many pixels', imgReq(uri(big)), 400, 'image_too_large'],
  ['unknown model', json({ model: 'gpt-4o', messages: MSG }), 404, 'model_not_found'],
  ['multipart without boundary', raw(form([['prompt', 'hi']]), 'multipart/form-data'), 400, 'invalid_multipart'],
  ['multipart cut short', raw(form([['prompt', 'hi']]).slice(0, 40), MP), 400, 'invalid_multipart'],
  ['multipart without prompt', raw(form([['max_tokens', '3']]), MP), 400, 'missing_parameter'],
  ['multipart unknown upload', raw(form([['request', JSON.stringify({ messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'upload:nope' } }] }] })]]), MP), 400, 'invalid_image_url'],
  ['multipart non-image file', raw(form([['prompt', 'hi'], ['image', 'just text', 'a.png']]), MP), 400, 'invalid_image'],
  ['text/plain body', raw('hello', 'text/plain'), 415, 'unsupported_media_type'],
  ['no content type', { headers: AUTH, body: '{}' }, 415, 'unsupported_media_type'],
  ['no API key', { headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ messages: MSG }) }, 401, 'invalid_api_key'],
  ['wrong API key', { headers: { 'Content-Type': 'application/json', Authorization: 'Bearer sk-test-0123456788' }, body: '{}' }, 401, 'invalid_api_key'],
  ['basic auth', { headers: { 'Content-Type': 'application/json', Authorization: `Basic ${KEY}` }, body: '{}' }, 401, 'invalid_api_key'],
  ['key as a prefix', { headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${KEY}x` }, body: '{}' }, 401, 'invalid_api_key'],
  ['GET on chat', { method: 'GET', headers: AUTH }, 405, 'method_not_allowed'],
  ['DELETE on models', { method: 'DELETE', path: '/v1/models', headers: AUTH }, 405, 'method_not_allowed'],
  ['POST on health', { method: 'POST', path: '/health', body: '{}' }, 405, 'method_not_allowed'],
  ['unknown route', { method: 'GET', path: '/v1/embeddings', headers: AUTH }, 404, 'not_found'],
  ['unknown model id', { method: 'GET', path: '/v1/models/nope', headers: AUTH }, 404, 'model_not_found'],
  ['models without a key', { method: 'GET', path: '/v1/models' }, 401, 'invalid_api_key'],
  ['metrics without a key', { method: 'GET', path: '/metrics' }, 401, 'invalid_api_key'],
  ['oversized body (Content-Length)', { headers: { 'Content-Type': 'application/json', ...AUTH }, body: 'x'.repeat(1100000), expectContinue: true }, 413, 'request_too_large'],
  ['oversized body (chunked)', { headers: { 'Content-Type': 'application/json', ...AUTH }, chunks: Array(12).fill('y'.repeat(100000)) }, 413, 'request_too_large'],
];

test(`a table of ${BAD.length} bad requests: right status, OpenAI-shaped error, server keeps serving`, { timeout: 120000 }, async () => {
  assert.ok(BAD.length >= 40);
  for (const [name, opt, status = 400, code = 'invalid_json'] of BAD) {
    const route = opt.path || '/v1/chat/completions';
    const method = opt.method || 'POST';
    const r = await request(srv.base, method, route, opt);
    assert.equal(r.status, status, `${name}: ${r.text}`);
    const specRoute = route.startsWith('/v1/models/') ? '/v1/models/{model}' : route;
    // a 405 is documented under the route's own method; an unknown route has no entry
    const specMethod = status === 405 ? (specRoute === '/v1/chat/completions' ? 'POST' : 'GET') : method;
    const body = status === 404 && route === '/v1/embeddings' ? JSON.parse(r.text)
      : validateResponse(specRoute, specMethod, r);
    validateSchema('#/components/schemas/Error', body);
    assert.equal(body.error.code, code, `${name}: ${r.text}`);
    assert.ok(body.error.message.length > 0);
    if (status === 405) assert.ok(r.headers.allow, `${name}: Allow header`);
    if (status === 401) assert.equal(r.headers['www-authenticate'], 'Bearer');
  }
  // still serving, and still right
  assert.equal((await request(srv.base, 'GET', '/health')).status, 200);
  const c = await client.chat.completions.create({
    model: 'server-tiny', messages: imageMessages(), max_tokens: 12, temperature: 0 });
  assert.equal(c.choices[0].message.content, ref.choices[0].message.content);
  const m = await request(srv.base, 'GET', '/metrics', { headers: AUTH });
  assert.ok(/glimpse_http_requests_total\{route="\/v1\/chat\/completions",code="400"\} \d+/.test(m.text));
});

test('a prompt longer than the context: 400, streaming or not (it is measured before the engine takes it)', async () => {
  const long = [{ role: 'user', content: 'the shapes '.repeat(3000) }];
  for (const stream of [false, true]) {
    const r = await post({ messages: long, max_tokens: 4, stream });
    assert.equal(r.status, 400);
    assert.equal(validateResponse('/v1/chat/completions', 'POST', r).error.code, 'context_length_exceeded');
  }
});

test('32 concurrent clients with images all get the right answer', { timeout: 180000 }, async () => {
  const one = (img) => client.chat.completions.create({
    model: 'server-tiny', messages: imageMessages(img), max_tokens: 8, temperature: 0 });
  const want = { png: (await one(uri(png))).choices[0].message.content,
    jpg: (await one(uri(jpg, 'image/jpeg'))).choices[0].message.content };
  const jobs = Array.from({ length: 32 }, (_, i) => (i % 2 ? 'jpg' : 'png'));
  const got = await Promise.all(jobs.map((kind) => one(kind === 'png' ? uri(png) : uri(jpg, 'image/jpeg'))));
  got.forEach((c, i) => assert.equal(c.choices[0].message.content, want[jobs[i]], `client ${i}`));
  const m = await request(srv.base, 'GET', '/metrics', { headers: AUTH });
  assert.equal(metric(m.text, 'glimpse_queue_depth'), 0);
  assert.equal(metric(m.text, 'glimpse_running'), 0);
});

// Waits until /metrics satisfies pred (bounded).
async function waitMetrics(base, pred, ms = 15000) {
  const deadline = Date.now() + ms;
  let text = '';
  while (Date.now() < deadline) {
    text = (await request(base, 'GET', '/metrics', { headers: AUTH })).text;
    if (pred(text)) return text;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`metrics never matched:\n${text}`);
}

// Starts a long streaming request (8 choices: 8 scheduler sequences) and resolves with
// its socket once the first chunk arrived.
function longStream(base) {
  const body = JSON.stringify({ messages: imageMessages(), max_tokens: 1500, temperature: 1, seed: 7, n: 8, stream: true });
  return new Promise((resolve, reject) => {
    const req = http.request(`${base}/v1/chat/completions`, { method: 'POST',
      headers: { 'Content-Type': 'application/json', ...AUTH } }, (res) => {
      res.on('data', (d) => { if (String(d).includes('data: {')) resolve({ req, res }); });
      res.on('error', () => {});
    });
    req.on('error', () => {});
    req.setTimeout(60000, () => reject(new Error('no first chunk')));
    req.end(body);
  });
}

test('a client hanging up mid-stream frees its slot', { timeout: 60000 }, async () => {
  const before = await request(srv.base, 'GET', '/metrics', { headers: AUTH });
  const cancelled0 = metric(before.text, 'glimpse_jobs_cancelled_total');
  const { req } = await longStream(srv.base);
  await waitMetrics(srv.base, (t) => metric(t, 'glimpse_running') > 0);
  req.destroy();
  const t = await waitMetrics(srv.base, (x) => metric(x, 'glimpse_running') === 0
    && metric(x, 'glimpse_jobs_cancelled_total') > cancelled0 && metric(x, 'glimpse_requests_in_flight') === 0);
  assert.equal(metric(t, 'glimpse_queue_depth'), 0);
  assert.equal(metric(t, 'glimpse_kv_cache_usage_ratio'), 0);
  // the engine is free again
  const c = await client.chat.completions.create({
    model: 'server-tiny', messages: imageMessages(), max_tokens: 12, temperature: 0 });
  assert.equal(c.choices[0].message.content, ref.choices[0].message.content);
});

test('a client hanging up while waiting for a non-streaming answer cancels it', { timeout: 60000 }, async () => {
  const m0 = await request(srv.base, 'GET', '/metrics', { headers: AUTH });
  const cancelled0 = metric(m0.text, 'glimpse_jobs_cancelled_total');
  const req = http.request(`${srv.base}/v1/chat/completions`, { method: 'POST',
    headers: { 'Content-Type': 'application/json', ...AUTH } });
  req.on('error', () => {});
  req.end(JSON.stringify({ messages: imageMessages(), max_tokens: 1500, temperature: 1, seed: 7, n: 8 }));
  await waitMetrics(srv.base, (t) => metric(t, 'glimpse_running') > 0);
  req.destroy();
  await waitMetrics(srv.base, (t) => metric(t, 'glimpse_running') === 0 && metric(t, 'glimpse_queue_depth') === 0
    && metric(t, 'glimpse_jobs_cancelled_total') > cancelled0 && metric(t, 'glimpse_requests_in_flight') === 0);
});

test('a full queue answers 429 with Retry-After; more choices than the queue holds, 400; queued streams get SSE comments; '
  + 'a queued client that leaves frees its place at once', { timeout: 60000 }, async () => {
  // one sequence at a time: the long stream's first choice runs and its 7 others wait,
  // so the second request takes the queue's last place (on SLOW_ARGS' model, so that
  // the running choice does not end first)
  const small = await startServer(SLOW_ARGS.concat(['--queue-size', '8', '--parallel', '1', '--max-n', '16']));
  try {
    // n = 9 needs 9 places of 8 even on an idle server: never 429 (retry), a 400 naming the limit
    const tooMany = await request(small.base, 'POST', '/v1/chat/completions', json({ messages: MSG, max_tokens: 2, n: 9 }));
    assert.equal(tooMany.status, 400, tooMany.text);
    const tooManyErr = validateResponse('/v1/chat/completions', 'POST', tooMany).error;
    assert.equal(tooManyErr.code, 'invalid_value');
    assert.equal(tooManyErr.param, 'n');
    assert.match(tooManyErr.message, /queues at most 8 sequences \(--queue-size\)/);
    const running = await longStream(small.base);
    await waitMetrics(small.base, (t) => metric(t, 'glimpse_running') === 1 && metric(t, 'glimpse_queue_depth') === 7);
    // the second waits in the queue: it hears SSE comments while it waits
    const queuedReq = http.request(`${small.base}/v1/chat/completions`, { method: 'POST',
      headers: { 'Content-Type': 'application/json', ...AUTH } });
    const comment = new Promise((resolve) => queuedReq.on('response', (res) => {
      res.on('data', (d) => { if (String(d).startsWith(':')) resolve(String(d)); });
      res.on('error', () => {});
    }));
    queuedReq.on('error', () => {});
    queuedReq.end(JSON.stringify({ messages: MSG, max_tokens: 4, stream: true }));
    await waitMetrics(small.base, (t) => metric(t, 'glimpse_queue_depth') === 8);
    assert.match(await comment, /^: queued/);
    const r = await request(small.base, 'POST', '/v1/chat/completions', json({ messages: MSG, max_tokens: 2 }));
    assert.equal(r.status, 429);
    assert.equal(r.headers['retry-after'], '1');
    assert.equal(validateResponse('/v1/chat/completions', 'POST', r).error.code, 'rate_limit_exceeded');
    // the queued client leaves: its place is free while the long stream still runs
    const m0 = await request(small.base, 'GET', '/metrics', { headers: AUTH });
    queuedReq.destroy();
    await waitMetrics(small.base, (t) => metric(t, 'glimpse_queue_depth') === 7 && metric(t, 'glimpse_running') === 1
      && metric(t, 'glimpse_jobs_cancelled_total') === metric(m0.text, 'glimpse_jobs_cancelled_total') + 1);
    const again = request(small.base, 'POST', '/v1/chat/completions', json({ messages: MSG, max_tokens: 2 }));
    running.req.destroy();
    assert.equal((await again).status, 200, 'the freed place took a new request');
    await waitMetrics(small.base, (t) => metric(t, 'glimpse_running') === 0 && metric(t, 'glimpse_queue_depth') === 0
      && metric(t, 'glimpse_kv_cache_usage_ratio') === 0);
  } finally {
    assert.equal(await small.stop(), 0);
  }
});

test('SIGTERM: the listener closes at once, --shutdown-timeout cuts the running stream and exits 1', { timeout: 60000 }, async () => {
  // the successful drain (stream completes, /health 503 meanwhile, exit 0) is tests/integration/shutdown.sh
  const d = await startServer(SLOW_ARGS.concat(['--shutdown-timeout', '1']));
  let exited = false;
  try {
    const { res } = await longStream(d.base);
    const ended = new Promise((resolve) => { res.on('end', resolve); res.on('close', resolve); });
    await waitMetrics(d.base, (t) => metric(t, 'glimpse_running') > 0);
    const code = new Promise((resolve) => d.proc.on('exit', resolve));
    d.proc.kill('SIGTERM');
    // a new connection is refused (a load balancer retries such a request on another replica)
    const deadline = Date.now() + 5000;
    let e;
    do { e = await request(d.base, 'GET', '/health').then(() => null, (err) => err); } while (!e && Date.now() < deadline);
    // ECONNRESET too: a connection that raced the listener's close sits in the kernel's
    // backlog and is reset when the socket closes; either way it was not accepted
    assert.ok(['ECONNREFUSED', 'ECONNRESET'].includes(e?.code), `not accepted, got ${e?.code}`);
    await ended;
    assert.equal(await code, 1, 'requests cut off by the timeout: exit 1');
    assert.match(d.log(), /SIGTERM: shutdown timeout, exiting with 1 requests unfinished/);
    exited = true;
  } finally {
    if (!exited) await d.stop();
  }
});

test('while the model loads: /health and chat answer 503; a model that fails to load exits 1', { timeout: 60000 }, async () => {
  // the engine thread blocks opening a FIFO until the test writes to it
  const fifo = path.join(tmp, 'loading.gguf');
  await new Promise((resolve, reject) => execFile('mkfifo', [fifo], (err) => (err ? reject(err) : resolve())));
  const l = await startServer(['--model', fifo, '--api-key', KEY], { waitReady: false });
  const exited = new Promise((resolve) => l.proc.on('exit', resolve));
  try {
    const h = await request(l.base, 'GET', '/health');
    assert.equal(h.status, 503);
    assert.deepEqual(validateResponse('/health', 'GET', h), { status: 'loading' });
    const r = await request(l.base, 'POST', '/v1/chat/completions', json({ messages: MSG }));
    assert.equal(r.status, 503);
    assert.equal(validateResponse('/v1/chat/completions', 'POST', r).error.code, 'model_loading');
    const m = await request(l.base, 'GET', '/metrics', { headers: AUTH });
    assert.equal(metric(m.text, 'glimpse_model_ready'), 0);
    // opening the FIFO lets the load go on; it fails (not a regular file), and
    // the server may close its end before the write: EPIPE is fine
    try { writeFileSync(fifo, 'not a model'); } catch (e) { if (e.code !== 'EPIPE') throw e; }
    assert.equal(await exited, 1);
    assert.match(l.log(), /cannot load the model/);
  } finally {
    if (l.proc.exitCode === null) l.proc.kill('SIGKILL');
  }
});

test('every option has an environment variable and --help documents it', async () => {
  const help = await new Promise((resolve, reject) => {
    execFile(GLIMPSE, ['serve', '--help'], (err, stdout) => (err ? reject(err) : resolve(stdout)));
  });
  const opts = [...help.matchAll(/^\s+--([a-z-]+) /gm)].map((m) => m[1]);
  assert.ok(opts.length >= 15, help);
  for (const o of opts) {
    assert.ok(help.includes(`GLIMPSE_${o.toUpperCase().replaceAll('-', '_')}`), `--${o} has no variable`);
  }
  // the variables work: a server configured only through the environment
  const envSrv = await startServer([], { env: { GLIMPSE_MODEL: MODEL, GLIMPSE_MMPROJ: MMPROJ, GLIMPSE_API_KEY: 'env-key',
    GLIMPSE_MODEL_NAME: 'from-env', GLIMPSE_THREADS: '1' } });
  try {
    const r = await request(envSrv.base, 'GET', '/v1/models', { headers: { Authorization: 'Bearer env-key' } });
    assert.equal(JSON.parse(r.text).data[0].id, 'from-env');
    assert.equal((await request(envSrv.base, 'GET', '/v1/models')).status, 401);
  } finally {
    assert.equal(await envSrv.stop(), 0);
  }
});
