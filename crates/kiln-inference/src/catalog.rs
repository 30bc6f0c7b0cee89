//! The hosted catalog's model ids, which resolve to an installed model of the same task, and
//! catalog objects in the hosted search endpoint's shape.

use kiln_models::{Manifest, Task};
use serde_json::{json, Value};

/// Text-generation ids of the hosted catalog (runtime type file of August 2026, plus ids of
/// older catalogs that existing workers still use).
const TEXT_GENERATION_IDS: &[&str] = &[
    "@cf/meta/llama-2-7b-chat-int8",
    "@cf/meta/llama-2-7b-chat-fp16",
    "@cf/mistral/mistral-7b-instruct-v0.1",
    "@cf/mistral/mistral-7b-instruct-v0.2-lora",
    "@hf/thebloke/llama-2-13b-chat-awq",
    "@hf/thebloke/mistral-7b-instruct-v0.1-awq",
    "@hf/thebloke/zephyr-7b-beta-awq",
    "@hf/thebloke/openhermes-2.5-mistral-7b-awq",
    "@hf/thebloke/neural-chat-7b-v3-1-awq",
    "@hf/thebloke/deepseek-coder-6.7b-base-awq",
    "@hf/thebloke/deepseek-coder-6.7b-instruct-awq",
    "@cf/deepseek-ai/deepseek-math-7b-instruct",
    "@cf/defog/sqlcoder-7b-2",
    "@cf/openchat/openchat-3.5-0106",
    "@cf/tiiuae/falcon-7b-instruct",
    "@cf/thebloke/discolm-german-7b-v1-awq",
    "@cf/qwen/qwen1.5-0.5b-chat",
    "@cf/qwen/qwen1.5-1.8b-chat",
    "@cf/qwen/qwen1.5-7b-chat-awq",
    "@cf/qwen/qwen1.5-14b-chat-awq",
    "@cf/tinyllama/tinyllama-1.1b-chat-v1.0",
    "@cf/microsoft/phi-2",
    "@hf/nousresearch/hermes-2-pro-mistral-7b",
    "@hf/nexusflow/starling-lm-7b-beta",
    "@hf/google/gemma-7b-it",
    "@cf/meta-llama/llama-2-7b-chat-hf-lora",
    "@cf/google/gemma-2b-it-lora",
    "@cf/google/gemma-7b-it-lora",
    "@hf/mistral/mistral-7b-instruct-v0.2",
    "@cf/meta/llama-3-8b-instruct",
    "@cf/meta/llama-3-8b-instruct-awq",
    "@cf/fblgit/una-cybertron-7b-v2-bf16",
    "@cf/meta/llama-3.1-8b-instruct",
    "@cf/meta/llama-3.1-8b-instruct-fp8",
    "@cf/meta/llama-3.1-8b-instruct-fp8-fast",
    "@cf/meta/llama-3.1-8b-instruct-awq",
    "@cf/meta/llama-3.1-70b-instruct-fp8-fast",
    "@cf/meta/llama-3.2-1b-instruct",
    "@cf/meta/llama-3.2-3b-instruct",
    "@cf/meta/llama-3.3-70b-instruct-fp8-fast",
    "@cf/meta/llama-4-scout-17b-16e-instruct",
    "@cf/deepseek-ai/deepseek-r1-distill-qwen-32b",
    "@cf/ibm-granite/granite-4.0-h-micro",
    "@cf/qwen/qwen2.5-coder-32b-instruct",
    "@cf/qwen/qwq-32b",
    "@cf/qwen/qwen3-30b-a3b-fp8",
    "@cf/mistralai/mistral-small-3.1-24b-instruct",
    "@cf/google/gemma-3-12b-it",
    "@cf/aisingapore/gemma-sea-lion-v4-27b-it",
    "@cf/openai/gpt-oss-120b",
    "@cf/openai/gpt-oss-20b",
    "@cf/zai-org/glm-4.7-flash",
];

/// Hosted ids of the other tasks. They run on the installed model of their task. With the
/// bundled models that is all-MiniLM-L6-v2 for embeddings (384 dimensions for every bge id,
/// where bge-base has 768 and bge-large 1024), the zero-shot sentiment classifier, and
/// open_nsfw for image classification (labels sfw and nsfw, not ImageNet's).
const OTHER_TASK_IDS: &[(&str, Task)] = &[
    ("@cf/baai/bge-small-en-v1.5", Task::TextEmbeddings),
    ("@cf/baai/bge-base-en-v1.5", Task::TextEmbeddings),
    ("@cf/baai/bge-large-en-v1.5", Task::TextEmbeddings),
    (
        "@cf/huggingface/distilbert-sst-2-int8",
        Task::TextClassification,
    ),
    ("@cf/microsoft/resnet-50", Task::ImageClassification),
];

/// Returns the task of a hosted catalog id, if Kiln maps it to an installed model.
pub fn hosted_task(model: &str) -> Option<Task> {
    if TEXT_GENERATION_IDS.contains(&model) {
        return Some(Task::TextGeneration);
    }
    OTHER_TASK_IDS
        .iter()
        .find(|(id, _)| *id == model)
        .map(|(_, task)| *task)
}

/// Namespace of the stable catalog uuids that Kiln derives from model ids.
const CATALOG_UUID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6b696c6e_6d6f_6465_6c73_000000000001);

/// Describes an installed model as the hosted search endpoint does.
pub fn catalog_entry(manifest: &Manifest, context_tokens: Option<u32>) -> Value {
    let mut properties = vec![json!({"property_id": "engine", "value": manifest.engine})];
    if let Some(tokens) = context_tokens {
        properties.push(json!({"property_id": "context_window", "value": tokens.to_string()}));
    }
    if let Some(license) = &manifest.license {
        properties.push(json!({"property_id": "license", "value": license}));
    }
    json!({
        "id": uuid::Uuid::new_v5(&CATALOG_UUID_NAMESPACE, manifest.id.as_bytes()).to_string(),
        "source": 1,
        "name": manifest.id,
        "description": manifest.description.clone().unwrap_or_default(),
        "task": {
            "id": manifest.task.catalog_id(),
            "name": manifest.task.display_name(),
            "description": "",
        },
        "tags": manifest.aliases,
        "properties": properties,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_2_id_is_text_generation() {
        assert_eq!(
            hosted_task("@cf/meta/llama-2-7b-chat-int8"),
            Some(Task::TextGeneration)
        );
        assert_eq!(hosted_task("@cf/unknown/model"), None);
    }

    #[test]
    fn other_task_ids_map_to_their_task() {
        assert_eq!(
            hosted_task("@cf/baai/bge-base-en-v1.5"),
            Some(Task::TextEmbeddings)
        );
        assert_eq!(
            hosted_task("@cf/huggingface/distilbert-sst-2-int8"),
            Some(Task::TextClassification)
        );
        assert_eq!(
            hosted_task("@cf/microsoft/resnet-50"),
            Some(Task::ImageClassification)
        );
    }
}
