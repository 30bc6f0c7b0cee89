// KV benchmark worker, served unchanged by `kiln dev` and by workerd (see scripts/bench-kv.sh).
// It binds one namespace as KV. Keys are "key-000000" up to the count that /fill wrote, and every
// value is 100 bytes.
//
//   POST /fill?count=N     puts N keys (sequentially), returns {"count": N}
//   GET  /loop?op=get&n=N  runs N sequential gets (or puts with op=put) in this one request
//   GET  /get?i=I          one get of key I; the response body is the value
//   GET  /put?i=I          one put of key I
//   GET  /noop?i=I         no KV call, for the cost of the request alone
//
// /loop returns {"op", "n", "ms"}, where ms is the loop's time as the worker's clock measures
// it. The script times the whole request from the client as well.

const VALUE = "v".repeat(100);

function keyName(index) {
  return `key-${String(index).padStart(6, "0")}`;
}

function intParam(url, name, fallback) {
  const text = url.searchParams.get(name);
  const value = text === null ? fallback : Number(text);
  if (!Number.isInteger(value) || value < 0) {
    throw new RangeError(`query parameter ${name}=${text} is invalid: expected an integer >= 0`);
  }
  return value;
}

async function fill(env, count) {
  for (let i = 0; i < count; i++) {
    await env.KV.put(keyName(i), VALUE);
  }
  return Response.json({ count });
}

async function loop(env, op, n, keys) {
  const started = Date.now();
  if (op === "get") {
    for (let i = 0; i < n; i++) {
      const value = await env.KV.get(keyName((i * 7919) % keys));
      if (value === null || value.length !== VALUE.length) {
        return new Response(`get of ${keyName((i * 7919) % keys)} returned ${value}`, {
          status: 500,
        });
      }
    }
  } else if (op === "put") {
    for (let i = 0; i < n; i++) {
      await env.KV.put(`loop-${i % keys}`, VALUE);
    }
  } else {
    return new Response(`op=${op} is invalid: expected get or put`, { status: 400 });
  }
  return Response.json({ op, n, ms: Date.now() - started });
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    try {
      switch (url.pathname) {
        case "/fill":
          return await fill(env, intParam(url, "count", 1000));
        case "/loop":
          return await loop(
            env,
            url.searchParams.get("op"),
            intParam(url, "n", 1000),
            intParam(url, "keys", 1000),
          );
        case "/get": {
          const key = keyName(intParam(url, "i", 0));
          const value = await env.KV.get(key);
          if (value === null) {
            return new Response(`key ${key} not found`, { status: 404 });
          }
          return new Response(value);
        }
        case "/put":
          await env.KV.put(`single-${intParam(url, "i", 0)}`, VALUE);
          return new Response("ok");
        case "/noop":
          return new Response("ok");
        default:
          return new Response(`no route for ${url.pathname}`, { status: 404 });
      }
    } catch (error) {
      const status = error instanceof RangeError ? 400 : 500;
      return new Response(`${error.name}: ${error.message}`, { status });
    }
  },
};
