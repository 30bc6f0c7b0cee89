//! Module loading: relative imports, npm packages from the worker folder's `node_modules`,
//! TypeScript stripped with oxc, JSON modules and Kiln's built-in modules.
//!
//! Module names are paths relative to the worker folder (`index.ts`,
//! `node_modules/zod/index.js`), so stack traces and errors show short paths. Built-in modules
//! are named `kiln:<specifier>`.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use oxc_allocator::Allocator;
use oxc_codegen::{Codegen, CodegenOptions};
use oxc_parser::Parser;
use oxc_semantic::SemanticBuilder;
use oxc_span::SourceType;
use oxc_transformer::{TransformOptions, Transformer};
use rquickjs::loader::{ImportAttributes, Loader, Resolver};
use rquickjs::{Ctx, Module};

use crate::bytecode::DeclareError;
use crate::commonjs::{self, ModuleFormat, Resolved};

/// Source of the built-in `@cloudflare/ai` module, whose `Ai` class wraps `env.AI`.
const CLOUDFLARE_AI: &str = include_str!("js/cloudflare_ai.js");

/// Prefix of the names of built-in modules.
const BUILTIN_PREFIX: &str = "kiln:";

/// Name of the empty module that an `import` loads when a package's `browser` field maps the
/// imported file or package to `false`.
const IGNORED_MODULE: &str = "kiln:ignored";

/// Source of [`IGNORED_MODULE`]: an empty object as the default export, as bundlers give an
/// ignored module an empty `module.exports`.
const IGNORED_SOURCE: &str = "export default {};\n";

/// Returns whether a module name is one of Kiln's built-in modules rather than a file.
pub(crate) fn is_builtin(name: &str) -> bool {
    name.starts_with(BUILTIN_PREFIX)
}

/// Returns the source of a built-in module by import specifier.
fn builtin_source(specifier: &str) -> Option<&'static str> {
    match specifier {
        "@cloudflare/ai" => Some(CLOUDFLARE_AI),
        _ => None,
    }
}

/// A module that failed to load, with the position of the error when one is known.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{location}: {message}")]
pub struct SourceError {
    /// `file:line:column`, or the file alone.
    pub location: String,
    pub message: String,
}

/// Resolves import specifiers the way bundlers for workers do: relative paths with the usual
/// extensions, then packages from `node_modules` with the `workerd`, `worker`, `browser`,
/// `import` and `default` export conditions. The `require` calls of CommonJS files resolve
/// with the `node`, `require` and `default` conditions and the `main` field instead. Both
/// apply the file and package mappings of a package's `browser` field object, as bundlers for
/// the browser platform do. A mapping to `false` makes the module empty.
pub struct WorkerResolver {
    root: PathBuf,
    resolver: oxc_resolver::Resolver,
    require_resolver: oxc_resolver::Resolver,
}

impl WorkerResolver {
    pub fn new(root: &Path) -> Self {
        let options = oxc_resolver::ResolveOptions {
            extensions: [".ts", ".tsx", ".mts", ".js", ".mjs", ".cjs", ".json"]
                .map(String::from)
                .to_vec(),
            extension_alias: vec![(
                ".js".into(),
                vec![".ts".into(), ".tsx".into(), ".js".into()],
            )],
            condition_names: [
                "workerd", "worker", "browser", "import", "module", "default",
            ]
            .map(String::from)
            .to_vec(),
            main_fields: vec!["module".into(), "main".into()],
            alias_fields: vec![vec!["browser".into()]],
            ..oxc_resolver::ResolveOptions::default()
        };
        let require_options = oxc_resolver::ResolveOptions {
            extensions: [".js", ".cjs", ".json"].map(String::from).to_vec(),
            condition_names: ["node", "require", "default"].map(String::from).to_vec(),
            main_fields: vec!["main".into()],
            alias_fields: vec![vec!["browser".into()]],
            ..oxc_resolver::ResolveOptions::default()
        };
        Self {
            root: root.to_path_buf(),
            resolver: oxc_resolver::Resolver::new(options),
            require_resolver: oxc_resolver::Resolver::new(require_options),
        }
    }

