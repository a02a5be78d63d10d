// The AI SDK (`ai` generateImage) over the OpenAI Images API: @ai-sdk/openai and
// @ai-sdk/openai-compatible, configured only with baseURL and apiKey.
//
// For an unknown model id @ai-sdk/openai sends response_format "b64_json" on generations, sends no
// response_format on edits, requires data[].b64_json in both, and makes one call per image
// (maxImagesPerCall 1). @ai-sdk/openai-compatible never sends response_format, accepts b64_json or
// url, and sends n (up to 10) in one call.
import assert from "node:assert/strict";
import { before, describe, test } from "node:test";
import { APICallError, generateImage } from "ai";
import { createOpenAI } from "@ai-sdk/openai";
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { API_KEY, BASE_URL, MODEL, TIMEOUT, assertPng, serverPng } from "./helpers.mjs";

const openai = createOpenAI({ baseURL: `${BASE_URL}/v1`, apiKey: API_KEY });
const compatible = createOpenAICompatible({ name: "kleinserve", baseURL: `${BASE_URL}/v1`, apiKey: API_KEY });

let refs;
before(async () => {
  refs = await Promise.all([serverPng(96, 64, 1), serverPng(64, 64, 2)]);
});

describe("ai + @ai-sdk/openai", { timeout: TIMEOUT }, () => {
  test("generateImage: PNG of the requested size, usage", async () => {
    const { images, usage, responses } = await generateImage({
      model: openai.image(MODEL),
      prompt: "a lighthouse at dusk",
      size: "128x96",
      n: 2, // two calls of n=1
    });
    assert.equal(images.length, 2);
    for (const image of images) {
      assert.equal(image.mediaType, "image/png");
      assertPng(image.uint8Array, 128, 96);
    }
    assert.equal(typeof usage.inputTokens, "number", "no usage in the response");
    assert.equal(typeof usage.outputTokens, "number");
    assert.equal(usage.totalTokens, usage.inputTokens + usage.outputTokens);
    assert.equal(responses.length, 2);
    assert.ok(responses[0].headers["x-request-id"], "no x-request-id header");
  });

  test("edit: prompt { text, images } -> multipart /images/edits; first image's size", async () => {
    const { image } = await generateImage({
      model: openai.image(MODEL),
      prompt: { text: "put them together", images: refs.map((png) => new Uint8Array(png)) },
    });
    assert.equal(image.mediaType, "image/png");
    assertPng(image.uint8Array, 96, 64);
  });

  test("a refused request surfaces as APICallError 400 with the OpenAI error body", async () => {
    await assert.rejects(
      generateImage({ model: openai.image(MODEL), prompt: "x", size: "100x100", maxRetries: 0 }),
      (error) => {
        assert.ok(APICallError.isInstance(error), `${error?.name}: ${error?.message}`);
        assert.equal(error.statusCode, 400);
        assert.equal(error.isRetryable, false);
        assert.equal(error.data?.error?.param, "size");
        return true;
      },
    );
  });
});

describe("ai + @ai-sdk/openai-compatible", { timeout: TIMEOUT }, () => {
  test("generateImage: n=2 in one call, provider options passed through as body fields", async () => {
    const { images, responses } = await generateImage({
      model: compatible.imageModel(MODEL),
      prompt: "a red fox",
      size: "64x64",
      n: 2,
      providerOptions: { kleinserve: { seed: 11, num_inference_steps: 4 } },
    });
    assert.equal(responses.length, 1);
    assert.equal(images.length, 2);
    for (const image of images) assertPng(image.uint8Array, 64, 64);
  });

  test("edit: two images as image[]; first image's size", async () => {
    const { image } = await generateImage({
      model: compatible.imageModel(MODEL),
      prompt: { text: "put them together", images: refs.map((png) => new Uint8Array(png)) },
    });
    assertPng(image.uint8Array, 96, 64);
  });
});
