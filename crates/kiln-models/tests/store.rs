//! Import, listing, removal and verification against a real store in a temp folder.

mod support;

use std::path::Path;

use kiln_models::{EngineKind, ImportOptions, ModelStore, StoreError, Task};
use support::{entries, gguf_bytes, onnx_bytes, safetensors_bytes, sha256_hex, write};
use tempfile::TempDir;

fn new_store() -> (TempDir, ModelStore) {
    let dir = TempDir::new().unwrap();
    let store = ModelStore::open(dir.path().join("models")).unwrap();
    (dir, store)
}

/// Asserts that the store root contains no model and no leftover staging folder.
fn assert_store_empty(store: &ModelStore) {
    assert!(store.list().unwrap().is_empty());
    let leftovers: Vec<String> = entries(store.root())
        .into_iter()
        .filter(|name| name != ".partial")
        .collect();
    assert!(leftovers.is_empty(), "leftover entries: {leftovers:?}");
}

/// Writes a safetensors model folder with the given config.json and extra files.
fn safetensors_folder(
    base: &Path,
    config: serde_json::Value,
    extra: &[&str],
) -> std::path::PathBuf {
    let folder = base.join("hf-model");
    write(&folder, "config.json", config.to_string().as_bytes());
    write(&folder, "model.safetensors", &safetensors_bytes());
    for relative in extra {
        write(
            &folder,
            relative,
            format!("{{\"file\":\"{relative}\"}}").as_bytes(),
        );
    }
    folder
}

#[test]
fn open_creates_absolute_root() {
    let dir = TempDir::new().unwrap();
    let root = dir.path().join("a").join("b");
    let store = ModelStore::open(&root).unwrap();
    assert!(root.is_dir());
    assert!(store.root().is_absolute());
    assert!(store.model_dir("x").starts_with(store.root()));
}

#[test]
fn import_gguf_records_hash() {
    let (dir, store) = new_store();
    let bytes = gguf_bytes(100);
    let source = write(dir.path(), "SmolLM2-135M-Q8_0.gguf", &bytes);

    let manifest = store
        .import(&source, &ImportOptions::new("@cf/test/smollm2"))
        .unwrap();

    assert_eq!(manifest.id, "@cf/test/smollm2");
    assert_eq!(manifest.engine, EngineKind::Llama);
    assert_eq!(manifest.task, Task::TextGeneration);
    assert_eq!(manifest.files.len(), 1);
    let file = &manifest.files[0];
    assert_eq!(file.path, "SmolLM2-135M-Q8_0.gguf");
    assert_eq!(file.sha256, sha256_hex(&bytes));
    assert_eq!(file.size, bytes.len() as u64);
    assert_eq!(manifest.primary_file(), Some(file));

    let stored = store.file_path(&manifest, file);
    assert_eq!(std::fs::read(&stored).unwrap(), bytes);
    assert_eq!(
        stored.parent().unwrap(),
        store.model_dir("@cf/test/smollm2")
    );
    // The id's slashes are encoded, so the model is one folder directly under the root.
    assert_eq!(
        store.model_dir("@cf/test/smollm2").parent().unwrap(),
        store.root()
    );
    assert!(store
        .model_dir("@cf/test/smollm2")
        .join("manifest.json")
        .is_file());

    assert_eq!(store.get("@cf/test/smollm2").unwrap(), Some(manifest));
    store.verify("@cf/test/smollm2").unwrap();
}

#[test]
fn import_keeps_metadata() {
    let (dir, store) = new_store();
    let source = write(dir.path(), "m.gguf", &gguf_bytes(0));
    let options = ImportOptions {
        license: Some("apache-2.0".to_string()),
        source: Some("file:m.gguf".to_string()),
        aliases: vec![
            "@cf/meta/alias-one".to_string(),
            "@cf/meta/alias-one".to_string(),
        ],
        description: Some("a test model".to_string()),
        task: Some(Task::TextClassification),
        progress: true,
        ..ImportOptions::new("local/m")
    };

    let manifest = store.import(&source, &options).unwrap();

    assert_eq!(manifest.task, Task::TextClassification);
    assert_eq!(manifest.license.as_deref(), Some("apache-2.0"));
    assert_eq!(manifest.source.as_deref(), Some("file:m.gguf"));
    assert_eq!(manifest.aliases, ["@cf/meta/alias-one"]);
    assert_eq!(manifest.description.as_deref(), Some("a test model"));
    assert_eq!(store.get("local/m").unwrap(), Some(manifest));
}

