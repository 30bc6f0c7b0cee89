//! The files a worker needs, found by following its imports from the main module, as
//! `kiln deploy` uploads them.

use std::collections::BTreeMap;
use std::path::Path;

use oxc_allocator::Allocator;
use oxc_parser::Parser;
use oxc_span::SourceType;

use crate::commonjs::{self, ModuleFormat};
use crate::modules::{self, SourceError, WorkerResolver};

/// Returns every file the worker in `root` loads, by path relative to `root` with `/`
/// separators: the main module, each module it imports or requires (with string literal
/// specifiers) through to `node_modules`, and the `package.json` files that decide how those
/// resolve. TypeScript files keep their names and have their types stripped.
///
/// An import that does not resolve fails, because the worker would fail to load. A `require`
/// that does not resolve is left out, because CommonJS code often requires optional packages
/// inside `try`.
pub fn collect(root: &Path, main: &str) -> Result<BTreeMap<String, String>, SourceError> {
    let resolver = WorkerResolver::new(root);
    let mut files = BTreeMap::new();
    let mut pending = vec![main.to_owned()];
    while let Some(name) = pending.pop() {
        if files.contains_key(&name) || modules::is_builtin(&name) {
            continue;
        }
        let text = modules::read_module(root, &name)?;
        let is_json = name.ends_with(".json");
        if !is_json {
            let format = commonjs::module_format(root, &name);
            for specifier in imports(&name, &text, format == ModuleFormat::Module)? {
                let target = resolver
                    .resolve_name(&name, &specifier)
                    .map_err(|message| SourceError {
                        location: name.clone(),
                        message: format!("cannot resolve import {specifier:?}: {message}"),
                    })?;
                pending.push(target);
            }
            let detect = match format {
                ModuleFormat::Module => None,
                ModuleFormat::CommonJs => Some(false),
                ModuleFormat::Detect => Some(true),
            };
            if let Some(detect) = detect {
                let requires = commonjs::scan(&name, &text, detect)?
                    .map(|scan| scan.requires)
                    .unwrap_or_default();
                for specifier in requires {
                    if let Ok(Some(target)) = resolver.resolve_require(&name, &specifier) {
                        pending.push(target);
                    }
                }
            }
        }
        add_package_manifests(root, &name, &mut files);
        let text = if is_typescript(&name) {
            modules::strip_types(&name, &text)?
        } else {
            text
        };
        files.insert(name, text);
    }
    Ok(files)
}

fn is_typescript(name: &str) -> bool {
    [".ts", ".mts", ".cts", ".tsx"]
        .iter()
        .any(|extension| name.ends_with(extension))
}

/// Returns the specifiers of a module's static imports and re-exports, and of its dynamic
/// `import()` calls whose argument is a string literal. A syntax error fails when the file must
/// be an ES module (`is_module`). Otherwise the file may be CommonJS in sloppy mode, so it has
/// no imports.
fn imports(name: &str, text: &str, is_module: bool) -> Result<Vec<String>, SourceError> {
    let allocator = Allocator::default();
    let source_type = SourceType::from_path(Path::new(name))
        .unwrap_or_else(|_| SourceType::mjs())
        .with_module(true);
    let parsed = Parser::new(&allocator, text, source_type).parse();
    if parsed.panicked || !parsed.diagnostics.is_empty() {
        if let (true, Some(error)) = (is_module, parsed.diagnostics.first()) {
            let offset = error.labels.first();
            let offset = offset.map_or(0, |label| label.offset() as usize);
            return Err(modules::positioned_error(
                name,
                text,
                offset,
                &error.message,
            ));
        }
        return Ok(Vec::new());
    }
    let record = &parsed.module_record;
    let mut specifiers: Vec<String> = record
        .requested_modules
        .keys()
        .map(|specifier| specifier.to_string())
        .collect();
    for import in &record.dynamic_imports {
        let request = import.module_request;
        let literal = &text[request.start as usize..request.end as usize];
        // A string literal starts and ends with its quote and has no other quote of that kind,
        // unlike `"./" + name + ".js"`.
        let quote = literal.chars().next().filter(|c| *c == '"' || *c == '\'');
        if let Some(quote) = quote {
            let inner = &literal[1..];
            if inner.find(quote) == Some(inner.len() - 1) && !literal.contains('\\') {
                specifiers.push(inner[..inner.len() - 1].to_owned());
            }
        }
    }
    specifiers.sort();
    specifiers.dedup();
    Ok(specifiers)
}

/// Adds each `package.json` between the file and `root`: their `type`, `main`, `exports` and
/// `browser` fields decide how the worker's modules resolve and load.
fn add_package_manifests(root: &Path, name: &str, files: &mut BTreeMap<String, String>) {
    let mut directory = Path::new(name).parent();
    while let Some(current) = directory {
        let manifest = current.join("package.json");
        let key = manifest
            .components()
            .filter_map(|component| component.as_os_str().to_str())
            .collect::<Vec<_>>()
            .join("/");
        if let std::collections::btree_map::Entry::Vacant(entry) = files.entry(key) {
            if let Ok(text) = std::fs::read_to_string(root.join(&manifest)) {
                entry.insert(text);
            }
        }
        directory = current.parent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, name: &str, text: &str) {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn follows_imports_requires_and_packages() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(
            root,
            "src/index.ts",
            "import { add } from './math';\nimport pkg from 'pkg';\n\
             const lazy = () => import('./lazy.js');\n\
             const named = (n: string) => import('./' + n + '.js');\n\
             export default { fetch(): Response { return new Response(String(add(1, 2))); } };\n",
        );
        write(
            root,
            "src/math.ts",
            "export const add = (a: number, b: number): number => a + b;\n",
        );
        write(root, "src/lazy.js", "export default 1;\n");
        write(root, "src/unused.js", "export default 2;\n");
        write(
            root,
            "node_modules/pkg/package.json",
            r#"{"main": "lib/main.js"}"#,
        );
        write(root, "node_modules/pkg/lib/main.js", "module.exports = require('./helper');\ntry { require('optional-missing'); } catch {}\n");
        write(
            root,
            "node_modules/pkg/lib/helper.js",
            "module.exports = { a: 1 };\n",
        );
        write(root, "node_modules/other/index.js", "module.exports = 3;\n");

        let files = collect(root, "src/index.ts").unwrap();
        let names: Vec<&str> = files.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "node_modules/pkg/lib/helper.js",
                "node_modules/pkg/lib/main.js",
                "node_modules/pkg/package.json",
                "src/index.ts",
                "src/lazy.js",
                "src/math.ts",
            ]
        );
        assert!(
            !files["src/math.ts"].contains("number"),
            "types are stripped"
        );
        assert!(files["src/math.ts"].contains("a + b"));
    }

    #[test]
    fn unresolved_import_and_syntax_error_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "index.js",
            "import x from './missing.js';\nexport default x;\n",
        );
        let error = collect(dir.path(), "index.js").unwrap_err();
        assert_eq!(error.location, "index.js");
        assert!(error.message.contains("./missing.js"), "{error}");

        write(
            dir.path(),
            "index.mjs",
            "export default {\n  fetch( {\n};\n",
        );
        let error = collect(dir.path(), "index.mjs").unwrap_err();
        assert!(error.location.starts_with("index.mjs:"), "{error}");
    }
}
