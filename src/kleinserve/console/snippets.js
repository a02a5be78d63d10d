// "Copy code": the request the form describes, as curl, openai-python, fal-client (Python), JavaScript, curl
// through Black Forest Labs' API (submit, poll get_result, download), replicate-python and the AI SDK through
// the Vercel AI Gateway protocol. Each snippet runs as shown: it saves the images into the current directory.
// Reference images are read from files of the names the user picked, in the directory the snippet runs in.
// LoRAs go wherever the dialect takes them (fal's /lora endpoints, OpenAI's `loras`); a note says where not.
//
// call = {origin, keyRequired, modelId, replicateModel (owner/name | null), gatewayModel, endpoint (fal
//         endpoint id: "/edit" for edits, "/lora" with LoRAs), input (fal input without image_urls, with
//         `loras`), references: [{name, type}], size: {width, height} | null}

const KEY_VAR = "KLEINSERVE_API_KEY";

export const LANGUAGES = {
  curl: { note: keyNote, render: curl },
  openai: { note: keyNote, render: openaiPython },
  fal: { note: falNote, render: falPython },
  js: { note: (call) => `Node 18 or later, as an ES module (save as generate.mjs). ${keyNote(call)}`, render: js },
  bfl: { note: bflNote, render: bflCurl }, // curl and jq
  replicate: { note: replicateNote, render: replicatePython },
  gateway: { note: gatewayNote, render: gatewayJs },
};

function keyNote(call) {
  return call.keyRequired ? `Set ${KEY_VAR} to your API key first.` : "";
}

function falNote(call) {
  const https = call.origin.startsWith("https:")
    ? ""
    : "fal-client speaks only https: serve kleinserve with --ssl-certfile/--ssl-keyfile. ";
  return https + (call.keyRequired ? "Set FAL_KEY to your API key first." : "");
}

function extensionOf(call) {
  return call.input.output_format === "jpeg" ? "jpg" : call.input.output_format || "png";
}

const shellQuote = (text) => `'${String(text).replace(/'/g, `'\\''`)}'`;

function curl(call) {
  const auth = call.keyRequired ? ` -H "Authorization: Key $${KEY_VAR}"` : "";
  const head = `curl -s ${call.origin}/${call.endpoint}${auth} \\\n  -H "Content-Type: application/json"`;
  const save = `jq -r '.images[].url' | xargs -n 1 curl -s -O`;
  if (!call.references.length) {
    return `${head} \\\n  -d ${shellQuote(JSON.stringify(call.input))} \\\n  | ${save}\n`;
  }
  // a here-document: reference images inlined as data URIs would not fit on a command line
  const marker = "@@IMAGES@@";
  const body = JSON.stringify({ ...call.input, image_urls: marker });
  const escaped = body.replace(/[\\$`]/g, (c) => `\\${c}`);
  const uris = call.references.map(
    (ref) => `"data:${ref.type};base64,$(base64 < ${shellQuote(ref.name)} | tr -d '\\n')"`,
  );
  return `${head} -d @- <<EOF \\\n  | ${save}\n${escaped.replace(`"${marker}"`, `[${uris.join(", ")}]`)}\nEOF\n`;
}

// Python literals: JSON strings and numbers read the same in Python.
const py = (value) => JSON.stringify(value);

function openaiPython(call) {
  const { input } = call;
  const extra = {};
  for (const name of ["num_inference_steps", "seed", "guidance_scale", "negative_prompt", "output_format"]) {
    if (input[name] !== undefined) extra[name] = input[name];
  }
  // a multipart edit carries the list as JSON text
  if (input.loras) extra.loras = call.references.length ? JSON.stringify(input.loras) : input.loras;
  const key = call.keyRequired ? `os.environ[${py(KEY_VAR)}]` : `"unused"`;
  const args = [`    model=${py(call.modelId)},`, `    prompt=${py(input.prompt)},`];
  if (call.references.length) {
    args.push(`    image=[${call.references.map((ref) => `open(${py(ref.name)}, "rb")`).join(", ")}],`);
  }
  if (call.size) args.push(`    size="${call.size.width}x${call.size.height}",`);
  args.push(`    n=${input.num_images || 1},`, `    extra_body=${py(extra)},`);
  const method = call.references.length ? "edit" : "generate";
  return `import base64
import os

from openai import OpenAI

client = OpenAI(base_url=${py(`${call.origin}/v1`)}, api_key=${key})
result = client.images.${method}(
${args.join("\n")}
)
for i, image in enumerate(result.data):
    with open(f"image-{i}.${extensionOf(call)}", "wb") as out:
        out.write(base64.b64decode(image.b64_json))
`;
}

