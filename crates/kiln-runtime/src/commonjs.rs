//! CommonJS files as ES modules, the way Node imports CommonJS from ESM.
//!
//! A file is CommonJS when its extension is `.cjs`, or when it is a `.js` file that contains no
//! ESM syntax (`import` or `export` declarations, `import.meta`) and whose nearest
//! `package.json` does not say `"type": "module"`. This is Node's rule for `.cjs` and its
//! syntax detection for `.js` files of packages without a `type`. The `module` field of many
//! packages names ESM `.js` files in packages without a `type`, so the extension alone cannot
//! decide.
//!
//! Each CommonJS file becomes two modules. Its body module runs the file's text inside a
//! function with `exports`, `require`, `module`, `__filename`, `__dirname` and a minimal
//! `process`, on the first `require` or import. The `require` calls with a string literal
//! argument are found with the oxc parser, resolved with the `require` condition, and imported
//! by the body module, so `require` is synchronous. The module that `import` loads exports
//! `module.exports` as its default export, and the names that are found statically as Node's
//! cjs-module-lexer finds them.

use std::collections::BTreeSet;
use std::path::Path;

use oxc_allocator::Allocator;
use oxc_ast::ast::{
    Argument, AssignmentExpression, CallExpression, Expression, ObjectPropertyKind,
};
use oxc_ast_visit::{walk, Visit};
use oxc_parser::{ParseOptions, Parser};
use oxc_span::SourceType;

use crate::modules::{positioned_error, SourceError};

/// Prefix of import specifiers that already are module names: a body module's proxy imports
/// the ES module or JSON file that a `require` resolved to by this name.
pub(crate) const RESOLVED_PREFIX: &str = "kiln-resolved:";

/// Prefix of the names of body modules. The body module of a file contains its code and runs
/// it on the first `require`. An `import` of a CommonJS file loads a module that takes its
/// exports from the body module.
pub(crate) const BODY_PREFIX: &str = "kiln-commonjs:";

/// Name of the function that body modules export: it runs the file once and returns
/// `module.exports`. It is a hoisted function declaration, so a circular `require` can call it
/// before the body module has been evaluated.
const EXPORTS_FUNCTION: &str = "__kiln_commonjs_exports";

/// Loading format of a module file, chosen by its extension and its package's `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ModuleFormat {
    /// ES module, JSON or TypeScript: loaded as they are today.
    Module,
    /// `.cjs`: always CommonJS.
    CommonJs,
    /// `.js` outside a `"type": "module"` package: CommonJS unless it contains ESM syntax.
    Detect,
}

/// Returns the loading format of the module named `name` (relative to `root`).
pub(crate) fn module_format(root: &Path, name: &str) -> ModuleFormat {
    match Path::new(name).extension().and_then(|ext| ext.to_str()) {
        Some("cjs") => ModuleFormat::CommonJs,
        Some("js") if !in_module_package(root, name) => ModuleFormat::Detect,
        _ => ModuleFormat::Module,
    }
}

/// Checks whether the nearest `package.json` above the file, inside `root`, has
/// `"type": "module"`.
fn in_module_package(root: &Path, name: &str) -> bool {
    let mut directory = Path::new(name).parent();
    while let Some(current) = directory {
        let manifest = root.join(current).join("package.json");
        if let Ok(text) = std::fs::read_to_string(&manifest) {
            // NOTE: a package.json that is not valid JSON counts as one without a `type`.
            return serde_json::from_str::<serde_json::Value>(&text)
                .is_ok_and(|value| value["type"] == "module");
        }
        directory = current.parent();
    }
    false
}

/// The `require` calls and exports found in a CommonJS file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CommonJsScan {
    /// Specifiers of `require` calls with a string literal argument, in order of appearance.
    pub requires: Vec<String>,
    /// Names assigned on `exports` or `module.exports`, sorted.
    pub exports: Vec<String>,
    /// Specifiers whose exports this file re-exports: `module.exports = require("x")`,
    /// `...require("x")` in a `module.exports` object and TypeScript's `__exportStar`.
    pub reexports: Vec<String>,
}

/// Parses a CommonJS candidate and returns its requires and exports. Returns `None` when the
/// format is [`ModuleFormat::Detect`] and the file contains ESM syntax, so it is an ES module.
pub fn scan(name: &str, text: &str, detect: bool) -> Result<Option<CommonJsScan>, SourceError> {
    let allocator = Allocator::default();
    let source_type = if detect {
        SourceType::unambiguous()
    } else {
        SourceType::cjs()
    };
    let options = ParseOptions {
        allow_return_outside_function: true,
        ..ParseOptions::default()
    };
    let parsed = Parser::new(&allocator, text, source_type)
        .with_options(options)
        .parse();
    if let Some(error) = parsed.diagnostics.first() {
        let offset = error
            .labels
            .first()
            .map(|label| label.offset() as usize)
            .unwrap_or(0);
        return Err(positioned_error(name, text, offset, &error.message));
    }
    if detect && parsed.module_record.has_module_syntax {
        return Ok(None);
    }
    let mut scanner = Scanner::default();
    scanner.visit_program(&parsed.program);
    Ok(Some(scanner.finish()))
}

