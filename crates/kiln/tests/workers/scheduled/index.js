// Records each scheduled event in KV. fetch returns the request path and the records.
export default {
  async fetch(request, env) {
    const page = await env.RUNS.list({ prefix: "run:" });
    const runs = await Promise.all(page.keys.map((key) => env.RUNS.get(key.name, "json")));
    return Response.json({ path: new URL(request.url).pathname, runs });
  },

  async scheduled(controller, env, ctx) {
    if (controller.cron === "throw") {
      throw new Error("scheduled boom");
    }
    const record = { cron: controller.cron, scheduledTime: controller.scheduledTime };
    // Written through waitUntil: the event, and /__scheduled, end only when the write has.
    ctx.waitUntil(
      env.RUNS.put(`run:${controller.scheduledTime}:${controller.cron}`, JSON.stringify(record)),
    );
  },
};
