// The replicate npm client, configured only through its documented options: new Replicate({ auth, baseUrl }).
// run() blocks with `Prefer: wait` and polls on while the answer says "starting"; predictions.create / get
// follow a prediction; a wrong input surfaces as the client's ApiError with our problem+json detail.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import Replicate from "replicate";
import { API_KEY, BASE_URL, TIMEOUT, fetchBytes, pngSize } from "./helpers.mjs";

const replicate = new Replicate({ auth: API_KEY, baseUrl: `${BASE_URL}/v1` });
const MODEL = "black-forest-labs/flux-2-klein-4b";
const SMALL = { size: "96x64", output_format: "png" };

describe("replicate (new Replicate({ baseUrl }))", { timeout: TIMEOUT }, () => {
  test("run(): the output URLs of a PNG of the asked size", async () => {
    const output = await replicate.run(MODEL, { input: { prompt: "a lighthouse", seed: 4, ...SMALL } });
    assert.equal(output.length, 1);
    assert.deepEqual(pngSize(await fetchBytes(String(output[0]))), { width: 96, height: 64 });
  });

  test("run() with wait { timeout: 1 } behind a slower job still returns the output", async () => {
    const slow = { prompt: "slow", output_megapixels: "0.25", num_inference_steps: 8 };
    const ahead = await replicate.predictions.create({ model: MODEL, input: slow });
    const output = await replicate.run(MODEL, { input: { prompt: "blocked", ...SMALL }, wait: { timeout: 1 } });
    assert.deepEqual(pngSize(await fetchBytes(String(output[0]))), { width: 96, height: 64 });
    assert.equal((await replicate.wait(ahead, {})).status, "succeeded");
  });

  test("predictions.create, get and wait: the prediction object", async () => {
    const created = await replicate.predictions.create({ model: MODEL, input: { prompt: "a kite", ...SMALL } });
    assert.ok(["starting", "processing"].includes(created.status), created.status);
    assert.equal(created.urls.get, `${BASE_URL}/v1/predictions/${created.id}`);
    const done = await replicate.wait(created, { interval: 100 });
    assert.equal(done.status, "succeeded");
    const fetched = await replicate.predictions.get(created.id);
    assert.deepEqual(fetched.output, done.output);
    assert.match(fetched.logs, /100%\|██████████\| 4\/4/);
    assert.ok(fetched.metrics.predict_time > 0);
  });

  test("a wrong input is an ApiError carrying the field and the fix", async () => {
    await assert.rejects(
      replicate.predictions.create({ model: MODEL, input: { prompt: "x", aspect_ratio: "7:5" } }),
      (error) => {
        assert.equal(error.response.status, 422, error.message);
        assert.match(error.message, /input\.aspect_ratio: must be one of 1:1/);
        return true;
      },
    );
  });
});
