#!/usr/bin/env python3
"""Export a BERT-family sentence encoder from safetensors to an ONNX graph, without PyTorch.

The source folder contains a Hugging Face `BertModel` (config.json, model.safetensors,
tokenizer.json and the sentence-transformers files). The script builds the encoder's forward
pass node by node with the `onnx` helpers, reading the weights with safetensors' numpy API, and
writes a Kiln model folder: `onnx/model.onnx` plus the source's tokenizer and configuration
files, but not model.safetensors (so `kiln models import` stores it as an ONNX model).

Graph contract:
  inputs   input_ids, attention_mask, token_type_ids: int64 [batch, sequence]
  output   last_hidden_state: float32 [batch, sequence, hidden]
Both axes are dynamic. Pooling and normalisation stay in Kiln.

The graph uses standard ONNX opset 17 operators only: LayerNormalization, GELU written with
Erf (ONNX Runtime fuses it with the bias Add into BiasGelu), MatMul with weights transposed at
export time, and one MatMul for query, key and value with the 1/sqrt(head_dim) scale folded into
the query weights. A variant built from ONNX Runtime's contrib operators (com.microsoft
Attention, SkipLayerNormalization, BiasGelu) used the same CPU time per sentence on
all-MiniLM-L6-v2 with ONNX Runtime 1.23.2 (batch 1 and 32, one thread), so the portable graph
is the one exported.

Usage: scripts/export-encoder-onnx.py SOURCE_FOLDER DEST_FOLDER
Needs: onnx, numpy, safetensors (scripts/export-encoder-requirements.txt).
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file

# Files copied next to the graph when the source has them; Kiln reads the tokenizer, the token
# limit and the pooling settings from these.
COMPANION_FILES = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "modules.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
]
# Weight-name prefixes of checkpoints saved from a task model (BertForX) instead of BertModel.
WEIGHT_PREFIXES = ["", "bert.", "model."]
OPSET = 17


class Weights:
    """Looks up the encoder's tensors by their BertModel names, whatever prefix the file uses."""

    def __init__(self, path: Path):
        self.tensors = load_file(str(path))
        probe = "embeddings.word_embeddings.weight"
        self.prefix = next(
            (prefix for prefix in WEIGHT_PREFIXES if prefix + probe in self.tensors), None
        )
        if self.prefix is None:
            raise SystemExit(f"error: {path} has no tensor {probe!r}; is it a BERT encoder?")

    def get(self, name: str) -> np.ndarray:
        full = self.prefix + name
        if full in self.tensors:
            return self.tensors[full].astype(np.float32)
        # Old BERT checkpoints name the LayerNorm parameters gamma and beta.
        legacy = full.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
            "LayerNorm.bias", "LayerNorm.beta"
        )
        if legacy in self.tensors:
            return self.tensors[legacy].astype(np.float32)
        raise SystemExit(f"error: the weights have no tensor {full!r}")


class GraphBuilder:
    """Collects nodes and initializers and names intermediate values uniquely."""

    def __init__(self):
        self.nodes = []
        self.initializers = []
        self.initializer_names = set()
        self.counter = 0

    def fresh(self, hint: str) -> str:
        self.counter += 1
        return f"{hint}_{self.counter}"

    def constant(self, name: str, array: np.ndarray) -> str:
        """Adds an initializer, or reuses the one of that name (shared scalars such as sqrt2)."""
        if name not in self.initializer_names:
            self.initializer_names.add(name)
            self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, inputs, hint: str = "", outputs: int = 1, **attributes):
        names = [self.fresh(hint or op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, **attributes))
        return names[0] if outputs == 1 else names


def read_config(source: Path) -> dict:
    config = json.loads((source / "config.json").read_text())
    model_type = config.get("model_type", "bert")
    if model_type != "bert":
        raise SystemExit(f"error: model_type is {model_type!r}; this exporter handles BERT only")
    if config.get("hidden_act", "gelu") != "gelu":
        raise SystemExit(f"error: hidden_act {config['hidden_act']!r} is not supported (gelu only)")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise SystemExit("error: only absolute position embeddings are supported")
    if config["hidden_size"] % config["num_attention_heads"] != 0:
        raise SystemExit("error: hidden_size is not a multiple of num_attention_heads")
    return config


