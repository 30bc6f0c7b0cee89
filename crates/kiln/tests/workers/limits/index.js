// Breaks one limit per `mode` query value. Without one, it returns the number of requests this
// isolate has served, so a test can tell a rebuilt isolate from the old one.
let served = 0;
let ticks = 0;

function recurse(depth) {
  return recurse(depth + 1) + 1;
}

export default {
  async fetch(request) {
    served += 1;
    const mode = new URL(request.url).searchParams.get("mode");
    if (mode === "loop") {
      for (;;) {}
    }
    if (mode === "memory") {
      const hoard = [];
      for (;;) hoard.push(new Array(100000).fill(served));
    }
    if (mode === "recursion") {
      return new Response(String(recurse(0)));
    }
    if (mode === "microtasks") {
      const storm = () => queueMicrotask(storm);
      storm();
      await new Promise(() => {});
    }
    if (mode === "hang") {
      await new Promise(() => {});
    }
    if (mode === "reject") {
      Promise.reject(new RangeError("nobody handles this"));
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    if (mode === "tick") {
      setInterval(() => {
        ticks += 1;
      }, 5);
      await new Promise(() => {});
    }
    if (mode === "ticks") {
      return new Response(String(ticks));
    }
    return new Response(`served ${served}`);
  },
};
