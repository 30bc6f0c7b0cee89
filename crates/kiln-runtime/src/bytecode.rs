//! Compiled modules, cached for the whole process so that a rebuilt isolate, or a reload in
//! which a file did not change, skips reading TypeScript and parsing JavaScript again.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use rquickjs::module::{Declared, WriteOptions};
use rquickjs::{Ctx, Module};

use crate::commonjs::{self, Resolved};
use crate::modules::{self, LineMap, SourceError, SourceMaps, WorkerResolver};

/// A module that failed to declare: its file could not be read or transformed, or QuickJS
/// rejected the JavaScript (the exception is pending on the context).
pub(crate) enum DeclareError {
    Source(SourceError),
    Engine(rquickjs::Error),
}

struct Compiled {
    /// Hash of the module file's text and format when it was compiled.
    source_hash: u64,
    bytecode: Arc<Vec<u8>>,
    map: Option<LineMap>,
    /// The `require` resolutions that a CommonJS module's code was generated with.
    requires: Vec<Resolved>,
}

/// Compiled modules by worker folder and module name; only the latest version of each is kept.
fn cache() -> &'static Mutex<HashMap<(PathBuf, String), Compiled>> {
    static CACHE: OnceLock<Mutex<HashMap<(PathBuf, String), Compiled>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Declares a module that is part of Kiln, compiling `source` only the first time in the
/// process.
pub(crate) fn declare_builtin<'js>(
    ctx: &Ctx<'js>,
    name: &'static str,
    source: &'static str,
) -> rquickjs::Result<Module<'js, Declared>> {
    type Builtins = Mutex<HashMap<&'static str, Arc<Vec<u8>>>>;
    static BUILTINS: OnceLock<Builtins> = OnceLock::new();
    let builtins = BUILTINS.get_or_init(|| Mutex::new(HashMap::new()));
    let cached = builtins
        .lock()
        .ok()
        .and_then(|builtins| builtins.get(name).cloned());
    if let Some(bytecode) = cached {
        // SAFETY: as in `declare`, the bytes come from `Module::write` in this process.
        if let Ok(module) = unsafe { Module::load(ctx.clone(), &bytecode) } {
            return Ok(module);
        }
    }
    let module = Module::declare(ctx.clone(), name, source)?;
    if let (Ok(bytecode), Ok(mut builtins)) =
        (module.write(WriteOptions::default()), builtins.lock())
    {
        builtins.insert(name, Arc::new(bytecode));
    }
    Ok(module)
}

fn hash_source(text: &str, format: commonjs::ModuleFormat) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    format.hash(&mut hasher);
    hasher.finish()
}

/// Declares the module `name` of the worker folder, from cached bytecode when the file and,
/// for CommonJS, the files its `require` calls resolve to are unchanged. Records the module's
/// source map in `maps`.
pub(crate) fn declare<'js>(
    ctx: &Ctx<'js>,
    resolver: &WorkerResolver,
    name: &str,
    maps: &SourceMaps,
) -> Result<Module<'js, Declared>, DeclareError> {
    let root = resolver.root();
    let file = commonjs::file_of(name);
    let text = modules::read_module(root, file).map_err(DeclareError::Source)?;
    let format = commonjs::module_format(root, file);
    let source_hash = hash_source(&text, format);
    let key = (root.to_path_buf(), name.to_owned());

    let cached = cache().lock().ok().and_then(|cache| {
        let entry = cache
            .get(&key)
            .filter(|entry| entry.source_hash == source_hash)?;
        Some((
            Arc::clone(&entry.bytecode),
            entry.map.clone(),
            entry.requires.clone(),
        ))
    });
    let cached = cached.filter(|(_, _, requires)| {
        requires
            .iter()
            .all(|(specifier, resolved)| resolver.resolve_require(file, specifier) == *resolved)
    });
    if let Some((bytecode, map, _)) = cached {
        // SAFETY: the bytes were written by `Module::write` of this same QuickJS build, in this
        // process, and QuickJS copies what it reads.
        let module = unsafe { Module::load(ctx.clone(), &bytecode) };
        if let Ok(module) = module {
            if let Some(map) = map {
                maps.insert(name, map);
            }
            return Ok(module);
        }
    }

    let loaded =
        modules::transform_format(resolver, name, text, format).map_err(DeclareError::Source)?;
    let module = Module::declare(ctx.clone(), name, loaded.code).map_err(DeclareError::Engine)?;
    if let Some(map) = &loaded.map {
        maps.insert(name, map.clone());
    }
    if !loaded.cacheable {
        return Ok(module);
    }
    if let Ok(bytecode) = module.write(WriteOptions::default()) {
        if let Ok(mut cache) = cache().lock() {
            let compiled = Compiled {
                source_hash,
                bytecode: Arc::new(bytecode),
                map: loaded.map,
                requires: loaded.requires,
            };
            cache.insert(key, compiled);
        }
    }
    Ok(module)
}
