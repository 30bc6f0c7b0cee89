// In-memory store behind workerd's KV binding. workerd turns env.KV.get(key) into an HTTP GET
// of "/<key>" on the bound service (a PUT with the value as body for put), and reads 404 as a
// missing key, as workerd's own test service src/workerd/api/kv-test.js expects. Only get and
// put, which the benchmark uses, are implemented.
// NOTE: the benchmark's keys are plain ASCII, so the percent-decoding of other keys is untested.
const entries = new Map();

export default {
  async fetch(request) {
    const url = new URL(request.url);
    const key = decodeURIComponent(url.pathname.slice(1));
    if (request.method === "GET") {
      const value = entries.get(key);
      if (value === undefined) {
        return new Response(null, { status: 404 });
      }
      return new Response(value);
    }
    if (request.method === "PUT") {
      entries.set(key, await request.arrayBuffer());
      return new Response(null, { status: 200 });
    }
    return new Response(`${request.method} is not implemented by this store`, { status: 501 });
  },
};
