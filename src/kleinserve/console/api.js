// Talking to this server: the API key (session storage only), fal's streaming endpoint read as
// server-sent events, and errors of either dialect turned into {field, message} for the form.

const KEY_STORAGE = "kleinserve.apiKey";

export function savedKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

export function saveKey(key) {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

// fal clients send "Key <key>", OpenAI clients "Bearer <key>"; the server takes either.
export function authHeaders(key, scheme = "Key") {
  return key ? { Authorization: `${scheme} ${key}` } : {};
}

export class ApiFailure extends Error {
  constructor(status, problems) {
    super(problems.map((p) => p.message).join("; "));
    this.status = status;
    this.problems = problems; // [{field: "num_inference_steps" | null, message}]
  }
}

// An error body of either dialect -> [{field, message}]:
//   fal:    {"detail": [{"loc": ["body", "image_size"], "msg"}], ...} or {"detail": "text"}
//   OpenAI: {"error": {"message", "param"}}
export function problemsOf(body, status) {
  if (body && Array.isArray(body.detail)) {
    return body.detail.map((item) => ({
      field: fieldOf(item.loc),
      message: item.msg || String(item),
    }));
  }
  if (body && typeof body.detail === "string") return [{ field: null, message: body.detail }];
  if (body && body.error && body.error.message) {
    return [{ field: body.error.param || null, message: body.error.message }];
  }
  return [{ field: null, message: `the server answered HTTP ${status}` }];
}

// ["body", "loras", 1, "path"] -> "loras[1].path" (as the server names fields in its other dialects)
function fieldOf(loc) {
  if (!Array.isArray(loc)) return null;
  const names = loc.filter((part, i) => !(i === 0 && part === "body"));
  const field = names.map((part, i) => (typeof part === "number" ? `[${part}]` : i ? `.${part}` : part));
  return field.length ? field.join("") : null;
}

async function failure(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: the status alone says it
  }
  return new ApiFailure(response.status, problemsOf(body, response.status));
}

export async function getJson(path, key, scheme = "Bearer") {
  const response = await fetch(path, { headers: authHeaders(key, scheme) });
  if (!response.ok) throw await failure(response);
  return response.json();
}

// POST /{endpoint}/stream: calls onEvent(event) for each `data:` JSON object; resolves with the last one.
export async function streamFal(endpoint, input, key, onEvent, signal) {
  const response = await fetch(`/${endpoint}/stream`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "text/event-stream", ...authHeaders(key) },
    body: JSON.stringify(input),
    signal,
  });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let last = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = parseEvent(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
      if (event === null) continue; // a keep-alive comment
      if (event.status === "ERROR") {
        throw new ApiFailure(event.status_code || 500, problemsOf(event, event.status_code));
      }
      last = event;
      onEvent(event);
    }
  }
  if (last === null) throw new ApiFailure(0, [{ field: null, message: "the stream ended without a result" }]);
  return last;
}

function parseEvent(block) {
  const data = block
    .split("\n")
    .filter((line) => line.startsWith("data:"))
    .map((line) => line.slice(5).replace(/^ /, ""))
    .join("\n");
  return data ? JSON.parse(data) : null;
}