function falPython(call) {
  const host = call.origin.replace(/^https?:\/\//, "");
  const refs = call.references.map((ref) => `fal_client.encode_file(${py(ref.name)})`);
  const args = Object.entries(call.input).map(([name, value]) => `        ${py(name)}: ${py(value)},`);
  if (refs.length) args.push(`        "image_urls": [${refs.join(", ")}],`);
  const key = call.keyRequired ? "" : `os.environ.setdefault("FAL_KEY", "unused")\n`;
  return `import os
import urllib.request

# fal-client reads its hosts when imported: point it at this server first
os.environ.setdefault("FAL_RUN_HOST", ${py(host)})
os.environ.setdefault("FAL_QUEUE_RUN_HOST", ${py(`${host}/queue`)})
${key}import fal_client

result = fal_client.subscribe(
    ${py(call.endpoint)},
    arguments={
${args.join("\n")}
    },
)
for i, image in enumerate(result["images"]):
    urllib.request.urlretrieve(image["url"], f"image-{i}.${extensionOf(call)}")
`;
}

function js(call) {
  const fields = Object.entries(call.input).map(([name, value]) => `    ${name}: ${JSON.stringify(value)},`);
  if (call.references.length) {
    const refs = call.references.map((ref) => `dataUri(${JSON.stringify(ref.name)}, "${ref.type}")`);
    fields.push(`    image_urls: [${refs.join(", ")}],`);
  }
  const auth = call.keyRequired ? `, Authorization: \`Key \${process.env.${KEY_VAR}}\`` : "";
  const helper = call.references.length
    ? `const dataUri = (file, type) => \`data:\${type};base64,\${fs.readFileSync(file).toString("base64")}\`;\n\n`
    : "";
  return `import fs from "node:fs";

${helper}const response = await fetch(${JSON.stringify(`${call.origin}/${call.endpoint}`)}, {
  method: "POST",
  headers: { "Content-Type": "application/json"${auth} },
  body: JSON.stringify({
${fields.join("\n")}
  }),
});
if (!response.ok) throw new Error(await response.text());
const output = await response.json();
for (const [i, image] of output.images.entries()) {
  const data = await (await fetch(image.url)).arrayBuffer();
  fs.writeFileSync(\`image-\${i}.${extensionOf(call)}\`, Buffer.from(data));
}
console.log("seed", output.seed);
`;
}

// Black Forest Labs' API: one image per task; BFL names the model in the path (flux.2-klein-4b ->
// /v1/flux-2-klein-4b) and has no negative prompt.
const bflPath = (modelId) => `/v1/${modelId.replace("flux.2-", "flux-2-")}`;

function bflNote(call) {
  const notes = ["bash, curl and jq.", keyNote(call)];
  if ((call.input.num_images || 1) > 1) notes.push("BFL's API makes one image per task: this makes the first.");
  return notes.concat(leftOut("BFL's API", call, ["negative_prompt", "loras"])).filter(Boolean).join(" ");
}

const FIELD_NAMES = { negative_prompt: "negative prompt", loras: "LoRAs" };

// "<dialect> takes no <field>: it is left out." for each given field the dialect lacks
function leftOut(dialect, call, fields) {
  return fields
    .filter((name) => call.input[name] !== undefined)
    .map((name) => `${dialect} takes no ${FIELD_NAMES[name]} here: left out, so the image differs.`);
}

function bflBody(call) {
  const { input } = call;
  const body = { prompt: input.prompt };
  if (call.size) Object.assign(body, { width: call.size.width, height: call.size.height });
  if (input.seed !== undefined) body.seed = input.seed;
  if (input.num_inference_steps !== undefined) body.steps = input.num_inference_steps;
  if (input.guidance_scale !== undefined) body.guidance = input.guidance_scale;
  body.output_format = input.output_format || "png";
  return body;
}

function bflCurl(call) {
  const auth = call.keyRequired ? ` -H "x-key: $${KEY_VAR}"` : "";
  const submit = `curl -s ${call.origin}${bflPath(call.modelId)}${auth} -H "Content-Type: application/json"`;
  const body = bflBody(call);
  let send = `task=$(${submit} -d ${shellQuote(JSON.stringify(body))})`;
  if (call.references.length) {
    // a here-document: reference images inlined as data URIs would not fit on a command line
    const images = call.references.map(
      (ref, i) =>
        `"input_image${i ? `_${i + 1}` : ""}": "data:${ref.type};base64,$(base64 < ${shellQuote(ref.name)} | tr -d '\\n')"`,
    );
    const json = JSON.stringify(body).replace(/[\\$`]/g, (c) => `\\${c}`);
    send = `task=$(${submit} -d @- <<EOF\n${json.slice(0, -1)}, ${images.join(", ")}}\nEOF\n)`;
  }
  return `${send}
poll=$(jq -r .polling_url <<<"$task")
while :; do
  result=$(curl -s "$poll"${auth})
  status=$(jq -r .status <<<"$result")
  [ "$status" = Pending ] || break
  sleep 0.5
done
[ "$status" = Ready ] || { echo "$result" >&2; exit 1; }
curl -s -o image-0.${extensionOf(call)} "$(jq -r .result.sample <<<"$result")"
`;
}

// Replicate's API through replicate-python: the model as Replicate names it, Replicate's input fields
// (`size` as @ai-sdk/replicate sends it, for the exact size), output files read through the client.
function replicateNote(call) {
  if (!call.replicateModel) return `Replicate has no model for ${call.modelId}.`;
  const notes = ["pip install replicate.", keyNote(call)];
  if (!call.size) notes.push("match_input_image: Replicate makes about 1 MP in the first reference's aspect.");
  return notes.concat(leftOut("Replicate", call, ["negative_prompt", "loras"])).filter(Boolean).join(" ");
}

function replicatePython(call) {
  if (!call.replicateModel) return `# ${call.modelId} has no Replicate model name\n`;
  const { input } = call;
  const fields = { prompt: input.prompt };
  if (call.size) fields.size = `${call.size.width}x${call.size.height}`;
  else fields.aspect_ratio = "match_input_image";
  if (input.seed !== undefined) fields.seed = input.seed;
  if (input.num_inference_steps !== undefined) fields.num_inference_steps = input.num_inference_steps;
  if (input.guidance_scale !== undefined) fields.guidance = input.guidance_scale;
  fields.num_outputs = input.num_images || 1;
  fields.output_format = extensionOf(call);
  const lines = Object.entries(fields).map(([name, value]) => `        ${py(name)}: ${py(value)},`);
  if (call.references.length) {
    lines.push(`        "images": [${call.references.map((ref) => `open(${py(ref.name)}, "rb")`).join(", ")}],`);
  }
  const key = call.keyRequired ? `os.environ[${py(KEY_VAR)}]` : `"unused"`;
  return `import os
import urllib.request

import replicate

client = replicate.Client(api_token=${key}, base_url=${py(call.origin)})
output = client.run(
    ${py(call.replicateModel)},
    input={
${lines.join("\n")}
    },
)
for i, image in enumerate(output):  # str(): the image URL
    urllib.request.urlretrieve(str(image), f"image-{i}.${extensionOf(call)}")
`;
}

// The AI SDK's generateImage through @ai-sdk/gateway (createGateway with this server's /v1/ai): the model
// as the gateway names it; steps and guidance as providerOptions.bfl; PNG images.
function gatewayNote(call) {
  const notes = ["Node 18 or later, npm install ai, as an ES module (save as generate.mjs).", keyNote(call)];
  if (extensionOf(call) !== "png") notes.push("The gateway answers PNG.");
  return notes.concat(leftOut("The gateway", call, ["negative_prompt", "loras"])).filter(Boolean).join(" ");
}

function gatewayJs(call) {
  const { input } = call;
  const refs = call.references.map((ref) => `fs.readFileSync(${JSON.stringify(ref.name)})`);
  const prompt = refs.length
    ? `{ text: ${JSON.stringify(input.prompt)}, images: [${refs.join(", ")}] }`
    : JSON.stringify(input.prompt);
  const fields = [`  model: gateway.imageModel(${JSON.stringify(call.gatewayModel)}),`, `  prompt: ${prompt},`];
  if (call.size) fields.push(`  size: "${call.size.width}x${call.size.height}",`);
  fields.push(`  n: ${input.num_images || 1},`);
  if (input.seed !== undefined) fields.push(`  seed: ${input.seed},`);
  const options = {};
  if (input.num_inference_steps !== undefined) options.steps = input.num_inference_steps;
  if (input.guidance_scale !== undefined) options.guidance = input.guidance_scale;
  if (Object.keys(options).length) fields.push(`  providerOptions: { bfl: ${JSON.stringify(options)} },`);
  const key = call.keyRequired ? `process.env.${KEY_VAR}` : `"unused"`;
  return `import fs from "node:fs";
import { createGateway, generateImage } from "ai";

const gateway = createGateway({ baseURL: ${JSON.stringify(`${call.origin}/v1/ai`)}, apiKey: ${key} });
const { images } = await generateImage({
${fields.join("\n")}
});
images.forEach((image, i) => fs.writeFileSync(\`image-\${i}.png\`, image.uint8Array));
`;
}
