"""Build the tiny text classifiers of Kiln's end-to-end tests and their reference outputs.

For each architecture (DistilBERT and BERT) the script writes a Hugging Face style folder
under crates/kiln/tests/data/tiny-classifiers/:

- config.json (with id2label), tokenizer.json and its companion files, model.safetensors;
- onnx/model.onnx, exported with torch.onnx.export (dynamic batch and sequence axes);
- onnx/model_quantized.onnx, the int8 graph from onnxruntime's quantize_dynamic.

The models have hidden size 32, 2 layers, 2 heads and 3 labels (NEGATIVE, NEUTRAL, POSITIVE).
Their WordPiece vocabulary covers a few dozen words plus single letters, so any lowercase
ASCII word tokenizes without [UNK]. Weights start from a fixed seed and are trained for a few
steps on a toy sentiment set, so that the scores differ between sentences.

reference.json holds, per model and sentence, the token ids, the logits and softmax scores
from transformers (the expected output for model.safetensors and onnx/model.onnx), and the
logits and scores of onnx/model_quantized.onnx from onnxruntime in Python. Every sentence runs
alone (batch size 1, no padding), as one request does on a Kiln node.

Run once with the reference venv (scripts/reference/setup.sh) and commit the output:

    .kiln-test/reference-venv/bin/python scripts/reference/make_tiny_classifiers.py
"""

import json
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    PreTrainedTokenizerFast,
)

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "crates" / "kiln" / "tests" / "data" / "tiny-classifiers"

SEED = 20240611
LABELS = ["NEGATIVE", "NEUTRAL", "POSITIVE"]
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = (
    "the a an this that it is was and but not very too so i we you movie film book "
    "story plot acting music food service good great love loved wonderful excellent "
    "happy bad terrible awful hate boring sad okay fine average ordinary guess"
).split()
SUFFIXES = ["##s", "##ed", "##ing", "##ly"]
LETTERS = [chr(code) for code in range(ord("a"), ord("z") + 1)]

# Toy sentiment data that gives the weights some structure.
TRAINING = [
    ("i love this movie", 2),
    ("a wonderful story", 2),
    ("great acting and great music", 2),
    ("the food was excellent", 2),
    ("we loved the book", 2),
    ("very happy with the service", 2),
    ("i hate this film", 0),
    ("a terrible plot", 0),
    ("the acting was awful", 0),
    ("boring and sad", 0),
    ("the service was bad", 0),
    ("too boring", 0),
    ("the movie was okay", 1),
    ("an average book", 1),
    ("the food was fine", 1),
    ("it is an ordinary story", 1),
    ("okay i guess", 1),
    ("the music was average", 1),
]

# Sentences of the reference outputs. Some are not in the training set, and "kiln" and
# "pottery" are not in the vocabulary, so they exercise the letter fallback.
SENTENCES = [
    "I love this movie!",
    "The plot was terrible and the acting was awful.",
    "It was okay, I guess.",
    "Great music, but the story was boring.",
    "Kiln pottery",
    "a",
]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Build a BERT-style uncased WordPiece tokenizer over the fixed vocabulary."""
    tokens = SPECIAL_TOKENS + WORDS + SUFFIXES + LETTERS + ["##" + letter for letter in LETTERS]
    tokens += list(".,!?'")
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    tokenizer = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=64,
    )


def build_model(architecture: str, vocab_size: int) -> torch.nn.Module:
    common = {
        "id2label": dict(enumerate(LABELS)),
        "label2id": {label: index for index, label in enumerate(LABELS)},
    }
    if architecture == "distilbert":
        config = DistilBertConfig(
            vocab_size=vocab_size,
            dim=32,
            n_layers=2,
            n_heads=2,
            hidden_dim=64,
            max_position_embeddings=64,
            **common,
        )
        return DistilBertForSequenceClassification(config)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        **common,
    )
    return BertForSequenceClassification(config)


def input_names(takes_token_types: bool) -> list:
    """Return the model's input names. DistilBERT has no `token_type_ids`."""
    return ["input_ids", "attention_mask"] + (["token_type_ids"] if takes_token_types else [])


