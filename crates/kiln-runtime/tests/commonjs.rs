//! CommonJS packages imported by module workers: wrapping, `require`, exports and errors.

mod support;

use kiln_runtime::{Limits, WorkerError};
use serde_json::{json, Value};
use support::start;

/// Starts a worker whose `index.js` responds with the JSON value of `expression`.
fn evaluate(files: &[(&str, &str)], imports: &str, expression: &str) -> Value {
    let main = format!(
        "{imports}\nexport default {{ async fetch() {{ return Response.json(await ({expression})); }} }};\n"
    );
    let mut all = vec![("index.js", main.as_str())];
    all.extend_from_slice(files);
    let worker = start(&all, Limits::default())
        .unwrap_or_else(|err| panic!("worker failed to start: {err}"));
    let reply = worker.get("/");
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()
}

const PLAIN: (&str, &str) = (
    "node_modules/plain/package.json",
    r#"{"name": "plain", "main": "lib/index.js"}"#,
);
const PLAIN_INDEX: (&str, &str) = (
    "node_modules/plain/lib/index.js",
    "'use strict';\nconst helper = require('./helper');\nconst data = require('../data.json');\n\
     exports.twice = (x) => helper.double(x);\nexports.version = data.version;\n\
     exports.env = process.env.NODE_ENV;\nexports.file = __filename;\nexports.dir = __dirname;\n",
);
const PLAIN_HELPER: (&str, &str) = (
    "node_modules/plain/lib/helper.js",
    "module.exports = { double(x) { return x * 2; } };\n",
);
const PLAIN_DATA: (&str, &str) = ("node_modules/plain/data.json", r#"{"version": "1.2.3"}"#);

#[test]
fn named_and_default_exports_import() {
    let files = [PLAIN, PLAIN_INDEX, PLAIN_HELPER, PLAIN_DATA];
    let value = evaluate(
        &files,
        "import plain, { twice, version } from 'plain';",
        "[twice(21), version, plain.twice(2), plain.env, plain.file, plain.dir]",
    );
    assert_eq!(
        value,
        json!([
            42,
            "1.2.3",
            4,
            "production",
            "node_modules/plain/lib/index.js",
            "node_modules/plain/lib"
        ])
    );
}

#[test]
fn process_is_not_global() {
    let files = [PLAIN, PLAIN_INDEX, PLAIN_HELPER, PLAIN_DATA];
    let value = evaluate(&files, "import 'plain';", "typeof globalThis.process");
    assert_eq!(value, json!("undefined"));
}

#[test]
fn circular_requires_load() {
    let files = [
        (
            "node_modules/cycle/package.json",
            r#"{"name": "cycle", "main": "a.js"}"#,
        ),
        (
            "node_modules/cycle/a.js",
            "exports.early = 'a-early';\nconst b = require('./b');\n\
             exports.seenByA = b.sawA;\nexports.late = 'a-late';\n",
        ),
        (
            "node_modules/cycle/b.js",
            "const a = require('./a');\nexports.sawA = a.early + ',' + a.late;\n",
        ),
    ];
    let value = evaluate(
        &files,
        "import { seenByA, late } from 'cycle';",
        "[seenByA, late]",
    );
    assert_eq!(value, json!(["a-early,undefined", "a-late"]));
}

#[test]
fn require_conditions_pick_cjs_build() {
    let files = [
        (
            "node_modules/dual/package.json",
            r#"{"name": "dual", "exports": {".": {"import": "./esm.mjs", "require": "./cjs.cjs"}}}"#,
        ),
        ("node_modules/dual/esm.mjs", "export const kind = 'esm';\n"),
        ("node_modules/dual/cjs.cjs", "exports.kind = 'cjs';\n"),
        (
            "node_modules/user/package.json",
            r#"{"name": "user", "main": "index.js"}"#,
        ),
        (
            "node_modules/user/index.js",
            "exports.viaRequire = require('dual').kind;\n",
        ),
    ];
    let value = evaluate(
        &files,
        "import { kind } from 'dual';\nimport { viaRequire } from 'user';",
        "[kind, viaRequire]",
    );
    assert_eq!(value, json!(["esm", "cjs"]));
}

#[test]
fn unrequired_file_never_runs() {
    let files = [
        (
            "node_modules/lazy/package.json",
            r#"{"name": "lazy", "main": "index.js"}"#,
        ),
        (
            "node_modules/lazy/index.js",
            "if (process.env.NODE_ENV === 'production') {\n  module.exports = require('./prod.js');\n\
             } else {\n  module.exports = require('./dev.js');\n}\n",
        ),
        (
            "node_modules/lazy/prod.js",
            "globalThis.ranProd = true;\nexports.build = 'prod';\n",
        ),
        (
            "node_modules/lazy/dev.js",
            "globalThis.ranDev = true;\nexports.build = 'dev';\n",
        ),
    ];
    let value = evaluate(
        &files,
        "import { build } from 'lazy';",
        "[build, globalThis.ranProd === true, globalThis.ranDev === true]",
    );
    assert_eq!(value, json!(["prod", true, false]));
}

#[test]
fn require_of_esm_returns_namespace() {
    let files = [
        (
            "node_modules/mixed/package.json",
            r#"{"name": "mixed", "main": "index.js"}"#,
        ),
        (
            "node_modules/mixed/index.js",
            "const esm = require('./esm.mjs');\nexports.value = esm.value + esm.default;\n",
        ),
        (
            "node_modules/mixed/esm.mjs",
            "export const value = 'named';\nexport default '+default';\n",
        ),
    ];
    let value = evaluate(&files, "import { value } from 'mixed';", "value");
    assert_eq!(value, json!("named+default"));
}

#[test]
fn module_exports_require_reexports() {
    let files = [
        (
            "node_modules/facade/package.json",
            r#"{"name": "facade", "main": "index.js"}"#,
        ),
        (
            "node_modules/facade/index.js",
            "module.exports = require('./impl');\n",
        ),
        (
            "node_modules/facade/impl.js",
            "exports.inner = 'from impl';\n",
        ),
    ];
    let value = evaluate(&files, "import { inner } from 'facade';", "inner");
    assert_eq!(value, json!("from impl"));
}

#[test]
fn missing_require_throws_at_call() {
    let files = [
        (
            "node_modules/optional/package.json",
            r#"{"name": "optional", "main": "index.js"}"#,
        ),
        (
            "node_modules/optional/index.js",
            "let found;\ntry { found = require('not-installed'); } catch (error) {\n\
             found = [error.message, error.code];\n}\nmodule.exports = found;\n\
             module.exports.dynamic = (name) => require(name);\n",
        ),
    ];
    let value = evaluate(
        &files,
        "import found from 'optional';",
        "(() => { let dynamic; try { found.dynamic('x' + 1); } catch (error) { dynamic = error.message; } return [found[0], found[1], dynamic]; })()",
    );
    let message = value[0].as_str().expect("message");
    assert!(
        message.starts_with(
            "Cannot find module 'not-installed' required from node_modules/optional/index.js"
        ),
        "{message}"
    );
    assert_eq!(value[1], json!("MODULE_NOT_FOUND"));
    let dynamic = value[2].as_str().expect("dynamic message");
    assert!(dynamic.contains("Cannot find module 'x1'"), "{dynamic}");
    assert!(dynamic.contains("string literal"), "{dynamic}");
}

#[test]
fn esm_js_in_typeless_package_stays_esm() {
    let files = [
        (
            "node_modules/modfield/package.json",
            r#"{"name": "modfield", "main": "cjs.js", "module": "esm.js"}"#,
        ),
        (
            "node_modules/modfield/esm.js",
            "export const kind = 'esm';\n",
        ),
        ("node_modules/modfield/cjs.js", "exports.kind = 'cjs';\n"),
    ];
    let value = evaluate(&files, "import { kind } from 'modfield';", "kind");
    assert_eq!(value, json!("esm"));
}

#[test]
fn stack_points_at_original_line() {
    let files = [
        (
            "index.js",
            "import { fail } from 'thrower';
export default { fetch() { fail(); } };
",
        ),
        (
            "node_modules/thrower/package.json",
            r#"{"name": "thrower", "main": "index.js"}"#,
        ),
        (
            "node_modules/thrower/index.js",
            "// line 1\nexports.fail = function () {\n  throw new Error('boom');\n};\n",
        ),
    ];
    let worker = start(&files, Limits::default()).expect("worker starts");
    let error = worker
        .request("GET", "/", &[], b"")
        .err()
        .expect("the request fails");
    let WorkerError::Exception { message, stack, .. } = error else {
        panic!("expected an exception, got {error:?}");
    };
    assert_eq!(message, "Error: boom");
    // QuickJS names the position of `Error` in `throw new Error('boom')`: line 3, column 13.
    assert!(
        stack.contains("node_modules/thrower/index.js:3:13"),
        "{stack}"
    );
    assert!(!stack.contains("kiln-commonjs:"), "{stack}");
}

#[test]
fn syntax_error_fails_start_with_position() {
    let files = [
        (
            "index.js",
            "import 'broken';\nexport default { fetch() { return new Response('x'); } };\n",
        ),
        (
            "node_modules/broken/package.json",
            r#"{"name": "broken", "main": "index.js"}"#,
        ),
        (
            "node_modules/broken/index.js",
            "exports.a = 1;\nexports.b = ;\n",
        ),
    ];
    let error = start(&files, Limits::default()).err().expect("start fails");
    assert!(
        error.0.contains("node_modules/broken/index.js:2:13"),
        "{}",
        error.0
    );
}

/// A package like object-inspect: its `browser` field maps a Node-only file and a Node
/// built-in to `false`, and one file to a replacement.
const BROWSER_PACKAGE: [(&str, &str); 5] = [
    (
        "node_modules/browsery/package.json",
        r#"{"name": "browsery", "main": "index.js",
            "browser": {"./util.inspect.js": false, "util": false, "./impl.js": "./impl-browser.js"}}"#,
    ),
    (
        "node_modules/browsery/index.js",
        "const inspect = require('./util.inspect');\nconst util = require('util');\n\
         exports.inspect = [typeof inspect, Object.keys(inspect).length];\n\
         exports.util = [typeof util, Object.keys(util).length, util === require('util')];\n\
         exports.impl = require('./impl.js').kind;\n",
    ),
    (
        "node_modules/browsery/util.inspect.js",
        "module.exports = require('util').inspect;\n",
    ),
    ("node_modules/browsery/impl.js", "exports.kind = 'node';\n"),
    (
        "node_modules/browsery/impl-browser.js",
        "exports.kind = 'browser';\n",
    ),
];