    /// Returns the worker folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Resolves the specifier of a `require` call in the module named `base` to a module name.
    /// Returns `Ok(None)` when a `browser` field maps the specifier to `false`.
    pub fn resolve_require(&self, base: &str, specifier: &str) -> Result<Option<String>, String> {
        let importer = self.root.join(base);
        let directory = importer.parent().unwrap_or(&self.root);
        match self.require_resolver.resolve(directory, specifier) {
            Ok(resolution) => self.module_name(resolution.path()).map(Some),
            Err(oxc_resolver::ResolveError::Ignored(_)) => Ok(None),
            Err(err) => Err(err.to_string()),
        }
    }

    /// Resolves `specifier` imported from the module named `base` to a module name.
    pub fn resolve_name(&self, base: &str, specifier: &str) -> Result<String, String> {
        if builtin_source(specifier).is_some() {
            return Ok(format!("{BUILTIN_PREFIX}{specifier}"));
        }
        if base.starts_with(BUILTIN_PREFIX) {
            return Err("built-in modules import nothing".into());
        }
        if let Some(name) = specifier.strip_prefix(commonjs::RESOLVED_PREFIX) {
            // Checked like any resolution, so that no import reaches outside the worker folder.
            return self.module_name(&self.root.join(name));
        }
        if let Some(name) = specifier.strip_prefix(commonjs::BODY_PREFIX) {
            let name = self.module_name(&self.root.join(name))?;
            return Ok(format!("{}{name}", commonjs::BODY_PREFIX));
        }
        let importer = self.root.join(base);
        let directory = importer.parent().unwrap_or(&self.root);
        match self.resolver.resolve(directory, specifier) {
            Ok(resolution) => self.module_name(resolution.path()),
            Err(oxc_resolver::ResolveError::Ignored(_)) => Ok(IGNORED_MODULE.to_owned()),
            Err(err) => Err(err.to_string()),
        }
    }

    /// Returns the module name of a file: its path relative to the worker folder.
    pub fn module_name(&self, path: &Path) -> Result<String, String> {
        let root = self
            .root
            .canonicalize()
            .unwrap_or_else(|_| self.root.clone());
        let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        let relative = path.strip_prefix(&root).map_err(|_| {
            format!(
                "{} is outside the worker folder {}",
                path.display(),
                root.display()
            )
        })?;
        Ok(relative
            .components()
            .filter_map(|component| match component {
                Component::Normal(part) => part.to_str(),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("/"))
    }
}

impl Resolver for WorkerResolver {
    fn resolve<'js>(
        &mut self,
        _ctx: &Ctx<'js>,
        base: &str,
        name: &str,
        _attributes: Option<ImportAttributes<'js>>,
    ) -> rquickjs::Result<String> {
        self.resolve_name(base, name)
            .map_err(|message| rquickjs::Error::new_resolving_message(base, name, message))
    }
}

/// Loads modules named by [`WorkerResolver`] from the worker folder, and records the source
/// map of every TypeScript module in `source_maps`.
pub struct WorkerLoader {
    resolver: WorkerResolver,
    source_maps: SourceMaps,
}

impl WorkerLoader {
    pub fn new(root: &Path, source_maps: SourceMaps) -> Self {
        Self {
            resolver: WorkerResolver::new(root),
            source_maps,
        }
    }
}

impl Loader for WorkerLoader {
    fn load<'js>(
        &mut self,
        ctx: &Ctx<'js>,
        name: &str,
        _attributes: Option<ImportAttributes<'js>>,
    ) -> rquickjs::Result<Module<'js, rquickjs::module::Declared>> {
        if name == IGNORED_MODULE {
            return Module::declare(ctx.clone(), name, IGNORED_SOURCE);
        }
        if let Some(specifier) = name.strip_prefix(BUILTIN_PREFIX) {
            let source =
                builtin_source(specifier).ok_or_else(|| rquickjs::Error::new_loading(name))?;
            return Module::declare(ctx.clone(), name, source);
        }
        crate::bytecode::declare(ctx, &self.resolver, name, &self.source_maps).map_err(|err| {
            match err {
                DeclareError::Source(err) => {
                    rquickjs::Error::new_loading_message(name, err.to_string())
                }
                DeclareError::Engine(err) => err,
            }
        })
    }
}

/// JavaScript module source, with the map back to the file's own lines for TypeScript and
/// CommonJS.
pub struct LoadedSource {
    pub code: String,
    pub map: Option<LineMap>,
    /// For a CommonJS file, the resolution of each `require` specifier it contains. The code
    /// depends on them, so a cached compilation is valid only while they stay the same.
    pub requires: Vec<Resolved>,
    /// False when the code depends on other files' text, so it must not be cached by this
    /// file's text alone.
    pub cacheable: bool,
}