def embeddings(graph: GraphBuilder, weights: Weights, epsilon: float) -> str:
    """Adds word, position and token type embeddings and their LayerNorm."""
    word = graph.constant("word_embeddings", weights.get("embeddings.word_embeddings.weight"))
    position = graph.constant(
        "position_embeddings", weights.get("embeddings.position_embeddings.weight")
    )
    token_type = graph.constant(
        "token_type_embeddings", weights.get("embeddings.token_type_embeddings.weight")
    )
    zero = graph.constant("zero_1d", np.array([0], dtype=np.int64))
    one = graph.constant("one_1d", np.array([1], dtype=np.int64))

    # The first `sequence` rows of the position table, broadcast over the batch.
    shape = graph.op("Shape", ["input_ids"], "ids_shape")
    sequence = graph.op("Slice", [shape, one, graph.constant("two_1d", np.array([2]))], "seq_len")
    positions = graph.op("Slice", [position, zero, sequence, zero], "positions")

    words = graph.op("Gather", [word, "input_ids"], "words")
    types = graph.op("Gather", [token_type, "token_type_ids"], "types")
    total = graph.op("Add", [graph.op("Add", [words, types], "emb"), positions], "emb")
    gamma = graph.constant("embeddings_ln_gamma", weights.get("embeddings.LayerNorm.weight"))
    beta = graph.constant("embeddings_ln_beta", weights.get("embeddings.LayerNorm.bias"))
    return graph.op(
        "LayerNormalization", [total, gamma, beta], "emb_ln", axis=-1, epsilon=epsilon
    )


