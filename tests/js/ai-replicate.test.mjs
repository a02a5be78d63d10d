// The AI SDK (`ai` generateImage) through @ai-sdk/replicate, configured only with baseURL and apiToken. Its
// image model POSTs {baseURL}/models/{owner}/{name}/predictions with `prefer: wait` and
// {input: {prompt, aspect_ratio, size, seed, num_outputs, input_image, input_image_2..}}, reads `output`
// from the answer without polling, and downloads each URL.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { createReplicate } from "@ai-sdk/replicate";
import { generateImage } from "ai";
import { API_KEY, BASE_URL, TIMEOUT, assertPng, serverPng } from "./helpers.mjs";

const replicate = createReplicate({ baseURL: `${BASE_URL}/v1`, apiToken: API_KEY });
const MODEL = "black-forest-labs/flux-2-klein-4b";
const png = { replicate: { output_format: "png" } };

describe("ai + @ai-sdk/replicate (createReplicate)", { timeout: TIMEOUT }, () => {
  test("size and seed: a PNG of the asked size", async () => {
    const { image } = await generateImage({
      model: replicate.image(MODEL), prompt: "a lighthouse at dusk", size: "128x96", seed: 9, providerOptions: png,
    });
    assertPng(image.uint8Array, 128, 96);
  });

  test("n: 2 -> num_outputs, two images", async () => {
    const { images } = await generateImage({
      model: replicate.image(MODEL), prompt: "two kites", size: "64x64", n: 2, providerOptions: png,
    });
    assert.equal(images.length, 2);
    for (const image of images) assertPng(image.uint8Array, 64, 64);
  });

  test("edit: prompt { text, images } -> input_image, input_image_2", async () => {
    const first = await serverPng(96, 64, 1);
    const second = await serverPng(64, 64, 2);
    const { image } = await generateImage({
      model: replicate.image(MODEL), prompt: { text: "the two in snow", images: [first, second] },
      size: "64x64", providerOptions: png,
    });
    assertPng(image.uint8Array, 64, 64);
  });

  test("a refused request surfaces with the server's detail naming the field", async () => {
    await assert.rejects(
      generateImage({ model: replicate.image(MODEL), prompt: "x", size: "100x100", maxRetries: 0 }),
      (error) => {
        assert.equal(error.statusCode, 422, `${error?.name}: ${error?.message}`);
        assert.match(error.message, /input\.size: width 100 is not a multiple of 16/);
        return true;
      },
    );
  });
});
