// fal's official JS client (@fal-ai/client), unmodified. It has no host setting: every call goes
// to `proxyUrl` with the real target (https://fal.run/..., https://queue.fal.run/...) in the
// x-fal-target-url header; in Node it proxies only with `when: "always"`.
import assert from "node:assert/strict";
import { before, describe, test } from "node:test";
import { ApiError, ValidationError, fal } from "@fal-ai/client";
import {
  API_KEY,
  BASE_URL,
  FAL_EDIT_ENDPOINT,
  FAL_ENDPOINT,
  TIMEOUT,
  assertPng,
  dataUri,
  fetchBytes,
  serverPng,
  strings,
  until,
} from "./helpers.mjs";

fal.config({
  proxyUrl: { url: `${BASE_URL}/fal/proxy`, when: "always" },
  credentials: API_KEY, // sent as "Authorization: Key <key>"
});

const square64 = { width: 64, height: 64 };

/** Checks a text-to-image/edit output and its images' bytes. */
async function assertOutput(output, width, height, count = 1) {
  assert.ok(Array.isArray(output?.images), `no images in ${JSON.stringify(output)?.slice(0, 300)}`);
  assert.equal(output.images.length, count);
  for (const image of output.images) {
    assert.equal(image.width, width);
    assert.equal(image.height, height);
    assert.equal(image.content_type, "image/png");
    assertPng(await fetchBytes(image.url), width, height);
  }
  assert.equal(typeof output.seed, "number");
  assert.equal(output.has_nsfw_concepts?.length, count);
  assert.ok(output.has_nsfw_concepts.every((flag) => typeof flag === "boolean"));
}

const assertRequestId = (id, where) => assert.ok(typeof id === "string" && id.length > 0, `empty requestId from ${where}`);

describe("fal.run (sync, https://fal.run/...)", { timeout: TIMEOUT }, () => {
  test("text to image: output, image bytes, requestId from x-fal-request-id", async () => {
    const { data, requestId } = await fal.run(FAL_ENDPOINT, {
      input: { prompt: "a lighthouse", image_size: square64, seed: 7, num_images: 2 },
    });
    await assertOutput(data, 64, 64, 2);
    assert.equal(data.seed, 7);
    assertRequestId(requestId, "fal.run");
  });

  test("bad input -> ValidationError 422 with field errors", async () => {
    await assert.rejects(
      fal.run(FAL_ENDPOINT, { input: { prompt: "x", image_size: square64, num_images: 9 } }),
      (error) => {
        assert.ok(error instanceof ValidationError, `${error?.name}: ${error?.message}`);
        assert.equal(error.status, 422);
        assert.ok(error.fieldErrors.length > 0);
        assert.match(error.message, /num_images/, "the message names the field");
        return true;
      },
    );
  });
});

describe("fal.subscribe (queue: https://queue.fal.run/...)", { timeout: TIMEOUT }, () => {
  test("mode polling, with logs and onQueueUpdate", async () => {
    const updates = [];
    let enqueued;
    const { data, requestId } = await fal.subscribe(FAL_ENDPOINT, {
      input: { prompt: "a red fox", image_size: square64 },
      logs: true,
      pollInterval: 100,
      onEnqueue: (id) => (enqueued = id),
      onQueueUpdate: (update) => updates.push(update),
    });
    await assertOutput(data, 64, 64);
    assertRequestId(enqueued, "onEnqueue");
    assert.equal(requestId, enqueued, "result's x-fal-request-id is not the submitted request_id");
    assert.ok(updates.length > 0);
    for (const update of updates) {
      assert.ok(["IN_QUEUE", "IN_PROGRESS", "COMPLETED"].includes(update.status), update.status);
      if (update.status === "IN_QUEUE") assert.equal(typeof update.queue_position, "number");
      else assert.ok(Array.isArray(update.logs), `${update.status} without logs`);
    }
    const last = updates.at(-1);
    assert.equal(last.status, "COMPLETED");
    assert.ok(last.logs.length > 0, "COMPLETED with logs=1 has no log lines");
    for (const log of last.logs) assert.equal(typeof log.message, "string");
  });

  test("mode streaming (status over server-sent events)", async () => {
    const updates = [];
    const { data, requestId } = await fal.subscribe(FAL_ENDPOINT, {
      input: { prompt: "a green owl", image_size: square64 },
      mode: "streaming",
      logs: true,
      onQueueUpdate: (update) => updates.push(update),
    });
    await assertOutput(data, 64, 64);
    assertRequestId(requestId, "fal.subscribe streaming");
    assert.ok(updates.length > 0, "no status events");
    assert.equal(updates.at(-1).status, "COMPLETED");
  });
});