def attention_bias(graph: GraphBuilder) -> str:
    """Turns attention_mask [batch, seq] into an additive bias [batch, 1, 1, seq]: 0 for tokens,
    -10000 for padding, which softmax turns into a weight of exactly 0 in float32."""
    mask = graph.op("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
    one = graph.constant("one_f", np.array(1.0, dtype=np.float32))
    inverted = graph.op("Sub", [one, mask], "mask_inv")
    bias = graph.op(
        "Mul", [inverted, graph.constant("mask_scale", np.array(-10000.0, np.float32))], "bias"
    )
    return graph.op(
        "Unsqueeze", [bias, graph.constant("axes_1_2", np.array([1, 2]))], "mask_bias"
    )


def linear(graph: GraphBuilder, x: str, weight: np.ndarray, bias: np.ndarray, name: str) -> str:
    """x @ weight.T + bias, with the transpose done here once instead of in every run."""
    w = graph.constant(f"{name}_weight_t", np.ascontiguousarray(weight.T))
    b = graph.constant(f"{name}_bias", bias)
    return graph.op("Add", [graph.op("MatMul", [x, w], name), b], name)


def gelu(graph: GraphBuilder, x: str) -> str:
    """GELU with erf, as BERT's "gelu": 0.5 * x * (1 + erf(x / sqrt(2)))."""
    scaled = graph.op("Div", [x, graph.constant("sqrt2", np.array(np.sqrt(2.0), np.float32))])
    erf = graph.op("Erf", [scaled])
    shifted = graph.op("Add", [erf, graph.constant("one_g", np.array(1.0, np.float32))])
    product = graph.op("Mul", [x, shifted])
    return graph.op("Mul", [product, graph.constant("half", np.array(0.5, np.float32))])


def encoder_layer(graph, weights, x, index, config, mask_bias) -> str:
    """Adds one BERT layer: self-attention and feed-forward, each with a residual and LayerNorm."""
    prefix = f"encoder.layer.{index}."
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    head_dim = hidden // heads
    epsilon = config.get("layer_norm_eps", 1e-12)
    scale = np.float32(1.0 / np.sqrt(head_dim))

    # One MatMul for query, key and value; the query rows carry the 1/sqrt(head_dim) scale.
    qkv_weight = np.concatenate(
        [
            weights.get(prefix + "attention.self.query.weight") * scale,
            weights.get(prefix + "attention.self.key.weight"),
            weights.get(prefix + "attention.self.value.weight"),
        ]
    )
    qkv_bias = np.concatenate(
        [
            weights.get(prefix + "attention.self.query.bias") * scale,
            weights.get(prefix + "attention.self.key.bias"),
            weights.get(prefix + "attention.self.value.bias"),
        ]
    )
    qkv = linear(graph, x, qkv_weight, qkv_bias, f"l{index}_qkv")
    split_shape = graph.constant(f"l{index}_qkv_shape", np.array([0, 0, 3, heads, head_dim]))
    qkv = graph.op("Reshape", [qkv, split_shape], f"l{index}_qkv_heads")
    # [3, batch, heads, seq, head_dim]
    qkv = graph.op("Transpose", [qkv], f"l{index}_qkv_t", perm=[2, 0, 3, 1, 4])
    parts = []
    for part in range(3):
        which = graph.constant(f"l{index}_part{part}", np.array(part, dtype=np.int64))
        parts.append(graph.op("Gather", [qkv, which], f"l{index}_part", axis=0))
    query, key, value = parts

    key_t = graph.op("Transpose", [key], f"l{index}_key_t", perm=[0, 1, 3, 2])
    scores = graph.op("MatMul", [query, key_t], f"l{index}_scores")
    scores = graph.op("Add", [scores, mask_bias], f"l{index}_scores_masked")
    probs = graph.op("Softmax", [scores], f"l{index}_probs", axis=-1)
    context = graph.op("MatMul", [probs, value], f"l{index}_context")
    context = graph.op("Transpose", [context], f"l{index}_context_t", perm=[0, 2, 1, 3])
    merge_shape = graph.constant(f"l{index}_merge_shape", np.array([0, 0, hidden]))
    context = graph.op("Reshape", [context, merge_shape], f"l{index}_context_merged")

    attention = linear(
        graph,
        context,
        weights.get(prefix + "attention.output.dense.weight"),
        weights.get(prefix + "attention.output.dense.bias"),
        f"l{index}_attn_out",
    )
    x = layer_norm(graph, weights, graph.op("Add", [attention, x]), prefix + "attention.output.",
                   f"l{index}_attn", epsilon)

    intermediate = linear(
        graph,
        x,
        weights.get(prefix + "intermediate.dense.weight"),
        weights.get(prefix + "intermediate.dense.bias"),
        f"l{index}_ffn_in",
    )
    output = linear(
        graph,
        gelu(graph, intermediate),
        weights.get(prefix + "output.dense.weight"),
        weights.get(prefix + "output.dense.bias"),
        f"l{index}_ffn_out",
    )
    return layer_norm(graph, weights, graph.op("Add", [output, x]), prefix + "output.",
                      f"l{index}_ffn", epsilon)


def layer_norm(graph, weights, x, prefix, name, epsilon) -> str:
    gamma = graph.constant(f"{name}_ln_gamma", weights.get(prefix + "LayerNorm.weight"))
    beta = graph.constant(f"{name}_ln_beta", weights.get(prefix + "LayerNorm.bias"))
    return graph.op("LayerNormalization", [x, gamma, beta], f"{name}_ln", axis=-1,
                    epsilon=epsilon)


def build_model(source: Path) -> onnx.ModelProto:
    config = read_config(source)
    weights = Weights(source / "model.safetensors")
    graph = GraphBuilder()
    epsilon = config.get("layer_norm_eps", 1e-12)

    x = embeddings(graph, weights, epsilon)
    mask_bias = attention_bias(graph)
    for index in range(config["num_hidden_layers"]):
        x = encoder_layer(graph, weights, x, index, config, mask_bias)
    graph.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"]))

    axes = ["batch", "sequence"]
    inputs = [
        helper.make_tensor_value_info(name, TensorProto.INT64, axes)
        for name in ("input_ids", "attention_mask", "token_type_ids")
    ]
    output = helper.make_tensor_value_info(
        "last_hidden_state", TensorProto.FLOAT, axes + [config["hidden_size"]]
    )
    onnx_graph = helper.make_graph(
        graph.nodes, "bert_encoder", inputs, [output], initializer=graph.initializers
    )
    opsets = [helper.make_opsetid("", OPSET)]
    model = helper.make_model(onnx_graph, opset_imports=opsets, producer_name="kiln-export")
    model.ir_version = 8
    return model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="folder with config.json and model.safetensors")
    parser.add_argument("dest", type=Path, help="output model folder (created, must not exist)")
    args = parser.parse_args()

    for required in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (args.source / required).is_file():
            print(f"error: {args.source / required} is missing", file=sys.stderr)
            return 1
    if args.dest.exists():
        print(f"error: {args.dest} already exists; remove it or pick another folder",
              file=sys.stderr)
        return 1

    model = build_model(args.source)
    onnx.checker.check_model(model, full_check=True)
    (args.dest / "onnx").mkdir(parents=True)
    onnx.save_model(model, str(args.dest / "onnx" / "model.onnx"))
    for name in COMPANION_FILES:
        if (args.source / name).is_file():
            (args.dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(args.source / name, args.dest / name)
    print(f"wrote {args.dest / 'onnx' / 'model.onnx'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
