// The AI SDK (`ai` generateImage) through @ai-sdk/black-forest-labs, configured only with baseURL and
// apiKey. The image model POSTs {baseURL}/{modelId} (e.g. /v1/flux-2-klein-4b) with the key in `x-key`
// and BFL's body {prompt, seed, aspect_ratio, width, height, input_image.., output_format, ...}, follows
// the answer's polling_url until status Ready, then downloads result.sample.
import assert from "node:assert/strict";
import { before, describe, test } from "node:test";
import { createBlackForestLabs } from "@ai-sdk/black-forest-labs";
import { generateImage } from "ai";
import { API_KEY, BASE_URL, TIMEOUT, assertPng } from "./helpers.mjs";

const bfl = createBlackForestLabs({ baseURL: `${BASE_URL}/v1`, apiKey: API_KEY });
const fast = { blackForestLabs: { outputFormat: "png", pollIntervalMillis: 100 } };

describe("ai + @ai-sdk/black-forest-labs (createBlackForestLabs)", { timeout: TIMEOUT }, () => {
  let reference;
  before(async () => {
    const { image } = await generateImage({
      model: bfl.image("flux-2-klein-4b"), prompt: "a cat", size: "96x64", seed: 1, providerOptions: fast,
    });
    reference = image.uint8Array;
  });

  test("size and seed: a PNG of the asked size, the seed in providerMetadata", async () => {
    const { image, providerMetadata } = await generateImage({
      model: bfl.image("flux-2-klein-4b"), prompt: "a lighthouse at dusk", size: "128x96", seed: 9,
      providerOptions: fast,
    });
    assertPng(image.uint8Array, 128, 96);
    assert.equal(providerMetadata.blackForestLabs.images[0].seed, 9);
  });

  test("edit: prompt { text, images } -> input_image; width and height options", async () => {
    const { image } = await generateImage({
      model: bfl.image("flux-2-klein-4b"),
      prompt: { text: "the cat in snow", images: [reference] },
      providerOptions: { blackForestLabs: { ...fast.blackForestLabs, width: 256, height: 256, steps: 4 } },
    });
    assertPng(image.uint8Array, 256, 256);
  });

  test("a refused request surfaces with the server's message naming the field", async () => {
    await assert.rejects(
      generateImage({
        model: bfl.image("flux-2-klein-4b"), prompt: "x", size: "100x100", maxRetries: 0,
      }),
      (error) => {
        assert.equal(error.statusCode, 422, `${error?.name}: ${error?.message}`);
        assert.match(error.message, /width: width 100 is not a multiple of 16/);
        return true;
      },
    );
  });

  test("a model not served is a 404 naming it and the served ones", async () => {
    await assert.rejects(
      generateImage({ model: bfl.image("flux-2-klein-base-9b"), prompt: "x", maxRetries: 0 }),
      (error) => {
        assert.equal(error.statusCode, 404, `${error?.name}: ${error?.message}`);
        assert.match(error.message, /flux-2-klein-base-9b.*\/v1\/flux-2-klein-4b/);
        return true;
      },
    );
  });
});