#[derive(Default)]
struct Scanner {
    requires: Vec<String>,
    exports: BTreeSet<String>,
    reexports: Vec<String>,
}

impl Scanner {
    fn finish(self) -> CommonJsScan {
        CommonJsScan {
            requires: self.requires,
            exports: self.exports.into_iter().collect(),
            reexports: self.reexports,
        }
    }

    fn add_export(&mut self, name: &str) {
        self.exports.insert(name.to_owned());
    }

    fn add_reexport(&mut self, specifier: String) {
        if !self.reexports.contains(&specifier) {
            self.reexports.push(specifier);
        }
    }

    /// Records the exports of `module.exports = value`.
    fn scan_module_exports_value(&mut self, value: &Expression<'_>) {
        match value.without_parentheses() {
            Expression::ObjectExpression(object) => {
                for property in &object.properties {
                    match property {
                        ObjectPropertyKind::ObjectProperty(property) if !property.computed => {
                            if let Some(name) = property.key.static_name() {
                                self.add_export(&name);
                            }
                        }
                        ObjectPropertyKind::SpreadProperty(spread) => {
                            if let Some(specifier) = require_specifier(&spread.argument) {
                                self.add_reexport(specifier);
                            }
                        }
                        ObjectPropertyKind::ObjectProperty(_) => {}
                    }
                }
            }
            other => {
                if let Some(specifier) = require_specifier(other) {
                    self.add_reexport(specifier);
                }
            }
        }
    }
}

impl<'a> Visit<'a> for Scanner {
    fn visit_call_expression(&mut self, call: &CallExpression<'a>) {
        if let Some(specifier) = require_call_specifier(call) {
            if !self.requires.contains(&specifier) {
                self.requires.push(specifier);
            }
        } else if call
            .callee
            .is_specific_member_access("Object", "defineProperty")
        {
            // Object.defineProperty(exports, "name", descriptor)
            if let [target, Argument::StringLiteral(name), ..] = call.arguments.as_slice() {
                if target.as_expression().is_some_and(is_exports_object) {
                    self.add_export(&name.value);
                }
            }
        } else if is_export_star_helper(&call.callee) {
            // __exportStar(require("x"), exports) and __export(require("x")), as TypeScript
            // and tslib emit them.
            if let Some(specifier) = call
                .arguments
                .first()
                .and_then(Argument::as_expression)
                .and_then(require_specifier)
            {
                self.add_reexport(specifier);
            }
        }
        walk::walk_call_expression(self, call);
    }

    fn visit_assignment_expression(&mut self, assignment: &AssignmentExpression<'a>) {
        if let Some(member) = assignment.left.as_member_expression() {
            if member.is_specific_member_access("module", "exports") {
                self.scan_module_exports_value(&assignment.right);
            } else if is_exports_object(member.object()) {
                if let Some(name) = member.static_property_name() {
                    self.add_export(name);
                }
            }
        }
        // `exports = module.exports = {...}` is found by visiting the nested assignment.
        walk::walk_assignment_expression(self, assignment);
    }
}

/// `exports` or `module.exports`.
fn is_exports_object(expression: &Expression<'_>) -> bool {
    let expression = expression.without_parentheses();
    expression.is_specific_id("exports")
        || expression.is_specific_member_access("module", "exports")
}

/// `__exportStar`, `__export`, or either as a property such as `tslib.__exportStar`.
fn is_export_star_helper(callee: &Expression<'_>) -> bool {
    let name = match callee.without_parentheses() {
        Expression::Identifier(identifier) => Some(identifier.name.as_str()),
        other => other
            .as_member_expression()
            .and_then(|member| member.static_property_name()),
    };
    matches!(name, Some("__exportStar" | "__export"))
}

/// Returns the specifier of `require("x")` when `expression` is such a call.
fn require_specifier(expression: &Expression<'_>) -> Option<String> {
    match expression.without_parentheses() {
        Expression::CallExpression(call) => require_call_specifier(call),
        _ => None,
    }
}

fn require_call_specifier(call: &CallExpression<'_>) -> Option<String> {
    if !call.callee.is_specific_id("require") || call.arguments.len() != 1 {
        return None;
    }
    match &call.arguments[0] {
        Argument::StringLiteral(literal) => Some(literal.value.to_string()),
        Argument::TemplateLiteral(literal) => literal.single_quasi().map(|text| text.to_string()),
        _ => None,
    }
}