def train(model: torch.nn.Module, tokenizer, takes_token_types: bool) -> None:
    texts = [text for text, _ in TRAINING]
    targets = torch.tensor([label for _, label in TRAINING])
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    batch = {name: encoded[name] for name in input_names(takes_token_types)}
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(15):
        optimizer.zero_grad()
        loss = model(**batch, labels=targets).loss
        loss.backward()
        optimizer.step()
    model.eval()


class LogitsOnly(torch.nn.Module):
    """Wrap a sequence classifier so that the exported graph has the single output `logits`."""

    def __init__(self, model: torch.nn.Module, takes_token_types: bool):
        super().__init__()
        self.model = model
        self.takes_token_types = takes_token_types

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        if self.takes_token_types:
            return self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
            ).logits
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def export_onnx(model: torch.nn.Module, tokenizer, folder: Path, takes_token_types: bool) -> None:
    onnx_dir = folder / "onnx"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    sample = tokenizer(["i love this movie", "bad"], padding=True, return_tensors="pt")
    names = input_names(takes_token_types)
    arguments = tuple(sample[name] for name in names)
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes["logits"] = {0: "batch"}
    # The exporter restores the wrapper's training flag afterwards, and a new module starts in
    # training mode, which would switch the model's dropout back on.
    wrapper = LogitsOnly(model, takes_token_types).eval()
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            arguments,
            str(onnx_dir / "model.onnx"),
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    quantize_dynamic(
        str(onnx_dir / "model.onnx"),
        str(onnx_dir / "model_quantized.onnx"),
        weight_type=QuantType.QInt8,
    )


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()


def scored(logits: np.ndarray) -> dict:
    logits = logits.astype(np.float64)
    return {"logits": logits.tolist(), "scores": softmax(logits).tolist()}


def make_reference(model, tokenizer, folder: Path, takes_token_types: bool) -> list:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    sessions = {
        name: onnxruntime.InferenceSession(
            str(folder / "onnx" / name), options, providers=["CPUExecutionProvider"]
        )
        for name in ["model.onnx", "model_quantized.onnx"]
    }
    cases = []
    for text in SENTENCES:
        encoded = tokenizer(text, return_tensors="np")
        feed = {
            "input_ids": encoded["input_ids"].astype(np.int64),
            "attention_mask": encoded["attention_mask"].astype(np.int64),
        }
        if takes_token_types:
            feed["token_type_ids"] = encoded["token_type_ids"].astype(np.int64)
        with torch.no_grad():
            torch_logits = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits
        torch_logits = torch_logits[0].numpy()
        onnx_logits = sessions["model.onnx"].run(["logits"], feed)[0][0]
        int8_logits = sessions["model_quantized.onnx"].run(["logits"], feed)[0][0]
        gap = float(np.abs(onnx_logits - torch_logits).max())
        if gap > 1e-5:
            raise SystemExit(f"{folder.name}: the ONNX export differs by {gap} on {text!r}")
        cases.append(
            {
                "text": text,
                "input_ids": feed["input_ids"][0].tolist(),
                "transformers": scored(torch_logits),
                "onnxruntime_int8": scored(int8_logits),
            }
        )
    return cases


def make_model(architecture: str, tokenizer) -> dict:
    folder = OUTPUT / architecture
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    torch.manual_seed(SEED)
    model = build_model(architecture, len(tokenizer))
    takes_token_types = architecture == "bert"
    train(model, tokenizer, takes_token_types)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    export_onnx(model, tokenizer, folder, takes_token_types)
    return {
        "labels": LABELS,
        "cases": make_reference(model, tokenizer, folder, takes_token_types),
    }


def main() -> None:
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    with tempfile.TemporaryDirectory() as scratch:
        # Round-trip the tokenizer through its files, so the reference uses what Kiln loads.
        tokenizer.save_pretrained(scratch)
        tokenizer = PreTrainedTokenizerFast.from_pretrained(scratch)
    reference = {
        "models": {
            architecture: make_model(architecture, tokenizer)
            for architecture in ["distilbert", "bert"]
        }
    }
    with open(OUTPUT / "reference.json", "w", encoding="utf-8") as file:
        json.dump(reference, file, indent=1)
        file.write("\n")
    for path in sorted(OUTPUT.rglob("*")):
        if path.is_file():
            print(f"{path.relative_to(ROOT)}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
