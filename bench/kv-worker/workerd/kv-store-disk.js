// On-disk store behind workerd's KV binding: the same HTTP protocol as kv-store.js, with the
// entries in one Durable Object whose SQLite storage is a file in a local folder.
import { DurableObject } from "cloudflare:workers";

export class Store extends DurableObject {
  async fetch(request) {
    const key = decodeURIComponent(new URL(request.url).pathname.slice(1));
    if (request.method === "GET") {
      const value = await this.ctx.storage.get(key);
      if (value === undefined) {
        return new Response(null, { status: 404 });
      }
      return new Response(value);
    }
    if (request.method === "PUT") {
      await this.ctx.storage.put(key, await request.arrayBuffer());
      return new Response(null, { status: 200 });
    }
    return new Response(`${request.method} is not implemented by this store`, { status: 501 });
  }
}

export default {
  fetch(request, env) {
    return env.STORE.get(env.STORE.idFromName("kv")).fetch(request);
  },
};