/// The outcome of resolving one `require` specifier: the module name, `None` for a module that
/// a `browser` field maps to `false`, or the resolver's error.
pub(crate) type Resolved = (String, Result<Option<String>, String>);

/// Returns the file of a module name, without the [`BODY_PREFIX`] of a body module.
pub(crate) fn file_of(name: &str) -> &str {
    name.strip_prefix(BODY_PREFIX).unwrap_or(name)
}

/// Returns the number of lines that `text` takes in the body module, counting the empty line
/// after a final line break, as QuickJS counts lines: by `\n` alone.
pub(crate) fn line_count(text: &str) -> u32 {
    u32::try_from(text.split('\n').count()).unwrap_or(u32::MAX)
}

/// Builds the body module of a CommonJS file. Evaluating it runs nothing: the exported
/// function runs the file the first time it is called, by an import of the file or by a
/// `require`, so files run in the order that Node runs them. The file's text starts on line 2
/// and keeps its columns, so a line map that subtracts one line restores its positions.
pub(crate) fn body_module(file: &str, text: &str, resolved: &[Resolved]) -> String {
    let filename = json_string(file);
    let dirname = json_string(file.rsplit_once('/').map_or("", |(directory, _)| directory));
    let mut code = String::with_capacity(text.len() + 2048);
    code.push_str(
        "function __kiln_commonjs_body(exports, require, module, __filename, __dirname, process) {\n",
    );
    // A hashbang line is only valid at the very start of a file: keep its length so the
    // columns of the first line do not move.
    match text.strip_prefix("#!") {
        Some(rest) => {
            code.push_str("//");
            code.push_str(rest);
        }
        None => code.push_str(text),
    }
    code.push_str("\n}\n");

    for (index, (_, result)) in resolved.iter().enumerate() {
        if let Ok(Some(module)) = result {
            code.push_str(&format!(
                "import * as __kiln_dependency_{index} from {};\n",
                json_string(&format!("{BODY_PREFIX}{module}"))
            ));
        }
    }

    // `__kiln_module` has no initializer, so evaluating this module after a circular
    // `require` already ran the file does not reset it.
    code.push_str(&format!(
        "var __kiln_module;\n\
         export function {EXPORTS_FUNCTION}() {{\n\
         \x20 if (__kiln_module === undefined) {{\n\
         \x20   __kiln_module = {{ exports: {{}}, id: {filename}, filename: {filename}, loaded: false }};\n\
         \x20   const process = {{ env: {{ NODE_ENV: \"production\" }} }};\n\
         \x20   __kiln_commonjs_body.call(__kiln_module.exports, __kiln_module.exports, __kiln_require, __kiln_module, {filename}, {dirname}, process);\n\
         \x20   __kiln_module.loaded = true;\n\
         \x20 }}\n\
         \x20 return __kiln_module.exports;\n\
         }}\n"
    ));

    code.push_str("var __kiln_ignored_exports;\n");
    code.push_str("function __kiln_require(specifier) {\n  switch (specifier) {\n");
    for (index, (specifier, result)) in resolved.iter().enumerate() {
        let case = json_string(specifier);
        match result {
            Ok(Some(_)) => code.push_str(&format!(
                "    case {case}: return __kiln_dependency_{index}.{EXPORTS_FUNCTION}();\n"
            )),
            // Bundlers replace an ignored module with one whose `module.exports` is `{}`. The
            // object is created on first use because a circular `require` can run this before
            // the module's own statements.
            Ok(None) => code.push_str(&format!(
                "    case {case}: return __kiln_ignored_exports ??= {{}};\n"
            )),
            Err(message) => code.push_str(&format!(
                "    case {case}: throw __kiln_not_found(specifier, {});\n",
                json_string(message)
            )),
        }
    }
    // `Error.captureStackTrace` drops the frames of the generated `__kiln_not_found` and
    // `__kiln_require`, so the stack starts at the `require` call in the file.
    code.push_str(&format!(
        "  }}\n\
         \x20 throw __kiln_not_found(specifier, \"only require() calls with a string literal argument are resolved\");\n\
         }}\n\
         function __kiln_not_found(specifier, reason) {{\n\
         \x20 const error = new Error(`Cannot find module '${{specifier}}' required from {}: ${{reason}}`);\n\
         \x20 error.code = \"MODULE_NOT_FOUND\";\n\
         \x20 if (typeof Error.captureStackTrace === \"function\") Error.captureStackTrace(error, __kiln_require);\n\
         \x20 return error;\n\
         }}\n",
        template_text(file)
    ));
    code
}

