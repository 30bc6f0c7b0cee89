// Runs the KV binding's methods and reports what each returned, as JSON.
export default {
  async fetch(request, env) {
    const results = {};
    const attempt = async (name, call) => {
      try {
        results[name] = await call();
      } catch (error) {
        results[name] = { error: `${error.name}: ${error.message}` };
      }
    };

    await env.FIRST.put("text", "hello");
    await env.FIRST.put("json", JSON.stringify({ n: 1 }), { metadata: { kind: "json" } });
    await env.FIRST.put("bytes", new Uint8Array([0, 1, 255]));
    await env.FIRST.put("stream", new Response("streamed value").body);
    await env.FIRST.put("expiring", "soon", { expirationTtl: 3600 });
    await env.SECOND.put("text", "other namespace");

    await attempt("text", () => env.FIRST.get("text"));
    await attempt("json", () => env.FIRST.get("json", "json"));
    await attempt("jsonOptions", () => env.FIRST.get("json", { type: "json", cacheTtl: 60 }));
    await attempt("bytes", async () => [...new Uint8Array(await env.FIRST.get("bytes", "arrayBuffer"))]);
    await attempt("stream", async () => new Response(await env.FIRST.get("stream", "stream")).text());
    await attempt("missing", () => env.FIRST.get("missing"));
    await attempt("withMetadata", () => env.FIRST.getWithMetadata("json", "json"));
    await attempt("bulk", async () => Object.fromEntries(await env.FIRST.get(["text", "missing"])));
    await attempt("second", () => env.SECOND.get("text"));
    await attempt("list", () => env.FIRST.list());
    await attempt("listPage", () => env.FIRST.list({ limit: 2 }));
    await attempt("ttl59", () => env.FIRST.put("bad", "x", { expirationTtl: 59 }));
    await attempt("hugeTtl", () => env.FIRST.put("bad", "x", { expirationTtl: 2 ** 40 }));
    await attempt("badValue", () => env.FIRST.put("bad", 42));
    await attempt("ttlText", () => env.FIRST.put("bad", "x", { expirationTtl: "soon" }));
    await attempt("ttlNaN", () => env.FIRST.put("bad", "x", { expirationTtl: NaN }));
    await attempt("limitNaN", () => env.FIRST.list({ limit: NaN }));
    await attempt("emptyKey", () => env.FIRST.get(""));
    await attempt("afterBad", () => env.FIRST.get("bad"));
    await env.FIRST.delete("text");
    await attempt("deleted", () => env.FIRST.get("text"));
    await attempt("tooMany", async () => {
      for (let i = 0; i < 1100; i++) await env.FIRST.get("json");
      return "no limit";
    });
    return Response.json(results);
  },
};