#[test]
fn import_rejects_bad_gguf_magic() {
    let (dir, store) = new_store();
    let source = write(dir.path(), "fake.gguf", b"GGML\x03\x00\x00\x00");

    let error = store
        .import(&source, &ImportOptions::new("fake"))
        .unwrap_err();

    assert!(matches!(error, StoreError::InvalidModel { .. }), "{error}");
    assert!(error.to_string().contains("GGUF"), "{error}");
    assert_store_empty(&store);
}

#[test]
fn import_onnx_file_task_rules() {
    let (dir, store) = new_store();
    let bytes = onnx_bytes();
    let source = write(dir.path(), "home-value.onnx", &bytes);

    let error = store
        .import(&source, &ImportOptions::new("home-value"))
        .unwrap_err();
    assert!(matches!(error, StoreError::TaskRequired { .. }), "{error}");
    assert!(error.to_string().contains("--task"), "{error}");
    assert_store_empty(&store);

    let custom = store
        .import(&source, &ImportOptions::new("@custom/home-value"))
        .unwrap();
    assert_eq!(custom.engine, EngineKind::Onnx);
    assert_eq!(custom.task, Task::Custom);
    assert_eq!(custom.files[0].path, "home-value.onnx");
    assert_eq!(custom.files[0].sha256, sha256_hex(&bytes));

    let options = ImportOptions {
        task: Some(Task::ImageClassification),
        ..ImportOptions::new("resnet")
    };
    let explicit = store.import(&source, &options).unwrap();
    assert_eq!(explicit.task, Task::ImageClassification);
}

#[test]
fn import_rejects_empty_onnx() {
    let (dir, store) = new_store();
    let source = write(dir.path(), "empty.onnx", b"");

    let error = store
        .import(&source, &ImportOptions::new("@custom/empty"))
        .unwrap_err();

    assert!(error.to_string().contains("empty"), "{error}");
    assert_store_empty(&store);
}

#[test]
fn import_safetensors_embeddings_folder() {
    let (dir, store) = new_store();
    let folder = safetensors_folder(
        dir.path(),
        serde_json::json!({"architectures": ["BertModel"]}),
        &[
            "tokenizer.json",
            "1_Pooling/config.json",
            "modules.json",
            "README.md",
        ],
    );

    let manifest = store
        .import(&folder, &ImportOptions::new("@cf/baai/bge-small"))
        .unwrap();

    assert_eq!(manifest.engine, EngineKind::Safetensors);
    assert_eq!(manifest.task, Task::TextEmbeddings);
    let mut paths: Vec<&str> = manifest
        .files
        .iter()
        .map(|file| file.path.as_str())
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "1_Pooling/config.json",
            "config.json",
            "model.safetensors",
            "modules.json",
            "tokenizer.json"
        ]
    );
    for file in &manifest.files {
        let source_bytes = std::fs::read(folder.join(&file.path)).unwrap();
        assert_eq!(file.sha256, sha256_hex(&source_bytes), "{}", file.path);
        assert_eq!(file.size, source_bytes.len() as u64, "{}", file.path);
        assert_eq!(
            std::fs::read(store.file_path(&manifest, file)).unwrap(),
            source_bytes
        );
    }
    assert_eq!(manifest.primary_file().unwrap().path, "model.safetensors");
    store.verify("@cf/baai/bge-small").unwrap();
}

#[test]
fn import_safetensors_classifier_detected() {
    let (dir, store) = new_store();
    let folder = safetensors_folder(
        dir.path(),
        serde_json::json!({"architectures": ["DistilBertForSequenceClassification"]}),
        &["tokenizer.json"],
    );

    let manifest = store
        .import(&folder, &ImportOptions::new("sentiment"))
        .unwrap();

    assert_eq!(manifest.task, Task::TextClassification);
}