/// Builds the body module of a file that is not CommonJS but is the target of a `require`:
/// its function returns the namespace object of an ES module, or the value of a JSON file.
pub(crate) fn module_proxy(file: &str) -> String {
    let value = if file.ends_with(".json") {
        "namespace.default"
    } else {
        "namespace"
    };
    format!(
        "import * as namespace from {};\nexport function {EXPORTS_FUNCTION}() {{ return {value}; }}\n",
        json_string(&format!("{RESOLVED_PREFIX}{file}"))
    )
}

/// Builds the module that `import` of a CommonJS file loads. The module runs the file through
/// its body module and exports `module.exports` as the default export. Each of `exports` (the
/// scanned names, with those of re-exported files) becomes a named export.
pub(crate) fn import_module(file: &str, exports: &BTreeSet<String>) -> String {
    let mut code = format!(
        "import * as __kiln_body from {};\n\
         var __kiln_exports = __kiln_body.{EXPORTS_FUNCTION}();\n\
         export default __kiln_exports;\n",
        json_string(&format!("{BODY_PREFIX}{file}"))
    );
    let exports = exports.iter().filter(|export| export.as_str() != "default");
    for (index, export) in exports.enumerate() {
        code.push_str(&format!(
            "var __kiln_export_{index} = __kiln_exports == null ? undefined : __kiln_exports[{key}];\n\
             export {{ __kiln_export_{index} as {key} }};\n",
            key = json_string(export)
        ));
    }
    code
}

fn json_string(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

/// Escapes `text` for a template literal.
fn template_text(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('`', "\\`")
        .replace("${", "\\${")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_cjs(text: &str) -> CommonJsScan {
        scan("a.cjs", text, false)
            .expect("valid JavaScript")
            .expect("CommonJS")
    }

    #[test]
    fn exports_assignments_found() {
        let found = scan_cjs(
            "exports.a = 1;\nmodule.exports.b = 2;\nexports['c-d'] = 3;\nexports[name] = 4;\n",
        );
        assert_eq!(found.exports, ["a", "b", "c-d"]);
    }

    #[test]
    fn define_property_export_found() {
        let found = scan_cjs(
            "Object.defineProperty(exports, '__esModule', { value: true });\n\
             Object.defineProperty(module.exports, 'x', { enumerable: true, get() { return 1; } });\n\
             Object.defineProperty(other, 'y', { value: 1 });\n",
        );
        assert_eq!(found.exports, ["__esModule", "x"]);
    }

    #[test]
    fn module_exports_object_found() {
        let found = scan_cjs(
            "const a = 1;\nmodule.exports = { a, b: 2, 'c': 3, [d]: 4, e() {}, ...require('./more') };\n",
        );
        assert_eq!(found.exports, ["a", "b", "c", "e"]);
        assert_eq!(found.reexports, ["./more"]);
        assert_eq!(found.requires, ["./more"]);
    }

    #[test]
    fn reexports_found() {
        let found = scan_cjs(
            "module.exports = require('./impl');\n\
             __exportStar(require('./types'), exports);\n\
             tslib_1.__exportStar(require('./util'), exports);\n",
        );
        assert_eq!(found.reexports, ["./impl", "./types", "./util"]);
        assert!(found.exports.is_empty(), "{:?}", found.exports);
    }

    #[test]
    fn string_literal_requires_found() {
        let found = scan_cjs(
            "const a = require('a');\nconst b = require(`b`);\nconst c = require(name);\n\
             function f() { return require('./lazy.json'); }\nconst a2 = require('a');\n",
        );
        assert_eq!(found.requires, ["a", "b", "./lazy.json"]);
    }

    #[test]
    fn esm_syntax_detected() {
        let esm = scan("m.js", "import x from 'y';\nexport const a = x;\n", true).expect("valid");
        assert_eq!(esm, None);
        let cjs = scan("c.js", "exports.a = require('y');\nreturn;\n", true).expect("valid");
        assert!(cjs.is_some());
    }

    #[test]
    fn syntax_error_points_at_file() {
        let error = scan("pkg/index.js", "exports.a = 1;\nexports.b = ;\n", true).unwrap_err();
        assert_eq!(error.location, "pkg/index.js:2:13");
    }

    #[test]
    fn generated_module_keeps_lines() {
        let text = "#!/usr/bin/env node\nexports.a = 1;\n";
        let found = scan_cjs(text);
        let body = body_module("node_modules/p/a.cjs", text, &[]);
        let lines: Vec<&str> = body.lines().collect();
        assert_eq!(lines[1], "///usr/bin/env node");
        assert_eq!(lines[2], "exports.a = 1;");
        let exports = found.exports.iter().cloned().collect();
        let import = import_module("node_modules/p/a.cjs", &exports);
        assert!(
            import.contains("export { __kiln_export_0 as \"a\" };"),
            "{import}"
        );
    }
}