#[test]
fn browser_field_false_gives_empty_exports() {
    let value = evaluate(
        &BROWSER_PACKAGE,
        "import { inspect, util } from 'browsery';",
        "[inspect, util]",
    );
    assert_eq!(value[0], json!(["object", 0]));
    assert_eq!(value[1], json!(["object", 0, true]));
}

#[test]
fn browser_field_replaces_required_file() {
    let value = evaluate(&BROWSER_PACKAGE, "import { impl } from 'browsery';", "impl");
    assert_eq!(value, json!("browser"));
}

#[test]
fn browser_field_applies_to_imports() {
    let mut files = BROWSER_PACKAGE.to_vec();
    files.push((
        "node_modules/browsery/esm.mjs",
        "import inspect from './util.inspect.js';\nimport { kind } from './impl.js';\n\
         export const found = [typeof inspect, Object.keys(inspect).length, kind];\n",
    ));
    let value = evaluate(
        &files,
        "import { found } from './node_modules/browsery/esm.mjs';",
        "found",
    );
    assert_eq!(value, json!(["object", 0, "browser"]));
}

#[test]
fn missing_require_error_names_call_site() {
    let files = [
        (
            "index.js",
            "import 'oneline';\nexport default { fetch() { return new Response('x'); } };\n",
        ),
        (
            "node_modules/oneline/package.json",
            r#"{"name": "oneline", "main": "index.js"}"#,
        ),
        (
            "node_modules/oneline/index.js",
            "// Needs a module that is not installed.\nconst a = 1;\nmodule.exports = require('not-installed').inspect;\n",
        ),
    ];
    let error = start(&files, Limits::default()).err().expect("start fails");
    let message = error.0;
    assert!(
        message.contains("Cannot find module 'not-installed'"),
        "{message}"
    );
    // The error starts with the position of `require` on line 3 of the three-line file.
    assert!(
        message.starts_with("node_modules/oneline/index.js:3:18:"),
        "{message}"
    );
    for line in 4..40 {
        let generated = format!("node_modules/oneline/index.js:{line}:");
        assert!(!message.contains(&generated), "{message}");
    }
    assert!(!message.contains("kiln-commonjs:"), "{message}");
}
