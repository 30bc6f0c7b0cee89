// Returns the env entries that the secrets test checks.
export default {
  fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname === '/throw') {
      throw new Error('failed while the secrets were loaded');
    }
    return Response.json({
      API_KEY: env.API_KEY,
      DB_PASSWORD: env.DB_PASSWORD,
      MULTILINE: env.MULTILINE,
      GREETING: env.GREETING,
    });
  },
};
