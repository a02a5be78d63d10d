// The AI SDK (`ai` generateImage) through its gateway provider, @ai-sdk/gateway, configured only with
// baseURL and apiKey and set as the default provider, so a plain model id string such as
// 'bfl/flux-2-klein-9b' resolves to it (ai reads globalThis.AI_SDK_DEFAULT_PROVIDER).
// The image model POSTs {baseURL}/image-model with the model in the ai-model-id header and
// "Authorization: Bearer <key>"; the body is {prompt, n, size?, aspectRatio?, seed?, providerOptions?,
// files?, mask?}, the answer {images: [base64], warnings, providerMetadata, usage}.
//
// The model page's snippet (vercel.com/ai-gateway/models) imports experimental_generateImage, which
// ai 7 no longer exports (it is generateImage); the rest runs as the page writes it.
import assert from "node:assert/strict";
import { before, describe, test } from "node:test";
import { createGateway, generateImage } from "ai";
import { API_KEY, BASE_URL, TIMEOUT, assertPng, pngSize, serverPng } from "./helpers.mjs";

const gateway = createGateway({ baseURL: `${BASE_URL}/v1/ai`, apiKey: API_KEY });

describe("ai + @ai-sdk/gateway (createGateway, as the default provider)", { timeout: TIMEOUT }, () => {
  let refs;
  before(async () => {
    refs = await Promise.all([serverPng(96, 64, 1), serverPng(64, 64, 2)]);
    globalThis.AI_SDK_DEFAULT_PROVIDER = gateway;
  });

  test("the model page's snippet: a model id string, a PNG", async () => {
    const result = await generateImage({
      model: 'bfl/flux-2-klein-9b',
      prompt: 'A red balloon on a wooden table.'
    });
    assert.equal(result.image.mediaType, "image/png");
    assert.ok(pngSize(result.image.uint8Array).width >= 64);
  });

  test("size, n and seed in one call; seed per image in providerMetadata; usage", async () => {
    const { images, responses, providerMetadata, usage } = await generateImage({
      model: "bfl/flux-2-klein-4b",
      prompt: "a lighthouse at dusk",
      size: "128x96",
      n: 2,
      seed: 9,
    });
    assert.equal(responses.length, 1);
    assert.equal(images.length, 2);
    for (const image of images) assertPng(image.uint8Array, 128, 96);
    assert.deepEqual(providerMetadata.kleinserve.images.map((entry) => entry.seed), [9, 10]);
    assert.equal(usage.totalTokens, usage.inputTokens + usage.outputTokens);
  });

  test("edit: prompt { text, images } -> files; first image's size; bfl options", async () => {
    const { image, warnings } = await generateImage({
      model: gateway.imageModel("bfl/flux-2-klein-4b"),
      prompt: { text: "put them together", images: refs.map((png) => new Uint8Array(png)) },
      providerOptions: { bfl: { steps: 4 } },
    });
    assertPng(image.uint8Array, 96, 64);
    assert.deepEqual(warnings, []);
  });

  test("a refused request surfaces as the gateway's error with the server's message", async () => {
    await assert.rejects(
      generateImage({ model: "bfl/flux-2-klein-4b", prompt: "x", size: "100x100", maxRetries: 0 }),
      (error) => {
        assert.equal(error.name, "GatewayInvalidRequestError", `${error?.name}: ${error?.message}`);
        assert.equal(error.statusCode, 400);
        assert.match(error.message, /^size: width 100 is not a multiple of 16/);
        return true;
      },
    );
  });

  test("a model not served is GatewayModelNotFoundError naming it", async () => {
    await assert.rejects(
      generateImage({ model: "bfl/flux-2-klein-base-9b", prompt: "x", maxRetries: 0 }),
      (error) => {
        assert.equal(error.name, "GatewayModelNotFoundError", `${error?.name}: ${error?.message}`);
        assert.equal(error.modelId, "bfl/flux-2-klein-base-9b");
        assert.match(error.message, /served: .*bfl\/flux-2-klein-9b/);
        return true;
      },
    );
  });
});
