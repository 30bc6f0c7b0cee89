// Hello-world worker of the worker benchmark, served unchanged by `kiln dev`, by workerd and by
// the kiln-runtime bench binary (see scripts/bench-workers.sh). Every request gets the same
// 13-byte text body, so the figures measure the runtimes' request path alone.
export default {
  async fetch() {
    return new Response("Hello, world!", {
      headers: { "content-type": "text/plain;charset=UTF-8" },
    });
  },
};