/// Reads a module file and turns it into JavaScript module source: TypeScript is stripped,
/// JSON becomes a module whose default export is the parsed value, and CommonJS becomes an
/// ES module whose default export is `module.exports`.
pub fn load_source(resolver: &WorkerResolver, name: &str) -> Result<LoadedSource, SourceError> {
    let file = commonjs::file_of(name);
    let text = read_module(&resolver.root, file)?;
    let format = commonjs::module_format(&resolver.root, file);
    transform_format(resolver, name, text, format)
}

/// Turns a module file's text into JavaScript module source, by its [`ModuleFormat`] and by
/// whether `name` is the body module of a `require` target.
pub(crate) fn transform_format(
    resolver: &WorkerResolver,
    name: &str,
    text: String,
    format: ModuleFormat,
) -> Result<LoadedSource, SourceError> {
    let file = commonjs::file_of(name);
    let is_body = file.len() != name.len();
    let scan = match format {
        ModuleFormat::Module => None,
        ModuleFormat::CommonJs => commonjs::scan(file, &text, false)?,
        ModuleFormat::Detect => commonjs::scan(file, &text, true)?,
    };
    let resolve_all = |specifiers: &[String]| -> Vec<Resolved> {
        specifiers
            .iter()
            .map(|specifier| (specifier.clone(), resolver.resolve_require(file, specifier)))
            .collect()
    };
    match (scan, is_body) {
        (None, false) => transform(name, text),
        (None, true) => Ok(LoadedSource {
            code: commonjs::module_proxy(file),
            map: Some(LineMap::generated()),
            requires: Vec::new(),
            cacheable: true,
        }),
        (Some(scan), true) => {
            let requires = resolve_all(&scan.requires);
            Ok(LoadedSource {
                code: commonjs::body_module(file, &text, &requires),
                map: Some(LineMap::shifted(1, commonjs::line_count(&text))),
                requires,
                cacheable: true,
            })
        }
        (Some(scan), false) => {
            let mut exports: BTreeSet<String> = scan.exports.iter().cloned().collect();
            let mut visited = HashSet::from([file.to_owned()]);
            add_reexported_names(resolver, file, &scan.reexports, &mut exports, &mut visited);
            Ok(LoadedSource {
                code: commonjs::import_module(file, &exports),
                map: Some(LineMap::generated()),
                requires: Vec::new(),
                cacheable: false,
            })
        }
    }
}

/// Adds the export names of the CommonJS files that `file` re-exports, and of the files that
/// those re-export, as Node does for `module.exports = require("x")`. Files that fail to
/// resolve, read or parse add nothing: their `require` reports the error when it runs.
fn add_reexported_names(
    resolver: &WorkerResolver,
    file: &str,
    specifiers: &[String],
    exports: &mut BTreeSet<String>,
    visited: &mut HashSet<String>,
) {
    for specifier in specifiers {
        let Ok(Some(target)) = resolver.resolve_require(file, specifier) else {
            continue;
        };
        if !visited.insert(target.clone()) {
            continue;
        }
        let detect = match commonjs::module_format(&resolver.root, &target) {
            ModuleFormat::CommonJs => false,
            ModuleFormat::Detect => true,
            // NOTE: the names of a re-exported ES module are not added, but its exports are
            // still reachable through the default export.
            ModuleFormat::Module => continue,
        };
        let Ok(text) = read_module(&resolver.root, &target) else {
            continue;
        };
        if let Ok(Some(scan)) = commonjs::scan(&target, &text, detect) {
            exports.extend(scan.exports.iter().cloned());
            add_reexported_names(resolver, &target, &scan.reexports, exports, visited);
        }
    }
}

/// Reads the file of the module named `name`.
pub fn read_module(root: &Path, name: &str) -> Result<String, SourceError> {
    let path = root.join(name);
    std::fs::read_to_string(&path).map_err(|err| SourceError {
        location: name.to_owned(),
        message: format!("failed to read {}: {err}", path.display()),
    })
}

