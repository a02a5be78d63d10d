// The official `openai` Node client, unmodified, configured only with baseURL and apiKey.
import assert from "node:assert/strict";
import { before, describe, test } from "node:test";
import OpenAI, { toFile } from "openai";
import { API_KEY, BASE_URL, MODEL, TIMEOUT, assertPng, dataUri, fetchBytes, serverPng } from "./helpers.mjs";

const client = new OpenAI({ baseURL: `${BASE_URL}/v1`, apiKey: API_KEY });

/** The PNG bytes of a data[] entry's b64_json (which must be there: the clients read it). */
function b64Png(image) {
  assert.equal(typeof image?.b64_json, "string", "data[].b64_json missing");
  return Buffer.from(image.b64_json, "base64");
}

function assertUsage(usage) {
  assert.ok(usage, "response has no usage");
  for (const key of ["input_tokens", "output_tokens", "total_tokens"]) {
    assert.equal(typeof usage[key], "number", `usage.${key}`);
  }
  assert.equal(usage.total_tokens, usage.input_tokens + usage.output_tokens);
  assert.equal(typeof usage.input_tokens_details?.text_tokens, "number", "usage.input_tokens_details.text_tokens");
  assert.equal(typeof usage.input_tokens_details?.image_tokens, "number", "usage.input_tokens_details.image_tokens");
}

describe("openai images.generate", { timeout: TIMEOUT }, () => {
  test("response_format omitted: b64_json and url, usage, _request_id", async () => {
    const result = await client.images.generate({ model: MODEL, prompt: "a lighthouse at dusk", size: "64x64" });
    assert.equal(result.data.length, 1);
    const [image] = result.data;
    assertPng(b64Png(image), 64, 64);
    assert.match(image.url ?? "", /^https?:\/\//, "data[0].url missing");
    assertPng(await fetchBytes(image.url), 64, 64);
    assertUsage(result.usage);
    assert.equal(typeof result._request_id, "string", "no x-request-id header");
    assert.ok(result._request_id.length > 0);
  });

  test("non-square size and n=2: width x height, one entry per image", async () => {
    const result = await client.images.generate({ model: MODEL, prompt: "a red fox", size: "128x96", n: 2 });
    assert.equal(result.data.length, 2);
    for (const image of result.data) assertPng(b64Png(image), 128, 96);
    assert.ok(result._request_id);
  });
});

describe("openai streamed images", { timeout: TIMEOUT }, () => {
  test("stream: true, partial_images: 2 -> two partial_image events, then completed with usage", async () => {
    const stream = await client.images.generate({
      model: MODEL, prompt: "a lighthouse at dusk", size: "96x64", stream: true, partial_images: 2,
    });
    const events = [];
    for await (const event of stream) events.push(event);
    assert.deepEqual(
      events.map((event) => event.type),
      ["image_generation.partial_image", "image_generation.partial_image", "image_generation.completed"],
    );
    assert.deepEqual(events.slice(0, 2).map((event) => event.partial_image_index), [0, 1]);
    for (const event of events) {
      assert.equal(event.size, "96x64");
      assert.equal(event.output_format, "png");
      assertPng(Buffer.from(event.b64_json, "base64"), 96, 64);
    }
    assertUsage(events[2].usage);
  });

  test("a JSON edit with a data: URL, streamed -> image_edit events", async () => {
    const png = await serverPng(64, 96, 4);
    const stream = await client.post("/images/edits", {
      body: { model: MODEL, prompt: "make it blue", images: [{ image_url: dataUri(png) }], stream: true },
      stream: true,
    });
    const events = [];
    for await (const event of stream) events.push(event);
    assert.deepEqual(events.map((event) => event.type), ["image_edit.completed"]);
    assertPng(Buffer.from(events[0].b64_json, "base64"), 64, 96);
  });
});

describe("openai images.edit", { timeout: TIMEOUT }, () => {
  let pngs;
  before(async () => {
    pngs = await Promise.all([serverPng(96, 64, 1), serverPng(64, 64, 2), serverPng(64, 96, 3)]);
  });

  test("three images via toFile (image[]), size omitted: output takes the first image's size", async () => {
    const image = await Promise.all(
      pngs.map((png, i) => toFile(png, `ref-${i}.png`, { type: "image/png" })),
    );
    const result = await client.images.edit({ model: MODEL, prompt: "combine them", image });
    assert.equal(result.data.length, 1);
    assertPng(b64Png(result.data[0]), 96, 64);
    assertUsage(result.usage);
    assert.ok(result._request_id);
  });

  test("one image (image), explicit size, no content type on the part", async () => {
    const image = await toFile(pngs[2], "single.png"); // sent as application/octet-stream
    const result = await client.images.edit({ model: MODEL, prompt: "make it blue", image, size: "64x64" });
    assertPng(b64Png(result.data[0]), 64, 64);
  });
});

describe("openai errors", { timeout: TIMEOUT }, () => {
  async function rejection(promise) {
    try {
      await promise;
    } catch (error) {
      return error;
    }
    assert.fail("expected the request to be refused");
  }

  test("size not a multiple of 16 -> BadRequestError 400, param size", async () => {
    const error = await rejection(
      client.images.generate({ model: MODEL, prompt: "x", size: "100x100" }, { maxRetries: 0 }),
    );
    assert.ok(error instanceof OpenAI.BadRequestError, `${error?.constructor?.name}: ${error?.message}`);
    assert.ok(error instanceof OpenAI.APIError);
    assert.equal(error.status, 400);
    assert.equal(error.param, "size");
    assert.equal(error.type, "invalid_request_error");
    assert.ok(error.requestID, "error response has no x-request-id");
  });

  test("n above the limit -> 400, param n", async () => {
    const error = await rejection(
      client.images.generate({ model: MODEL, prompt: "x", size: "64x64", n: 9 }, { maxRetries: 0 }),
    );
    assert.ok(error instanceof OpenAI.BadRequestError, `${error?.constructor?.name}: ${error?.message}`);
    assert.equal(error.status, 400);
    assert.equal(error.param, "n");
  });

  test("unknown model -> NotFoundError 404 naming the served model", async () => {
    const error = await rejection(
      client.images.generate({ model: "no-such-model", prompt: "x", size: "64x64" }, { maxRetries: 0 }),
    );
    assert.ok(error instanceof OpenAI.NotFoundError, `${error?.constructor?.name}: ${error?.message}`);
    assert.equal(error.status, 404);
    assert.match(error.message, new RegExp(MODEL.replaceAll(".", "\\.")));
  });
});
