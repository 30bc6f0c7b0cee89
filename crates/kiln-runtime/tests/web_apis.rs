//! Web APIs in the isolate, checked against the examples of the standards (WHATWG Fetch, URL,
//! Encoding, Streams, HTML, W3C File API, Web Crypto).

mod support;

use kiln_runtime::Limits;
use serde_json::{json, Value};
use support::{start, TestWorker};

/// Each case is a JavaScript expression (awaited) and the JSON value it must produce.
const CASES: &[(&str, &str)] = &[
    // URL
    ("new URL('https://example.org/a/../b?x=1#frag').href", r##""https://example.org/b?x=1#frag""##),
    ("new URL('../c', 'https://example.org/a/b').href", r##""https://example.org/c""##),
    ("(() => { const u = new URL('https://user:pw@example.org:8080/p?q=1#h'); return [u.protocol, u.username, u.password, u.host, u.hostname, u.port, u.pathname, u.search, u.hash, u.origin]; })()",
     r##"["https:","user","pw","example.org:8080","example.org","8080","/p","?q=1","#h","https://example.org:8080"]"##),
    ("new URL('HTTPS://EXAMPLE.org:443/').href", r##""https://example.org/""##),
    ("URL.canParse('not a url')", "false"),
    ("(() => { try { new URL('nope'); return 'no error'; } catch (e) { return e instanceof TypeError; } })()", "true"),
    ("(() => { const u = new URL('https://example.org/?a=1'); u.searchParams.append('b', 'x y'); return u.href; })()", r##""https://example.org/?a=1&b=x+y""##),
    ("(() => { const u = new URL('https://example.org/'); u.pathname = '/new path'; u.hash = 'top'; return u.href; })()", r##""https://example.org/new%20path#top""##),
    // URLSearchParams
    ("new URLSearchParams('?a=1&b=2&a=3').getAll('a')", r##"["1","3"]"##),
    ("new URLSearchParams({ q: 'a+b c', n: '1' }).toString()", r##""q=a%2Bb+c&n=1""##),
    ("(() => { const p = new URLSearchParams('c=3&a=1&b=2&a=0'); p.sort(); return p.toString(); })()", r##""a=1&a=0&b=2&c=3""##),
    ("new URLSearchParams('x=%E2%82%AC&y=%zz').get('x') + new URLSearchParams('x=%E2%82%AC&y=%zz').get('y')", r##""€%zz""##),
    ("[...new URLSearchParams([['a', '1'], ['b', '2']]).keys()]", r##"["a","b"]"##),
    // Headers
    ("(() => { const h = new Headers({ 'Content-Type': 'text/plain' }); h.append('X-A', '1'); h.append('x-a', '2'); return [h.get('content-type'), h.get('X-A'), h.has('x-b')]; })()",
     r##"["text/plain","1, 2",false]"##),
    ("[...new Headers([['b', '2'], ['a', '1']])]", r##"[["a","1"],["b","2"]]"##),
    ("(() => { const h = new Headers(); h.append('Set-Cookie', 'a=1'); h.append('Set-Cookie', 'b=2'); return h.getSetCookie(); })()", r##"["a=1","b=2"]"##),
    ("(() => { try { new Headers({ 'bad name': 'x' }); return 'no error'; } catch (e) { return e instanceof TypeError; } })()", "true"),
    ("(() => { const h = new Headers({ a: ' \\t x y \\r\\n', b: 'plain', c: ' \\n ' }); h.set('d', '\\tz '); return [...h]; })()",
     r##"[["a","x y"],["b","plain"],["c",""],["d","z"]]"##),
    ("(() => { try { new Headers({ a: 'x\\ny' }); return 'no error'; } catch (e) { return [e instanceof TypeError, e.message]; } })()",
     r##"[true,"Invalid header value for a"]"##),
    ("(() => { try { new Headers().set('a', 'x\\0y'); return 'no error'; } catch (e) { return e.message; } })()",
     r##""Invalid header value for a""##),
    // Request and Response
    ("new Request('HTTP://Example.org:80/a/../b c?q=1').url", r##""http://example.org/b%20c?q=1""##),
    ("(() => { try { new Request('/relative'); return 'no error'; } catch (e) { return [e instanceof TypeError, e.message]; } })()",
     r##"[true,"Invalid URL: /relative"]"##),
    ("(async () => { const r = new Response('{\"a\":1}'); return [r.status, r.ok, r.headers.get('content-type'), await r.json()]; })()",
     r##"[200,true,"text/plain;charset=UTF-8",{"a":1}]"##),
    ("(async () => { const r = Response.json({ x: [1] }, { status: 201 }); return [r.status, r.headers.get('content-type'), await r.text()]; })()",
     r##"[201,"application/json","{\"x\":[1]}"]"##),
    ("(async () => { const r = new Response('abc'); await r.text(); try { await r.text(); return 'reused'; } catch (e) { return [r.bodyUsed, e instanceof TypeError]; } })()", "[true,true]"),
    ("(async () => { const r = new Response(new Uint8Array([104, 105])); return new Uint8Array(await r.arrayBuffer()).length + (await r.clone?.call(new Response('x')).text()); })()", r##""2x""##),
    ("(() => { try { new Response('x', { status: 204 }); return 'no error'; } catch (e) { return e instanceof TypeError; } })()", "true"),
    ("(() => { try { new Response('x', { status: 99 }); return 'no error'; } catch (e) { return e instanceof RangeError; } })()", "true"),
    ("(() => { const r = Response.redirect('https://example.org/x', 301); return [r.status, r.headers.get('location')]; })()", r##"[301,"https://example.org/x"]"##),
    ("(async () => { const r = new Request('https://example.org/p', { method: 'post', body: 'hi', headers: { 'x-y': 'z' } }); return [r.method, r.url, r.headers.get('x-y'), await r.text()]; })()",
     r##"["POST","https://example.org/p","z","hi"]"##),
    ("(() => { try { new Request('https://example.org/', { body: 'x' }); return 'no error'; } catch (e) { return e instanceof TypeError; } })()", "true"),
    ("(async () => { const r = new Response(new URLSearchParams({ a: '1' })); return [r.headers.get('content-type'), await r.text()]; })()",
     r##"["application/x-www-form-urlencoded;charset=UTF-8","a=1"]"##),
    ("(async () => { const s = new ReadableStream({ start(c) { c.enqueue(new TextEncoder().encode('ab')); c.enqueue(new TextEncoder().encode('c')); c.close(); } }); return await new Response(s).text(); })()", r##""abc""##),
    // FormData, multipart and url-encoded bodies
    ("(async () => { const f = new FormData(); f.append('note', 'I love this house'); f.append('photo', new File([new Uint8Array([1, 2, 3])], 'p.png', { type: 'image/png' })); const r = new Response(f); const back = await new Request('https://x/', { method: 'POST', body: await r.arrayBuffer(), headers: r.headers }).formData(); const photo = back.get('photo'); return [back.get('note'), photo.name, photo.type, [...new Uint8Array(await photo.arrayBuffer())]]; })()",
     r##"["I love this house","p.png","image/png",[1,2,3]]"##),
    ("(async () => { const body = '--XyZ\\r\\nContent-Disposition: form-data; name=\"a\"\\r\\n\\r\\nline1\\r\\nline2\\r\\n--XyZ\\r\\nContent-Disposition: form-data; name=\"f\"; filename=\"t.txt\"\\r\\nContent-Type: text/plain\\r\\n\\r\\nfile body\\r\\n--XyZ--\\r\\n'; const form = await new Request('https://x/', { method: 'POST', body, headers: { 'content-type': 'multipart/form-data; boundary=XyZ' } }).formData(); return [form.get('a'), form.get('f').name, await form.get('f').text()]; })()",
     r##"["line1\r\nline2","t.txt","file body"]"##),
    ("(async () => { const form = await new Request('https://x/', { method: 'POST', body: 'a=1&b=x+y', headers: { 'content-type': 'application/x-www-form-urlencoded' } }).formData(); return [form.get('a'), form.get('b')]; })()",
     r##"["1","x y"]"##),
    // Blob and File
    ("(async () => { const b = new Blob(['ab', new Uint8Array([99])], { type: 'Text/Plain' }); return [b.size, b.type, await b.text(), await b.slice(1, 2).text()]; })()",
     r##"[3,"text/plain","abc","b"]"##),
    ("(() => { const f = new File(['x'], 'a.txt', { lastModified: 42 }); return [f.name, f.lastModified, f instanceof Blob]; })()", r##"["a.txt",42,true]"##),
    // Encoding
    ("[...new TextEncoder().encode('€a')]", "[226,130,172,97]"),
    ("new TextDecoder().decode(new Uint8Array([0xEF, 0xBB, 0xBF, 0xE2, 0x82, 0xAC]))", r##""€""##),
    ("(() => { const d = new TextDecoder(); return d.decode(new Uint8Array([0xE2, 0x82]), { stream: true }) + d.decode(new Uint8Array([0xAC])); })()", r##""€""##),
    ("new TextDecoder().decode(new Uint8Array([0xFF]))", r##""\ufffd""##),
    ("(() => { try { new TextDecoder('utf-8', { fatal: true }).decode(new Uint8Array([0xFF])); return 'no error'; } catch (e) { return e instanceof TypeError; } })()", "true"),
    ("(() => { const out = new Uint8Array(4); return new TextEncoder().encodeInto('a€', out); })()", r##"{"read":2,"written":4}"##),
    ("[btoa('Hello, world'), atob('SGVsbG8sIHdvcmxk'), btoa(''), atob('YQ')]", r##"["SGVsbG8sIHdvcmxk","Hello, world","","a"]"##),
    ("(() => { try { btoa('€'); return 'no error'; } catch (e) { return e.name; } })()", r##""InvalidCharacterError""##),
    // Crypto
    ("/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/.test(crypto.randomUUID())", "true"),
    ("(() => { const a = crypto.getRandomValues(new Uint8Array(32)); return a.length === 32 && a.some((x) => x !== 0); })()", "true"),
    ("(async () => [...new Uint8Array(await crypto.subtle.digest('SHA-256', new TextEncoder().encode('abc')))].map((b) => b.toString(16).padStart(2, '0')).join(''))()",
     r##""ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad""##),
    ("(async () => [...new Uint8Array(await crypto.subtle.digest('SHA-1', new TextEncoder().encode('abc')))].map((b) => b.toString(16).padStart(2, '0')).join(''))()",
     r##""a9993e364706816aba3e25717850c26c9cd0d89d""##),
    // structuredClone
    ("(() => { const a = { d: new Date(0), m: new Map([[1, { x: 1 }]]), s: new Set([1]), u: new Uint8Array([1, 2]) }; a.self = a; const c = structuredClone(a); return [c !== a, c.self === c, c.d.getTime(), c.m.get(1).x, c.s.has(1), c.u[1], c.m.get(1) !== a.m.get(1)]; })()",
     "[true,true,0,1,true,2,true]"),
    ("(() => { try { structuredClone(() => 1); return 'no error'; } catch (e) { return e.name; } })()", r##""DataCloneError""##),
    // AbortController
    ("(() => { const c = new AbortController(); const seen = []; c.signal.addEventListener('abort', () => seen.push('event')); c.abort(); c.abort(); return [c.signal.aborted, c.signal.reason.name, seen]; })()",
     r##"[true,"AbortError",["event"]]"##),
    ("(async () => { const s = AbortSignal.timeout(5); await new Promise((r) => setTimeout(r, 20)); return [s.aborted, s.reason.name]; })()", r##"[true,"TimeoutError"]"##),
    // Streams
    ("(async () => { const [a, b] = new ReadableStream({ start(c) { c.enqueue('x'); c.enqueue('y'); c.close(); } }).tee(); const read = async (s) => { let t = ''; for await (const v of s) t += v; return t; }; return [await read(a), await read(b)]; })()",
     r##"["xy","xy"]"##),
    ("(async () => { const upper = new TransformStream({ transform(chunk, c) { c.enqueue(chunk.toUpperCase()); } }); const out = ReadableStream.from(['a', 'b']).pipeThrough(upper); let t = ''; for await (const v of out) t += v; return t; })()",
     r##""AB""##),
    ("(async () => { const seen = []; const w = new WritableStream({ write(chunk) { seen.push(chunk); } }); await ReadableStream.from([1, 2, 3]).pipeTo(w); return seen; })()", "[1,2,3]"),
    ("(async () => { let n = 0; const s = new ReadableStream({ pull(c) { n += 1; if (n > 3) c.close(); else c.enqueue(n); } }); const r = s.getReader(); const got = []; for (;;) { const { value, done } = await r.read(); if (done) break; got.push(value); } return got; })()", "[1,2,3]"),
    ("(async () => { const s = new ReadableStream({ start(c) { c.error(new TypeError('bad')); } }); try { await s.getReader().read(); return 'no error'; } catch (e) { return e.message; } })()", r##""bad""##),
    ("(async () => { let t = ''; for await (const v of ReadableStream.from([new Uint8Array([0xE2, 0x82]), new Uint8Array([0xAC])]).pipeThrough(new TextDecoderStream())) t += v; return t; })()", r##""€""##),
    // Timers and microtasks
    ("(async () => { const order = []; setTimeout(() => order.push('timeout'), 0); queueMicrotask(() => order.push('micro')); Promise.resolve().then(() => order.push('then')); await new Promise((r) => setTimeout(r, 10)); return order; })()",
     r##"["micro","then","timeout"]"##),
    ("(async () => { let n = 0; await new Promise((resolve) => { const id = setInterval(() => { n += 1; if (n === 3) { clearInterval(id); resolve(); } }, 1); }); return n; })()", "3"),
    // Globals that must not exist or must fail closed
    ("(async () => { try { await fetch('https://example.org/'); return 'fetched'; } catch (e) { return e instanceof TypeError; } })()", "true"),
    ("typeof process === 'undefined' && typeof require === 'undefined'", "true"),
];

fn evaluator() -> TestWorker {
    start(
        &[(
            "index.js",
            r##"export default {
                 async fetch(request) {
                   const source = await request.text();
                   const value = await (0, eval)(source);
                   return Response.json({ value });
                 },
               };"##,
        )],
        Limits::default(),
    )
    .expect("worker starts")
}

#[test]
fn web_apis_match_the_standards() {
    let worker = evaluator();
    let mut failures = Vec::new();
    for (expression, expected) in CASES {
        let expected: Value = serde_json::from_str(expected).expect("expected value is JSON");
        let reply = worker.request("POST", "/", &[], expression.as_bytes());
        let actual = match reply {
            Ok(reply) if reply.status == 200 => reply.json()["value"].clone(),
            Ok(reply) => json!({ "status": reply.status, "body": reply.body }),
            Err(error) => json!({ "error": error.to_string() }),
        };
        if actual != expected {
            failures.push(format!(
                "{expression}\n  expected {expected}\n  got      {actual}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

#[test]
fn console_output_does_not_break_requests() {
    let worker = start(
        &[(
            "index.js",
            r##"export default { fetch() {
                 const cyclic = { a: 1 }; cyclic.self = cyclic;
                 console.log('text %s %d', 'x', 5, cyclic, [1, 'two'], new Map([[1, 2]]));
                 console.error(new Error('logged, not thrown'));
                 console.warn(undefined, null, 10n, Symbol('s'));
                 return new Response('ok');
               } };"##,
        )],
        Limits::default(),
    )
    .expect("worker starts");
    assert_eq!(worker.get("/").body, "ok");
}
