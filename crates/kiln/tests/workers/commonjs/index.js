// Imports CommonJS packages from node_modules in every way that workers use them.
import ms from 'ms';
import greeter, { greet, fail } from 'greeter';
import { welcome } from 'chain';
import config, { region } from 'config-json';
import { name, bSawA, done } from 'cycle';
import { build } from 'dual';
import { requiredBuild } from 'dual-user';
import { sides, env } from 'shapes';
import { inspectType, inspectKeys, platform } from 'browser-map';

export default {
  fetch(request) {
    const url = new URL(request.url);
    if (url.pathname === '/throw') {
      fail();
    }
    return Response.json({
      ms: [ms('2 days'), ms(60000), ms(ms('10h'), { long: true })],
      greet: greet('kiln'),
      defaultGreet: greeter.greet('default'),
      welcome: welcome('kiln'),
      region,
      retries: config.retries,
      cycle: { name, bSawA, done },
      build,
      requiredBuild,
      sides,
      env,
      processGlobal: typeof globalThis.process,
      browserMap: [inspectType, inspectKeys, platform],
    });
  },
};
