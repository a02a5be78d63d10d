// The AI SDK (`ai` generateImage) with @ai-sdk/fal, configured only with baseURL and apiKey.
// It POSTs {baseURL}/{modelId} (sync, no queue) with "Authorization: Key <key>", one call per
// image, then GETs each images[].url: allowed only when that URL has the same origin as baseURL
// (or is a data: URI); any other private/loopback address is refused by the SDK.
import assert from "node:assert/strict";
import { before, describe, test } from "node:test";
import { APICallError, generateImage } from "ai";
import { createFal } from "@ai-sdk/fal";
import { API_KEY, BASE_URL, FAL_EDIT_ENDPOINT, FAL_ENDPOINT, TIMEOUT, assertPng, serverPng } from "./helpers.mjs";

const fal = createFal({ baseURL: BASE_URL, apiKey: API_KEY });

describe("ai + @ai-sdk/fal", { timeout: TIMEOUT }, () => {
  let refs;
  before(async () => {
    refs = await Promise.all([serverPng(96, 64, 1), serverPng(64, 64, 2)]);
  });

  test("generateImage: size -> image_size, seed passed through, image URL fetched", async () => {
    const { images, calls } = await generateImage({
      model: fal.image(FAL_ENDPOINT),
      prompt: "a lighthouse at dusk",
      size: "128x96",
      seed: 42,
    });
    assert.equal(images.length, 1);
    assert.equal(images[0].mediaType, "image/png");
    assertPng(images[0].uint8Array, 128, 96);
    const meta = calls[0].providerMetadata.fal; // the output's fields other than images and prompt
    assert.equal(meta.seed, 42);
    assert.equal(meta.images[0].width, 128);
    assert.equal(meta.images[0].height, 96);
    assert.equal(typeof meta.images[0].nsfw, "boolean"); // from has_nsfw_concepts
  });

  test("edit with several images (providerOptions.fal.useMultipleImages -> image_urls)", async () => {
    const { image } = await generateImage({
      model: fal.image(FAL_EDIT_ENDPOINT),
      prompt: { text: "put them together", images: refs.map((png) => new Uint8Array(png)) },
      providerOptions: { fal: { useMultipleImages: true } },
    });
    assertPng(image.uint8Array, 96, 64);
  });

  test("edit with the SDK's default single image_url", async () => {
    const { image } = await generateImage({
      model: fal.image(FAL_EDIT_ENDPOINT),
      prompt: { text: "make it blue", images: [new Uint8Array(refs[0])] },
    });
    assertPng(image.uint8Array, 96, 64);
  });

  test("syncMode: images returned as data URIs are decoded", async () => {
    const { image } = await generateImage({
      model: fal.image(FAL_ENDPOINT),
      prompt: "a red fox",
      size: "64x64",
      providerOptions: { fal: { syncMode: true } },
    });
    assertPng(image.uint8Array, 64, 64);
  });

  test("a refused request surfaces as APICallError 422", async () => {
    await assert.rejects(
      generateImage({ model: fal.image(FAL_ENDPOINT), prompt: "x", size: "100x100", maxRetries: 0 }),
      (error) => {
        assert.ok(APICallError.isInstance(error), `${error?.name}: ${error?.message}`);
        assert.equal(error.statusCode, 422);
        return true;
      },
    );
  });
});
