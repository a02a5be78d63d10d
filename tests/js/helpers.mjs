// Shared helpers for the JS client suite. Not a test file (node --test only picks *.test.mjs).
//
// The server under test comes from the environment:
//   KLEINSERVE_URL      e.g. http://127.0.0.1:8000 (required)
//   KLEINSERVE_API_KEY  sent by every client (optional; default "unused", fine for an open server)
import assert from "node:assert/strict";

if (!process.env.KLEINSERVE_URL) {
  throw new Error(
    "KLEINSERVE_URL is not set: start a server (e.g. `kleinserve serve --demo --port 18765`) " +
      "and run `KLEINSERVE_URL=http://127.0.0.1:18765 node --test tests/js/`",
  );
}

export const BASE_URL = process.env.KLEINSERVE_URL.replace(/\/+$/, "");
export const API_KEY = process.env.KLEINSERVE_API_KEY || "unused";
export const MODEL = "flux.2-klein-4b";
export const FAL_ENDPOINT = "fal-ai/flux-2/klein/4b";
export const FAL_EDIT_ENDPOINT = "fal-ai/flux-2/klein/4b/edit";
export const TIMEOUT = 120_000; // per test; the demo model takes about a second an image on CPU

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/** Width and height from a PNG's IHDR chunk; fails unless `bytes` is a PNG. */
export function pngSize(bytes) {
  const buf = Buffer.from(bytes); // Buffer, Uint8Array or ArrayBuffer
  assert.ok(buf.length > 24, `too short for a PNG (${buf.length} bytes)`);
  assert.deepEqual(buf.subarray(0, 8), PNG_SIGNATURE, "not a PNG (bad signature)");
  assert.equal(buf.toString("latin1", 12, 16), "IHDR", "not a PNG (first chunk is not IHDR)");
  return { width: buf.readUInt32BE(16), height: buf.readUInt32BE(20) };
}

/** Asserts `bytes` is a PNG of exactly width x height. */
export function assertPng(bytes, width, height) {
  assert.deepEqual(pngSize(bytes), { width, height });
}

/** Bytes of an http(s) or data: URL (a data: URI is decoded locally). */
export async function fetchBytes(url) {
  if (url.startsWith("data:")) {
    const comma = url.indexOf(",");
    assert.ok(comma > 0 && url.slice(0, comma).endsWith(";base64"), `not a base64 data URI: ${url.slice(0, 40)}`);
    return Buffer.from(url.slice(comma + 1), "base64");
  }
  const response = await fetch(url);
  assert.equal(response.status, 200, `GET ${url} -> ${response.status}`);
  return Buffer.from(await response.arrayBuffer());
}

export const dataUri = (png) => `data:image/png;base64,${Buffer.from(png).toString("base64")}`;

/**
 * A PNG of the given size made by the server itself, with plain fetch (no client under test),
 * to use as an edit input.
 */
export async function serverPng(width, height, seed = 1) {
  const response = await fetch(`${BASE_URL}/v1/images/generations`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${API_KEY}` },
    body: JSON.stringify({
      model: MODEL,
      prompt: `reference ${width}x${height}`,
      size: `${width}x${height}`,
      response_format: "b64_json",
      seed,
    }),
  });
  const body = await response.json();
  assert.equal(response.status, 200, JSON.stringify(body));
  const png = Buffer.from(body.data[0].b64_json, "base64");
  assertPng(png, width, height);
  return png;
}

/** Every string in a JSON-like value, depth first. */
export function* strings(value) {
  if (typeof value === "string") yield value;
  else if (Array.isArray(value)) for (const v of value) yield* strings(v);
  else if (value && typeof value === "object") for (const v of Object.values(value)) yield* strings(v);
}

/** Polls `fn` every `intervalMs` until it returns a truthy value (returned) or `timeoutMs` passes. */
export async function until(fn, { timeoutMs = 60_000, intervalMs = 100, what = "condition" } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await fn();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}
