// helpers.mjs — shared by the server's integration tests: start and stop a
// `glimpse serve` on a free loopback port, raw HTTP requests, and validation
// of every response against api/openapi.yaml.
import { spawn, execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import Ajv2020 from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import YAML from 'yaml';

const here = path.dirname(fileURLToPath(import.meta.url));
export const SRCDIR = process.env.GLIMPSE_SRCDIR || path.resolve(here, '../..');
export const FIXTURES = process.env.GLIMPSE_FIXTURES || 'tests/fixtures';
export const GLIMPSE = process.env.GLIMPSE_BIN || './glimpse';
export const fixture = (name) => path.join(FIXTURES, name);

const servers = new Set();
process.on('exit', () => { for (const s of servers) s.kill('SIGKILL'); });

// Starts `glimpse serve --port 0 ...` and resolves once /health says 200.
// The port comes from the "listening on" line, so no port is ever guessed.
export async function startServer(args, { timeoutMs = 30000, env = {}, waitReady = true } = {}) {
  const proc = spawn(GLIMPSE, ['serve', '--host', '127.0.0.1', '--port', '0', ...args],
    { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...env } });
  servers.add(proc);
  let log = '';
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start: ${log}`)), timeoutMs);
    proc.stderr.on('data', (d) => {
      log += d;
      const m = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(log);
      if (m) { clearTimeout(timer); resolve(Number(m[1])); }
    });
    proc.on('exit', (code) => { clearTimeout(timer); reject(new Error(`server exited (${code}): ${log}`)); });
  });
  const base = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + timeoutMs;
  while (waitReady) {
    const r = await fetch(`${base}/health`).catch(() => null);
    if (r && r.status === 200) break;
    if (Date.now() > deadline) throw new Error(`server never became ready: ${log}`);
    await new Promise((res) => setTimeout(res, 50));
  }
  return {
    proc, port, base, log: () => log,
    async stop() {
      if (proc.exitCode !== null) return proc.exitCode;
      const done = new Promise((res) => proc.on('exit', (code) => res(code)));
      proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), 15000);
      const code = await done;
      clearTimeout(t);
      servers.delete(proc);
      if (code !== 0) process.stderr.write(`glimpse serve exited with ${code}; its log:\n${log}\n`);
      return code;
    },
  };
}

// One raw HTTP request (node's http, so any method, header or body can be sent).
// With expectContinue the body is sent only after "100 Continue", so a server
// that answers from the headers alone (413) is heard before the upload.
export function request(base, method, urlPath, { headers = {}, body, expectContinue = false, chunks } = {}) {
  return new Promise((resolve, reject) => {
    const h = expectContinue ? { ...headers, Expect: '100-continue' } : headers;
    const req = http.request(`${base}${urlPath}`, { method, headers: h }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers,
        text: Buffer.concat(chunks).toString('utf8') }));
    });
    req.setTimeout(60000, () => req.destroy(new Error('request timed out')));
    req.on('error', reject);
    if (expectContinue) {
      req.on('continue', () => req.end(body));
    } else if (chunks) { // chunked transfer encoding: no Content-Length up front
      for (const c of chunks) req.write(c);
      req.end();
    } else {
      if (body !== undefined) req.write(body);
      req.end();
    }
  });
}

export function curl(args) {
  return new Promise((resolve, reject) => {
    execFile('curl', ['-sS', '--max-time', '60', '-w', '\n%{http_code}', ...args],
      { maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
        if (err) return reject(new Error(`curl failed: ${stderr}`));
        const i = stdout.lastIndexOf('\n');
        resolve({ status: Number(stdout.slice(i + 1)), text: stdout.slice(0, i) });
      });
  });
}

// ---- api/openapi.yaml -------------------------------------------------------

export const spec = YAML.parse(readFileSync(path.join(SRCDIR, 'api/openapi.yaml'), 'utf8'));
const ajv = new Ajv2020({ strict: false, allErrors: true });
addFormats(ajv);
ajv.addSchema({ ...spec, $id: 'openapi.json' });
const compiled = new Map();

function schemaFor(ref) {
  if (!compiled.has(ref)) compiled.set(ref, ajv.compile({ $ref: `openapi.json${ref}` }));
  return compiled.get(ref);
}

// The spec's response object for a route template, method and status.
function responseSpec(route, method, status) {
  const op = spec.paths[route]?.[method.toLowerCase()];
  if (!op) throw new Error(`${method} ${route} is not in api/openapi.yaml`);
  let r = op.responses[String(status)];
  if (!r) throw new Error(`${method} ${route}: status ${status} is not documented`);
  if (r.$ref) r = spec.components.responses[r.$ref.split('/').pop()];
  return r;
}

// Validates one JSON value against a schema pointer such as '#/components/schemas/ChatCompletion'.
export function validateSchema(ref, value) {
  const v = schemaFor(ref);
  if (!v(value)) throw new Error(`does not match ${ref}: ${ajv.errorsText(v.errors)}\n${JSON.stringify(value).slice(0, 2000)}`);
}

// Checks a response (status, content type, body) against the spec; returns the parsed body.
export function validateResponse(route, method, res) {
  const r = responseSpec(route, method, res.status);
  const ctype = String(res.headers['content-type'] || '').split(';')[0].trim();
  const media = r.content?.[ctype];
  if (!media) throw new Error(`${method} ${route} ${res.status}: content type '${ctype}' is not documented`);
  if (ctype !== 'application/json') return res.text;
  const body = JSON.parse(res.text);
  const ref = media.schema.$ref;
  validateSchema(ref, body);
  return body;
}

// Splits an SSE body into its data payloads (comments dropped); checks each
// against the chunk or error schema. Returns { chunks, done, errors, comments }.
export function parseSSE(text) {
  const out = { chunks: [], done: false, errors: [], comments: 0 };
  for (const block of text.split('\n\n')) {
    if (!block) continue;
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) { out.comments++; continue; }
      if (!line.startsWith('data: ')) throw new Error(`bad SSE line: ${line}`);
      const data = line.slice(6);
      if (data === '[DONE]') { out.done = true; continue; }
      if (out.done) throw new Error('data after [DONE]');
      const obj = JSON.parse(data);
      if (obj.error) { validateSchema('#/components/schemas/Error', obj); out.errors.push(obj); } else {
        validateSchema('#/components/schemas/ChatCompletionChunk', obj);
        out.chunks.push(obj);
      }
    }
  }
  return out;
}

// A metric's value from /metrics text (the first line whose name and labels match).
export function metric(text, name) {
  for (const line of text.split('\n')) {
    if (line.startsWith(`${name} `)) return Number(line.slice(name.length + 1));
  }
  return undefined;
}