/// Turns a module file's text into JavaScript module source, by the file's extension.
pub fn transform(name: &str, text: String) -> Result<LoadedSource, SourceError> {
    let extension = Path::new(name)
        .extension()
        .and_then(|ext| ext.to_str())
        .unwrap_or("");
    match extension {
        "json" => Ok(LoadedSource {
            code: json_module(name, &text)?,
            map: None,
            requires: Vec::new(),
            cacheable: true,
        }),
        "ts" | "mts" | "tsx" | "cts" => {
            let (code, map) = strip_types_mapped(name, &text)?;
            Ok(LoadedSource {
                code,
                map: Some(map),
                requires: Vec::new(),
                cacheable: true,
            })
        }
        _ => Ok(LoadedSource {
            code: text,
            map: None,
            requires: Vec::new(),
            cacheable: true,
        }),
    }
}

fn json_module(name: &str, text: &str) -> Result<String, SourceError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|err| SourceError {
        location: format!("{name}:{}:{}", err.line(), err.column()),
        message: format!("invalid JSON: {err}"),
    })?;
    Ok(format!("export default {value};\n"))
}

/// Removes TypeScript syntax with oxc, leaving JavaScript of the same ECMAScript version.
pub fn strip_types(name: &str, text: &str) -> Result<String, SourceError> {
    strip_types_mapped(name, text).map(|(code, _)| code)
}

/// Like [`strip_types`], and also returns the map from output positions to `text`'s.
fn strip_types_mapped(name: &str, text: &str) -> Result<(String, LineMap), SourceError> {
    let allocator = Allocator::default();
    let path = Path::new(name);
    let source_type = SourceType::from_path(path)
        .unwrap_or_else(|_| SourceType::ts())
        .with_module(true);
    let parsed = Parser::new(&allocator, text, source_type).parse();
    if let Some(error) = parsed.diagnostics.first() {
        let offset = error
            .labels
            .first()
            .map(|label| label.offset() as usize)
            .unwrap_or(0);
        return Err(positioned_error(name, text, offset, &error.message));
    }
    let mut program = parsed.program;

    let semantic = SemanticBuilder::new().build(&program);
    let scoping = semantic.semantic.into_scoping();
    let options = TransformOptions::default();
    let transformed =
        Transformer::new(&allocator, path, &options).build_with_scoping(scoping, &mut program);
    if let Some(error) = transformed.diagnostics.first() {
        let offset = error
            .labels
            .first()
            .map(|label| label.offset() as usize)
            .unwrap_or(0);
        return Err(positioned_error(name, text, offset, &error.message));
    }
    let options = CodegenOptions {
        source_map_path: Some(path.to_path_buf()),
        ..CodegenOptions::default()
    };
    let output = Codegen::new().with_options(options).build(&program);
    let mut map = LineMap::default();
    if let Some(source_map) = output.map {
        for token in source_map.get_tokens() {
            map.add(
                token.get_dst_line(),
                token.get_dst_col(),
                token.get_src_line(),
                token.get_src_col(),
            );
        }
    }
    Ok((output.code, map))
}

/// Output position → source position of one stripped or wrapped module; 0-based lines and
/// columns.
#[derive(Debug, Default, Clone)]
pub struct LineMap {
    /// Per output line: (output column, source line, source column), sorted by column.
    lines: Vec<Vec<(u32, u32, u32)>>,
    /// Lines added in front of an unchanged source, for a map without tokens.
    shift: u32,
    /// Number of source lines, for a module that wraps its source in generated code. Positions
    /// outside those lines are in the generated code and have no source position.
    wrapped_lines: Option<u32>,
}

impl LineMap {
    /// Returns the map of a source with `source_lines` lines that starts `lines` lines down in
    /// generated code and is otherwise unchanged.
    pub fn shifted(lines: u32, source_lines: u32) -> Self {
        Self {
            lines: Vec::new(),
            shift: lines,
            wrapped_lines: Some(source_lines),
        }
    }

    /// Returns the map of a module that is all generated code, so none of its positions is in
    /// the file that it is named after.
    pub fn generated() -> Self {
        Self::shifted(0, 0)
    }

    fn add(&mut self, line: u32, column: u32, source_line: u32, source_column: u32) {
        let line = line as usize;
        if self.lines.len() <= line {
            self.lines.resize_with(line + 1, Vec::new);
        }
        self.lines[line].push((column, source_line, source_column));
    }