#[test]
fn import_safetensors_requires_task() {
    let (dir, store) = new_store();
    let folder = safetensors_folder(
        dir.path(),
        serde_json::json!({"architectures": ["LlamaForCausalLM"]}),
        &[],
    );

    let error = store
        .import(&folder, &ImportOptions::new("llama"))
        .unwrap_err();
    assert!(matches!(error, StoreError::TaskRequired { .. }), "{error}");
    assert!(error.to_string().contains("--task"), "{error}");
    assert_store_empty(&store);

    // Text generation runs only on GGUF files, so this folder cannot be imported for it.
    let options = ImportOptions {
        task: Some(Task::TextGeneration),
        ..ImportOptions::new("llama")
    };
    let error = store.import(&folder, &options).unwrap_err();
    assert!(error.to_string().contains("needs a GGUF file"), "{error}");
    assert_store_empty(&store);

    let options = ImportOptions {
        task: Some(Task::TextEmbeddings),
        ..ImportOptions::new("llama")
    };
    let manifest = store.import(&folder, &options).unwrap();
    assert_eq!(manifest.task, Task::TextEmbeddings);
}

#[test]
fn import_rejects_bad_safetensors_header() {
    let (dir, store) = new_store();
    let folder = safetensors_folder(dir.path(), serde_json::json!({}), &[]);
    let mut corrupt = safetensors_bytes();
    corrupt[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(folder.join("model.safetensors"), &corrupt).unwrap();

    let options = ImportOptions {
        task: Some(Task::TextEmbeddings),
        ..ImportOptions::new("corrupt")
    };
    let error = store.import(&folder, &options).unwrap_err();

    assert!(matches!(error, StoreError::InvalidModel { .. }), "{error}");
    assert!(error.to_string().contains("header length"), "{error}");
    assert_store_empty(&store);
}

#[test]
fn import_onnx_folder() {
    let (dir, store) = new_store();
    let folder = dir.path().join("onnx-model");
    let graph = onnx_bytes();
    write(&folder, "onnx/model.onnx", &graph);
    write(
        &folder,
        "config.json",
        br#"{"architectures": ["ViTForImageClassification"]}"#,
    );
    write(&folder, "preprocessor_config.json", b"{}");
    write(&folder, "onnx/model_quantized.onnx", &graph);

    let manifest = store
        .import(&folder, &ImportOptions::new("@cf/google/vit"))
        .unwrap();

    assert_eq!(manifest.engine, EngineKind::Onnx);
    assert_eq!(manifest.task, Task::ImageClassification);
    let mut paths: Vec<&str> = manifest
        .files
        .iter()
        .map(|file| file.path.as_str())
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        ["config.json", "onnx/model.onnx", "preprocessor_config.json"]
    );
    assert_eq!(manifest.primary_file().unwrap().path, "onnx/model.onnx");
    assert_eq!(manifest.primary_file().unwrap().sha256, sha256_hex(&graph));
}

#[test]
fn import_rejects_unknown_format() {
    let (dir, store) = new_store();
    let file = write(dir.path(), "pytorch_model.bin", b"\x80\x02weights");
    let folder = dir.path().join("not-a-model");
    write(&folder, "README.md", b"# nothing here");

    for source in [&file, &folder] {
        let error = store
            .import(source, &ImportOptions::new("unknown"))
            .unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(error, StoreError::UnsupportedFormat { .. }),
            "{message}"
        );
        assert!(message.contains(&source.display().to_string()), "{message}");
        assert!(message.contains(".gguf"), "{message}");
        assert!(message.contains("model.safetensors"), "{message}");
        assert!(message.contains("onnx/model.onnx"), "{message}");
    }
    assert_store_empty(&store);
}

#[test]
fn import_rejects_missing_source() {
    let (dir, store) = new_store();
    let missing = dir.path().join("missing.gguf");

    let error = store
        .import(&missing, &ImportOptions::new("m"))
        .unwrap_err();

    assert!(matches!(error, StoreError::Io { .. }), "{error}");
    assert!(error.to_string().contains("missing.gguf"), "{error}");
}

