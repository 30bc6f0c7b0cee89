// The legacy `@cloudflare/ai` package: `new Ai(env.AI).run(model, inputs)` forwards to the
// native binding, so workers written against the package run unchanged.
export class Ai {
  constructor(binding, options = {}) {
    if (!binding) {
      throw new Error("Ai binding is undefined. Please provide a valid binding.");
    }
    this.binding = binding;
    this.options = options;
    this.lastRequestId = null;
  }

  async run(model, inputs) {
    const result = await this.binding.run(model, inputs);
    this.lastRequestId = this.binding.lastRequestId ?? null;
    return result;
  }
}

export default Ai;
