// Exercises the global fetch() against a test server whose base URL arrives in the `origin`
// query parameter. Every mode responds with 200 and JSON, and a rejected call becomes
// `{ error: { name, message, isDOMException } }`, so the test can check the error that the
// worker caught.

async function attempt(action) {
  try {
    return { value: await action() };
  } catch (error) {
    return {
      error: {
        name: error?.name,
        message: error?.message,
        isDOMException: error instanceof DOMException,
      },
    };
  }
}

async function describe(response) {
  return {
    status: response.status,
    statusText: response.statusText,
    ok: response.ok,
    url: response.url,
    redirected: response.redirected,
    headers: Object.fromEntries(response.headers),
    text: await response.text(),
  };
}

const modes = {
  // Fetches the URL in the `url` parameter.
  async get(origin, params) {
    return describe(await fetch(params.get("url")));
  },

  async json(origin) {
    const response = await fetch(new Request(`${origin}/json`));
    return {
      status: response.status,
      statusText: response.statusText,
      testHeader: response.headers.get("x-test"),
      contentType: response.headers.get("content-type"),
      body: await response.json(),
      url: response.url,
      redirected: response.redirected,
      immutable: await attempt(() => response.headers.set("x-test", "changed")),
    };
  },

  // Reads the first chunk, lets the server send the rest, then reads to the end. The server
  // holds the rest back until /release, so the first read can only succeed if the body
  // streams.
  async stream(origin) {
    const response = await fetch(`${origin}/stream`);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    const chunks = [];
    const first = await reader.read();
    chunks.push(decoder.decode(first.value));
    const release = await fetch(`${origin}/release`);
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      chunks.push(decoder.decode(value));
    }
    return { releaseStatus: release.status, releaseBody: release.body, chunks };
  },

  // Sends one POST per body type to /echo and returns what the server received.
  async bodies(origin) {
    const form = new FormData();
    form.append("field", "value");
    const bodies = {
      string: "plain text",
      bytes: new TextEncoder().encode("typed array"),
      buffer: new TextEncoder().encode("array buffer").buffer,
      blob: new Blob(["blob body"], { type: "application/x-blob" }),
      params: new URLSearchParams({ a: "1", b: "two" }),
      stream: new ReadableStream({
        start(controller) {
          controller.enqueue(new TextEncoder().encode("streamed "));
          controller.enqueue(new TextEncoder().encode("body"));
          controller.close();
        },
      }),
      form,
    };
    const results = {};
    for (const [name, body] of Object.entries(bodies)) {
      const response = await fetch(`${origin}/echo`, { method: "POST", body, headers: { "x-echo": name } });
      results[name] = await response.json();
    }
    return results;
  },

  async redirects(origin, params) {
    const followed = await fetch(`${origin}/redirect?status=302&to=/json`);
    const seeOther = await fetch(`${origin}/redirect?status=303&to=/echo`, { method: "POST", body: "dropped" });
    const temporary = await fetch(`${origin}/redirect?status=307&to=/echo`, { method: "POST", body: "kept" });
    const manual = await fetch(`${origin}/redirect?status=301&to=/json`, { redirect: "manual" });
    return {
      followed: { status: followed.status, url: followed.url, redirected: followed.redirected, body: await followed.json() },
      seeOther: await seeOther.json(),
      temporary: await temporary.json(),
      manual: {
        status: manual.status,
        location: manual.headers.get("location"),
        redirected: manual.redirected,
        url: manual.url,
      },
      error: await attempt(() => fetch(`${origin}/redirect?status=302&to=/json`, { redirect: "error" })),
      // The server allows 127.0.0.1 only, so a hop to localhost must be rejected.
      offList: await attempt(() => fetch(`${origin}/redirect?status=302&to=${encodeURIComponent(params.get("other"))}`)),
    };
  },

  // Aborts once while waiting for the head and once while reading the body.
  async abort(origin) {
    const early = new AbortController();
    const pending = fetch(`${origin}/hang`, { signal: early.signal });
    setTimeout(() => early.abort(), 10);
    const beforeHead = await attempt(() => pending);

    const late = new AbortController();
    const response = await fetch(`${origin}/hold`, { signal: late.signal });
    const reader = response.body.getReader();
    const first = await reader.read();
    late.abort();
    const duringBody = await attempt(() => reader.read());

    const preAborted = await attempt(() => fetch(`${origin}/json`, { signal: AbortSignal.abort() }));
    return { beforeHead, first: new TextDecoder().decode(first.value), duringBody, preAborted };
  },

  // Makes `count` fetches, then one env.AI.run call when `ai` is set.
  async many(origin, params, env) {
    const count = Number(params.get("count"));
    const fetches = [];
    for (let i = 0; i < count; i++) {
      fetches.push(await attempt(async () => (await fetch(`${origin}/json`)).status));
    }
    if (!params.has("ai")) return { fetches };
    const ai = await attempt(() => env.AI.run("@cf/meta/llama-2-7b-chat-int8", { prompt: "hi" }));
    return { fetches, ai };
  },
};

export default {
  async fetch(request, env) {
    const params = new URL(request.url).searchParams;
    const mode = modes[params.get("mode")];
    if (!mode) return new Response(`unknown mode ${params.get("mode")}`, { status: 404 });
    return Response.json(await attempt(() => mode(params.get("origin"), params, env)));
  },
};