#[test]
fn import_rejects_bad_id() {
    let (dir, store) = new_store();
    let source = write(dir.path(), "m.gguf", &gguf_bytes(0));

    for id in [
        "",
        "../escape",
        "a/../b",
        "/abs",
        "trailing/",
        "has space",
        "semi;colon",
    ] {
        let error = store.import(&source, &ImportOptions::new(id)).unwrap_err();
        assert!(
            matches!(error, StoreError::InvalidId { .. }),
            "{id:?}: {error}"
        );
        assert!(
            error.to_string().contains(&format!("{id:?}")),
            "{id:?}: {error}"
        );
    }
    let long = "x".repeat(129);
    let error = store
        .import(&source, &ImportOptions::new(long))
        .unwrap_err();
    assert!(error.to_string().contains("128"), "{error}");
    assert_store_empty(&store);
}

#[test]
fn import_rejects_duplicate_id() {
    let (dir, store) = new_store();
    let first = write(dir.path(), "first.gguf", &gguf_bytes(10));
    let second = write(dir.path(), "second.gguf", &gguf_bytes(20));
    let original = store
        .import(&first, &ImportOptions::new("@cf/dup"))
        .unwrap();

    let error = store
        .import(&second, &ImportOptions::new("@cf/dup"))
        .unwrap_err();

    assert!(matches!(error, StoreError::AlreadyExists { .. }), "{error}");
    assert!(
        error.to_string().contains("kiln models remove @cf/dup"),
        "{error}"
    );
    assert_eq!(store.get("@cf/dup").unwrap(), Some(original));
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn import_rejects_taken_alias() {
    let (dir, store) = new_store();
    let source = write(dir.path(), "m.gguf", &gguf_bytes(0));
    let options = ImportOptions {
        aliases: vec!["shared-name".to_string()],
        ..ImportOptions::new("first")
    };
    store.import(&source, &options).unwrap();

    let alias_clash = ImportOptions {
        aliases: vec!["shared-name".to_string()],
        ..ImportOptions::new("second")
    };
    let error = store.import(&source, &alias_clash).unwrap_err();
    assert!(matches!(error, StoreError::NameInUse { .. }), "{error}");
    assert!(error.to_string().contains("first"), "{error}");

    let id_clash = store
        .import(&source, &ImportOptions::new("shared-name"))
        .unwrap_err();
    assert!(
        matches!(id_clash, StoreError::NameInUse { .. }),
        "{id_clash}"
    );

    let alias_is_id = ImportOptions {
        aliases: vec!["first".to_string()],
        ..ImportOptions::new("third")
    };
    let error = store.import(&source, &alias_is_id).unwrap_err();
    assert!(matches!(error, StoreError::NameInUse { .. }), "{error}");
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn replace_swaps_files_under_lock() {
    let (dir, store) = new_store();
    let first = write(dir.path(), "first.gguf", &gguf_bytes(10));
    let second = write(dir.path(), "second.gguf", &gguf_bytes(20));
    let original = store.import(&first, &ImportOptions::new("swap")).unwrap();

    let mut seen_at_lock = None;
    let (manifest, replaced, guard) = store
        .import_or_replace(&second, &ImportOptions::new("swap"), || {
            seen_at_lock = Some(store.get("swap").unwrap());
            "guard"
        })
        .unwrap();

    assert!(replaced);
    assert_eq!(guard, "guard");
    // The new files are staged before the lock, and the old model is still in place then.
    assert_eq!(seen_at_lock, Some(Some(original)));
    assert_eq!(manifest.files[0].path, "second.gguf");
    assert_eq!(manifest.files[0].size, gguf_bytes(20).len() as u64);
    assert_eq!(store.get("swap").unwrap(), Some(manifest));
    let model_files = entries(&store.model_dir("swap"));
    assert_eq!(model_files, vec!["manifest.json", "second.gguf"]);
    let root_entries = entries(store.root());
    assert_eq!(root_entries, vec!["swap"]);
}

#[test]
fn replace_installs_missing_id() {
    let (dir, store) = new_store();
    let source = write(dir.path(), "m.gguf", &gguf_bytes(0));
    let (manifest, replaced, ()) = store
        .import_or_replace(&source, &ImportOptions::new("fresh"), || ())
        .unwrap();
    assert!(!replaced);
    assert_eq!(store.get("fresh").unwrap(), Some(manifest));
}

#[test]
fn replace_keeps_own_aliases_only() {
    let (dir, store) = new_store();
    let source = write(dir.path(), "m.gguf", &gguf_bytes(0));
    let with_alias = |id: &str| ImportOptions {
        aliases: vec!["nickname".to_string()],
        ..ImportOptions::new(id)
    };
    store.import(&source, &with_alias("owner")).unwrap();

    let replaced = store.import_or_replace(&source, &with_alias("owner"), || ());
    assert!(replaced.is_ok(), "{:?}", replaced.err());

    let mut locked = false;
    let error = store
        .import_or_replace(&source, &with_alias("other"), || locked = true)
        .unwrap_err();
    assert!(matches!(error, StoreError::NameInUse { .. }), "{error}");
    assert!(!locked, "the lock ran for a rejected import");
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn import_checks_expected_hash() {
    let (dir, store) = new_store();
    let bytes = gguf_bytes(64);
    let source = write(dir.path(), "m.gguf", &bytes);
    let wrong = "0".repeat(64);

    let options = ImportOptions {
        expected_sha256: Some(wrong.clone()),
        ..ImportOptions::new("checked")
    };
    let error = store.import(&source, &options).unwrap_err();

    let message = error.to_string();
    assert!(
        matches!(error, StoreError::HashMismatch { .. }),
        "{message}"
    );
    assert!(message.contains(&wrong), "{message}");
    assert!(message.contains(&sha256_hex(&bytes)), "{message}");
    assert_store_empty(&store);
    assert_eq!(store.get("checked").unwrap(), None);

    let options = ImportOptions {
        expected_sha256: Some(sha256_hex(&bytes).to_uppercase()),
        ..ImportOptions::new("checked")
    };
    let manifest = store.import(&source, &options).unwrap();
    assert_eq!(manifest.files[0].sha256, sha256_hex(&bytes));
}

#[test]
fn import_rejects_malformed_expected_hash() {
    let (dir, store) = new_store();
    let source = write(dir.path(), "m.gguf", &gguf_bytes(0));
    let options = ImportOptions {
        expected_sha256: Some("abc123".to_string()),
        ..ImportOptions::new("m")
    };

    let error = store.import(&source, &options).unwrap_err();

    assert!(matches!(error, StoreError::InvalidOptions(_)), "{error}");
    assert!(error.to_string().contains("abc123"), "{error}");
    assert_store_empty(&store);
}

#[test]
fn import_rejects_expected_hash_for_folder() {
    let (dir, store) = new_store();
    let folder = safetensors_folder(
        dir.path(),
        serde_json::json!({}),
        &["1_Pooling/config.json"],
    );
    let options = ImportOptions {
        expected_sha256: Some("0".repeat(64)),
        ..ImportOptions::new("folder")
    };

    let error = store.import(&folder, &options).unwrap_err();

    assert!(matches!(error, StoreError::InvalidOptions(_)), "{error}");
    assert_store_empty(&store);
}

#[cfg(unix)]
#[test]
fn import_link_shares_inode() {
    use std::os::unix::fs::MetadataExt;

    let (dir, store) = new_store();
    let source = write(dir.path(), "linked.gguf", &gguf_bytes(32));
    let options = ImportOptions {
        link: true,
        ..ImportOptions::new("linked")
    };

    let manifest = store.import(&source, &options).unwrap();

    let stored = store.file_path(&manifest, &manifest.files[0]);
    let stored_meta = std::fs::metadata(&stored).unwrap();
    let source_meta = std::fs::metadata(&source).unwrap();
    assert_eq!(stored_meta.ino(), source_meta.ino());
    assert_eq!(stored_meta.dev(), source_meta.dev());
    store.verify("linked").unwrap();
}

#[test]
fn list_sorted_and_skips_broken() {
    let (dir, store) = new_store();
    let source = write(dir.path(), "m.gguf", &gguf_bytes(0));
    for id in ["zeta", "@cf/alpha", "mid/model"] {
        store.import(&source, &ImportOptions::new(id)).unwrap();
    }
    let broken = store.model_dir("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("manifest.json"), b"{not json").unwrap();
    std::fs::create_dir_all(store.model_dir("no-manifest")).unwrap();

    let ids: Vec<String> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|manifest| manifest.id)
        .collect();

    assert_eq!(ids, ["@cf/alpha", "mid/model", "zeta"]);
    let error = store.get("broken").unwrap_err();
    assert!(
        matches!(error, StoreError::InvalidManifest { .. }),
        "{error}"
    );
}

#[test]
fn get_rejects_manifest_for_other_id() {
    let (dir, store) = new_store();
    let source = write(dir.path(), "m.gguf", &gguf_bytes(0));
    store.import(&source, &ImportOptions::new("real")).unwrap();
    std::fs::rename(store.model_dir("real"), store.model_dir("moved")).unwrap();

    let error = store.get("moved").unwrap_err();

    assert!(
        matches!(error, StoreError::InvalidManifest { .. }),
        "{error}"
    );
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn get_rejects_escaping_file_path() {
    let (dir, store) = new_store();
    let source = write(dir.path(), "m.gguf", &gguf_bytes(0));
    store.import(&source, &ImportOptions::new("m")).unwrap();
    let manifest_path = store.model_dir("m").join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    manifest["files"][0]["path"] = serde_json::json!("../../outside.gguf");
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();

    let error = store.get("m").unwrap_err();

    assert!(
        matches!(error, StoreError::InvalidManifest { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("outside.gguf"), "{error}");
}

#[test]
fn get_unknown_is_none() {
    let (_dir, store) = new_store();
    assert_eq!(store.get("@cf/missing/model").unwrap(), None);
    assert_eq!(store.get("bad id").unwrap(), None);
    assert_eq!(store.get("../models").unwrap(), None);
}

#[test]
fn remove_deletes_model() {
    let (dir, store) = new_store();
    let source = write(dir.path(), "m.gguf", &gguf_bytes(0));
    store
        .import(&source, &ImportOptions::new("@cf/keep"))
        .unwrap();
    store
        .import(&source, &ImportOptions::new("@cf/drop"))
        .unwrap();

    store.remove("@cf/drop").unwrap();

    assert_eq!(store.get("@cf/drop").unwrap(), None);
    assert!(!store.model_dir("@cf/drop").exists());
    let ids: Vec<String> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|manifest| manifest.id)
        .collect();
    assert_eq!(ids, ["@cf/keep"]);
    assert_eq!(
        entries(store.root()),
        [store
            .model_dir("@cf/keep")
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()]
    );
    assert!(
        source.is_file(),
        "removing a copied model must not touch the source"
    );

    // The id is free again.
    store
        .import(&source, &ImportOptions::new("@cf/drop"))
        .unwrap();
}

#[test]
fn remove_missing_is_not_found() {
    let (_dir, store) = new_store();

    let error = store.remove("@cf/never-imported").unwrap_err();

    assert!(matches!(error, StoreError::NotFound { .. }), "{error}");
    assert!(error.to_string().contains("@cf/never-imported"), "{error}");
}

#[test]
fn verify_catches_modified_file() {
    let (dir, store) = new_store();
    let bytes = gguf_bytes(40);
    let source = write(dir.path(), "m.gguf", &bytes);
    let manifest = store.import(&source, &ImportOptions::new("m")).unwrap();
    let stored = store.file_path(&manifest, &manifest.files[0]);

    let mut flipped = bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0xff;
    std::fs::write(&stored, &flipped).unwrap();
    let error = store.verify("m").unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, StoreError::HashMismatch { .. }),
        "{message}"
    );
    assert!(message.contains("m.gguf"), "{message}");
    assert!(message.contains(&sha256_hex(&bytes)), "{message}");
    assert!(message.contains(&sha256_hex(&flipped)), "{message}");

    std::fs::write(&stored, &bytes[..10]).unwrap();
    let error = store.verify("m").unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, StoreError::SizeMismatch { .. }),
        "{message}"
    );
    assert!(
        message.contains(&format!("expected {} bytes", bytes.len())),
        "{message}"
    );
    assert!(message.contains("got 10 bytes"), "{message}");

    std::fs::remove_file(&stored).unwrap();
    let error = store.verify("m").unwrap_err();
    assert!(matches!(error, StoreError::MissingFile { .. }), "{error}");
    assert!(error.to_string().contains("m.gguf"), "{error}");

    std::fs::write(&stored, &bytes).unwrap();
    store.verify("m").unwrap();
}

#[test]
fn verify_missing_model_is_not_found() {
    let (_dir, store) = new_store();
    let error = store.verify("ghost").unwrap_err();
    assert!(matches!(error, StoreError::NotFound { .. }), "{error}");
}
