// Uses KV in three ways, so a test can see how each behaves while the store is down.
export default {
  async fetch(request, env) {
    const { pathname } = new URL(request.url);
    if (pathname === "/plain") {
      return new Response("no KV here");
    }
    if (pathname === "/uncaught") {
      const value = await env.STATE.get("visits");
      return Response.json({ value });
    }
    try {
      const visits = Number((await env.STATE.get("visits")) ?? "0") + 1;
      await env.STATE.put("visits", String(visits));
      return Response.json({ visits });
    } catch (error) {
      return Response.json({ caught: `${error.name}: ${error.message}` }, { status: 500 });
    }
  },
};