describe("fal.queue", { timeout: TIMEOUT }, () => {
  test("submit, status (logs), result", async () => {
    const submitted = await fal.queue.submit(FAL_ENDPOINT, {
      input: { prompt: "a blue whale", image_size: { width: 128, height: 96 } },
    });
    assertRequestId(submitted.request_id, "queue.submit");
    for (const key of ["status_url", "response_url", "cancel_url"]) {
      assert.match(submitted[key], /^https?:\/\//, key);
    }
    assert.equal(typeof submitted.queue_position, "number");

    const requestId = submitted.request_id;
    const final = await until(
      async () => {
        const status = await fal.queue.status(FAL_ENDPOINT, { requestId, logs: true });
        assert.ok(["IN_QUEUE", "IN_PROGRESS", "COMPLETED"].includes(status.status), status.status);
        return status.status === "COMPLETED" && status;
      },
      { what: "COMPLETED" },
    );
    assert.ok(Array.isArray(final.logs));
    assert.equal(typeof final.metrics?.inference_time, "number");
    assert.equal(final.error, undefined, `failed: ${final.error}`);

    const result = await fal.queue.result(FAL_ENDPOINT, { requestId });
    await assertOutput(result.data, 128, 96);
    assert.equal(result.requestId, requestId);
  });

  test("streamStatus: SSE of status objects ending in COMPLETED", async () => {
    const { request_id: requestId } = await fal.queue.submit(FAL_ENDPOINT, {
      input: { prompt: "a kite", image_size: square64 },
    });
    const stream = await fal.queue.streamStatus(FAL_ENDPOINT, { requestId, logs: true });
    const events = [];
    stream.on("data", (event) => events.push(event));
    const done = await stream.done();
    assert.equal(done.status, "COMPLETED");
    assert.ok(events.length > 0);
    assert.deepEqual(events.at(-1), done);
  });

  test("cancel a job that is still queued", async () => {
    // Several jobs that each take a while: the last one submitted is still waiting when cancelled.
    const input = { prompt: "a busy street", image_size: "square", num_inference_steps: 8 };
    const submitted = [];
    for (let i = 0; i < 4; i += 1) {
      submitted.push((await fal.queue.submit(FAL_ENDPOINT, { input: { ...input, seed: i } })).request_id);
    }
    const requestId = submitted.at(-1);
    await fal.queue.cancel(FAL_ENDPOINT, { requestId }); // throws ApiError unless 2xx

    const final = await until(
      async () => {
        const status = await fal.queue.status(FAL_ENDPOINT, { requestId, logs: true });
        return status.status === "COMPLETED" && status;
      },
      { timeoutMs: 90_000, what: "the cancelled job to finish" },
    );
    assert.ok(final.error, "a cancelled job's COMPLETED status carries its error");
    await assert.rejects(fal.queue.result(FAL_ENDPOINT, { requestId }), (error) => {
      assert.ok(error instanceof ApiError, `${error?.name}: ${error?.message}`);
      assert.ok(error.status >= 400 && error.status < 500, `status ${error.status}`);
      return true;
    });

    // Cancelling a finished job: 400 ALREADY_COMPLETED, which the client surfaces as ApiError.
    const first = submitted[0];
    await until(async () => (await fal.queue.status(FAL_ENDPOINT, { requestId: first })).status === "COMPLETED", {
      timeoutMs: 90_000,
      what: "the first job",
    });
    await assert.rejects(fal.queue.cancel(FAL_ENDPOINT, { requestId: first }), (error) => {
      assert.ok(error instanceof ApiError);
      assert.equal(error.status, 400);
      assert.equal(error.body?.status, "ALREADY_COMPLETED");
      return true;
    });
  });
});

describe("fal.stream (POST https://fal.run/{endpoint}/stream)", { timeout: TIMEOUT }, () => {
  test("progress events with a preview data URI, then the final output", async () => {
    const stream = await fal.stream(FAL_ENDPOINT, {
      input: { prompt: "a windmill", image_size: square64, num_inference_steps: 4 },
    });
    const events = [];
    for await (const event of stream) events.push(event);
    const output = await stream.done();

    await assertOutput(output, 64, 64);
    assert.ok(events.length >= 2, `only ${events.length} event(s)`);
    assert.deepEqual(events.at(-1), output, "the final output is not the last event");
    const previews = events
      .slice(0, -1)
      .flatMap((event) => [...strings(event)].filter((s) => s.startsWith("data:image/")));
    assert.ok(previews.length > 0, "no progress event carries a data:image/ preview");
    const preview = await fetchBytes(previews.at(-1));
    assert.ok(preview.length > 0);
    assertRequestId(stream.requestId, "fal.stream");
  });

  test("invalid input is refused before the stream starts: ValidationError 422", async () => {
    const stream = await fal.stream(FAL_ENDPOINT, { input: { prompt: "x", image_size: square64, num_images: 9 } });
    await assert.rejects(stream.done(), (error) => {
      assert.ok(error instanceof ValidationError, `${error?.name}: ${error?.message}`);
      assert.equal(error.status, 422);
      return true;
    });
  });
});

describe("edit (fal-ai/flux-2/klein/4b/edit)", { timeout: TIMEOUT }, () => {
  let refs;
  before(async () => {
    refs = await Promise.all([serverPng(96, 64, 1), serverPng(64, 64, 2)]);
  });

  test("image_urls as data URIs; output takes the first input's size", async () => {
    const { data, requestId } = await fal.subscribe(FAL_EDIT_ENDPOINT, {
      input: { prompt: "put them together", image_urls: refs.map(dataUri) },
      pollInterval: 100,
    });
    await assertOutput(data, 96, 64);
    assertRequestId(requestId, "fal.subscribe edit");
  });

  test("fal.run with sync_mode: images come back as data URIs", async () => {
    const { data } = await fal.run(FAL_EDIT_ENDPOINT, {
      input: { prompt: "put them together", image_urls: refs.map(dataUri), sync_mode: true },
    });
    assert.match(data.images[0].url, /^data:image\/png;base64,/);
    await assertOutput(data, 96, 64);
  });
});