    /// Looks up the 1-based source position of a 1-based output position.
    fn lookup(&self, line: u32, column: u32) -> Option<(u32, u32)> {
        if self.lines.is_empty() {
            let source_line = line
                .checked_sub(self.shift)
                .filter(|&line| line > 0)
                .filter(|&line| self.wrapped_lines.is_none_or(|count| line <= count))?;
            return Some((source_line, column));
        }
        let tokens = self.lines.get(line.checked_sub(1)? as usize)?;
        let column = column.saturating_sub(1);
        let index = tokens.partition_point(|&(start, _, _)| start <= column);
        let &(_, source_line, source_column) = tokens.get(index.checked_sub(1)?)?;
        Some((source_line + 1, source_column + 1))
    }
}

/// The line maps of an isolate's TypeScript modules, by module name. Stack traces name
/// positions in the stripped code; [`SourceMaps::remap`] turns them back into the file's.
#[derive(Debug, Default, Clone)]
pub struct SourceMaps {
    maps: Rc<RefCell<HashMap<String, LineMap>>>,
}

impl SourceMaps {
    pub fn insert(&self, name: &str, map: LineMap) {
        self.maps.borrow_mut().insert(name.to_owned(), map);
    }

    /// Rewrites every `module:line:column` of a mapped module in `text`.
    pub fn remap(&self, text: &str) -> String {
        let maps = self.maps.borrow();
        if maps.is_empty() {
            return text.to_owned();
        }
        let mut output = String::with_capacity(text.len());
        let mut rest = text;
        while let Some((name, map, start)) = maps
            .iter()
            .filter_map(|(name, map)| Some((name, map, rest.find(&format!("{name}:"))?)))
            .min_by_key(|(_, _, start)| *start)
        {
            let after = start + name.len() + 1;
            output.push_str(&rest[..after]);
            rest = &rest[after..];
            let (position, consumed) = parse_position(rest);
            let Some((line, column)) = position else {
                continue;
            };
            if let Some((line, column)) = map.lookup(line, column) {
                output.push_str(&format!("{line}:{column}"));
                rest = &rest[consumed..];
            } else if map.wrapped_lines.is_some() {
                // A frame in generated wrapper code: name the file without a position, so that
                // no one looks for it on a line of the file that does not contain it.
                output.pop();
                rest = &rest[consumed..];
            }
        }
        output.push_str(rest);
        // Body modules are named after their file with a prefix; traces show the file.
        output.replace(commonjs::BODY_PREFIX, "")
    }
}

/// Parses `line:column` at the start of `text`; returns it and the bytes it took.
fn parse_position(text: &str) -> (Option<(u32, u32)>, usize) {
    let line_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let Ok(line) = text[..line_end].parse() else {
        return (None, 0);
    };
    let Some(after_colon) = text[line_end..].strip_prefix(':') else {
        return (None, 0);
    };
    let column_end = after_colon
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(after_colon.len());
    match after_colon[..column_end].parse() {
        Ok(column) => (Some((line, column)), line_end + 1 + column_end),
        Err(_) => (None, 0),
    }
}

/// Builds an error at a byte offset of `text`, with 1-based line and column and the source line.
pub(crate) fn positioned_error(
    name: &str,
    text: &str,
    offset: usize,
    message: &str,
) -> SourceError {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |index| index + 1);
    let column = text[line_start..offset].chars().count() + 1;
    let source_line = text[line_start..].lines().next().unwrap_or("");
    SourceError {
        location: format!("{name}:{line}:{column}"),
        message: format!("{message}\n    {source_line}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_stripped() {
        let source =
            "interface A { x: number }\nexport const f = (a: A): number => a.x as number;\n";
        let output = strip_types("a.ts", source).expect("valid TypeScript");
        assert!(!output.contains("interface"), "{output}");
        assert!(!output.contains(": number"), "{output}");
        assert!(output.contains("export const f"), "{output}");
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let error = strip_types("bad.ts", "const a = 1;\nconst b = ;\n").unwrap_err();
        assert_eq!(error.location, "bad.ts:2:11");
        assert!(error.message.contains("const b = ;"), "{}", error.message);
    }

    #[test]
    fn stack_positions_map_back_to_typescript() {
        let source = "interface A {\n  x: number;\n}\n\nexport function f(a: A): number {\n  throw new Error('x' + a.x);\n}\n";
        let (code, map) = strip_types_mapped("a.ts", source).expect("valid TypeScript");
        let (line, text) = code
            .lines()
            .enumerate()
            .find(|(_, text)| text.contains("throw"))
            .expect("throw survives");
        let column = text.find("throw").expect("throw") + 1;
        let maps = SourceMaps::default();
        maps.insert("a.ts", map);
        let frame = format!("    at f (a.ts:{}:{column})", line + 1);
        assert_eq!(maps.remap(&frame), "    at f (a.ts:6:3)");
        assert_eq!(maps.remap("at b.ts:1:1"), "at b.ts:1:1");
    }

    #[test]
    fn wrapper_frames_drop_position() {
        let maps = SourceMaps::default();
        let body = format!("{}pkg/a.js", commonjs::BODY_PREFIX);
        maps.insert(&body, LineMap::shifted(1, 2));
        maps.insert("pkg/a.js", LineMap::generated());
        let stack = format!(
            "at f ({body}:2:5)\nat g ({body}:3:1)\nat h ({body}:4:9)\nat i ({body}:1:1)\nat <anonymous> (pkg/a.js:2:34)"
        );
        let remapped = maps.remap(&stack);
        let lines: Vec<&str> = remapped.lines().collect();
        assert_eq!(lines[0], "at f (pkg/a.js:1:5)");
        assert_eq!(lines[1], "at g (pkg/a.js:2:1)");
        assert_eq!(lines[2], "at h (pkg/a.js)");
        assert_eq!(lines[3], "at i (pkg/a.js)");
        assert_eq!(lines[4], "at <anonymous> (pkg/a.js)");
    }

    #[test]
    fn browser_field_false_resolves_ignored() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("node_modules/pkg")).expect("pkg dir");
        std::fs::write(
            root.join("node_modules/pkg/package.json"),
            r#"{"name": "pkg", "browser": {"./node.js": false, "./a.js": "./b.js", "events": "./b.js"}}"#,
        )
        .expect("package.json");
        for file in ["index.js", "node.js", "a.js", "b.js"] {
            std::fs::write(root.join("node_modules/pkg").join(file), "").expect("file");
        }

        let resolver = WorkerResolver::new(root);
        let base = "node_modules/pkg/index.js";
        assert_eq!(resolver.resolve_require(base, "./node"), Ok(None));
        assert_eq!(
            resolver.resolve_require(base, "./a.js"),
            Ok(Some("node_modules/pkg/b.js".to_owned()))
        );
        assert_eq!(
            resolver.resolve_require(base, "events"),
            Ok(Some("node_modules/pkg/b.js".to_owned()))
        );

        assert_eq!(
            resolver.resolve_name(base, "./node.js"),
            Ok(IGNORED_MODULE.to_owned())
        );
        assert_eq!(
            resolver.resolve_name(base, "./a.js"),
            Ok("node_modules/pkg/b.js".to_owned())
        );
    }

    #[test]
    fn json_becomes_default_export() {
        let source = json_module("data.json", "{\"a\": [1, 2]}").expect("valid JSON");
        assert_eq!(source, "export default {\"a\":[1,2]};\n");
    }

    #[test]
    fn relative_and_package_imports_resolve() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("lib")).expect("lib dir");
        std::fs::write(root.join("lib/util.ts"), "export const x = 1;").expect("util");
        std::fs::create_dir_all(root.join("node_modules/pkg")).expect("pkg dir");
        std::fs::write(
            root.join("node_modules/pkg/package.json"),
            r#"{"name": "pkg", "exports": {".": {"import": "./esm.js", "require": "./cjs.js"}}}"#,
        )
        .expect("package.json");
        std::fs::write(root.join("node_modules/pkg/esm.js"), "export default 1;").expect("esm");
        let resolver = WorkerResolver::new(root);
        assert_eq!(
            resolver.resolve_name("index.ts", "./lib/util"),
            Ok("lib/util.ts".to_owned())
        );
        assert_eq!(
            resolver.resolve_name("lib/util.ts", "pkg"),
            Ok("node_modules/pkg/esm.js".to_owned())
        );
        assert_eq!(
            resolver.resolve_name("index.ts", "@cloudflare/ai"),
            Ok("kiln:@cloudflare/ai".to_owned())
        );
        assert!(resolver.resolve_name("index.ts", "./missing").is_err());
    }
}
