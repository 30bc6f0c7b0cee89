//! A DistilBERT encoder with the weight layout and arithmetic of Hugging Face's
//! `DistilBertModel` (checked against transformers 4.57).
//!
//! candle-transformers 0.11 ships a DistilBERT too, but it always applies the tanh
//! approximation of GELU, while checkpoints whose config sets `"activation": "gelu"` were
//! trained with the exact (erf) GELU. This module follows the config so that logits match transformers.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{embedding, layer_norm, linear, Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

/// Epsilon of every DistilBERT layer norm, fixed in transformers' implementation.
const LAYER_NORM_EPS: f64 = 1e-12;

/// The fields of a DistilBERT `config.json` that the encoder needs.
#[derive(Debug, Clone, Deserialize)]
pub struct DistilBertConfig {
    pub vocab_size: usize,
    /// Hidden size.
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    /// Inner size of the feed-forward layers.
    pub hidden_dim: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_activation")]
    pub activation: String,
}

fn default_activation() -> String {
    "gelu".to_string()
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    /// GELU with the error function, transformers' `gelu`.
    Gelu,
    /// GELU with the tanh approximation, transformers' `gelu_new` and `gelu_pytorch_tanh`.
    GeluTanh,
    Relu,
}

impl Activation {
    fn parse(name: &str) -> Result<Activation> {
        match name {
            "gelu" => Ok(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(Activation::GeluTanh),
            "relu" => Ok(Activation::Relu),
            other => candle_core::bail!(
                "unsupported DistilBERT activation {other:?}: expected gelu, gelu_new, \
                 gelu_pytorch_tanh or relu"
            ),
        }
    }

    fn apply(self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Gelu => xs.gelu_erf(),
            Activation::GeluTanh => xs.gelu(),
            Activation::Relu => xs.relu(),
        }
    }
}

struct Attention {
    query: Linear,
    key: Linear,
    value: Linear,
    output: Linear,
    heads: usize,
    head_size: usize,
}

impl Attention {
    fn load(vb: VarBuilder, config: &DistilBertConfig) -> Result<Attention> {
        if config.n_heads == 0 || !config.dim.is_multiple_of(config.n_heads) {
            candle_core::bail!(
                "dim {} is not a multiple of n_heads {}",
                config.dim,
                config.n_heads
            );
        }
        Ok(Attention {
            query: linear(config.dim, config.dim, vb.pp("q_lin"))?,
            key: linear(config.dim, config.dim, vb.pp("k_lin"))?,
            value: linear(config.dim, config.dim, vb.pp("v_lin"))?,
            output: linear(config.dim, config.dim, vb.pp("out_lin"))?,
            heads: config.n_heads,
            head_size: config.dim / config.n_heads,
        })
    }

    /// `mask_bias` is `[batch, 1, 1, tokens]`: 0 for real tokens, the lowest f32 for padding.
    fn forward(&self, hidden: &Tensor, mask_bias: &Tensor) -> Result<Tensor> {
        let (batch, tokens, dim) = hidden.dims3()?;
        let split_heads = |xs: Tensor| -> Result<Tensor> {
            xs.reshape((batch, tokens, self.heads, self.head_size))?
                .transpose(1, 2)?
                .contiguous()
        };
        let query = split_heads(self.query.forward(hidden)?)?;
        let key = split_heads(self.key.forward(hidden)?)?;
        let value = split_heads(self.value.forward(hidden)?)?;

        // transformers scales the query before the product, not the scores after it.
        let query = (query / (self.head_size as f64).sqrt())?;
        let scores = query
            .matmul(&key.t()?.contiguous()?)?
            .broadcast_add(mask_bias)?;
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let context = weights
            .matmul(&value)?
            .transpose(1, 2)?
            .reshape((batch, tokens, dim))?;
        self.output.forward(&context)
    }
}

struct Layer {
    attention: Attention,
    attention_norm: LayerNorm,
    feed_forward_in: Linear,
    feed_forward_out: Linear,
    output_norm: LayerNorm,
    activation: Activation,
}

impl Layer {
    fn load(vb: VarBuilder, config: &DistilBertConfig, activation: Activation) -> Result<Layer> {
        Ok(Layer {
            attention: Attention::load(vb.pp("attention"), config)?,
            attention_norm: layer_norm(config.dim, LAYER_NORM_EPS, vb.pp("sa_layer_norm"))?,
            feed_forward_in: linear(config.dim, config.hidden_dim, vb.pp("ffn").pp("lin1"))?,
            feed_forward_out: linear(config.hidden_dim, config.dim, vb.pp("ffn").pp("lin2"))?,
            output_norm: layer_norm(config.dim, LAYER_NORM_EPS, vb.pp("output_layer_norm"))?,
            activation,
        })
    }

    fn forward(&self, hidden: &Tensor, mask_bias: &Tensor) -> Result<Tensor> {
        let attended = self.attention.forward(hidden, mask_bias)?;
        let attended = self.attention_norm.forward(&(attended + hidden)?)?;
        let inner = self
            .activation
            .apply(&self.feed_forward_in.forward(&attended)?)?;
        let output = self.feed_forward_out.forward(&inner)?;
        self.output_norm.forward(&(output + attended)?)
    }
}

/// `DistilBertModel`: embeddings and transformer layers, without a head.
pub struct DistilBert {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    max_positions: usize,
}

impl DistilBert {
    /// Loads the weights under `vb`, which points at the `distilbert` prefix of a
    /// `DistilBertFor...` checkpoint (or at the root of a bare `DistilBertModel`).
    pub fn load(vb: VarBuilder, config: &DistilBertConfig) -> Result<DistilBert> {
        let activation = Activation::parse(&config.activation)?;
        let embeddings = vb.pp("embeddings");
        let layers = (0..config.n_layers)
            .map(|index| {
                Layer::load(
                    vb.pp("transformer").pp("layer").pp(index),
                    config,
                    activation,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DistilBert {
            word_embeddings: embedding(
                config.vocab_size,
                config.dim,
                embeddings.pp("word_embeddings"),
            )?,
            position_embeddings: embedding(
                config.max_position_embeddings,
                config.dim,
                embeddings.pp("position_embeddings"),
            )?,
            embedding_norm: layer_norm(config.dim, LAYER_NORM_EPS, embeddings.pp("LayerNorm"))?,
            layers,
            max_positions: config.max_position_embeddings,
        })
    }

    /// Returns the last hidden state, `[batch, tokens, dim]`. `input_ids` and
    /// `attention_mask` are `[batch, tokens]`. The mask is 1 for real tokens, 0 for padding.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let (_, tokens) = input_ids.dims2()?;
        if tokens > self.max_positions {
            candle_core::bail!(
                "{tokens} tokens exceed the model's {} positions",
                self.max_positions
            );
        }
        let positions = Tensor::arange(0u32, tokens as u32, input_ids.device())?;
        let hidden = self
            .word_embeddings
            .forward(input_ids)?
            .broadcast_add(&self.position_embeddings.forward(&positions)?)?;
        let mut hidden = self.embedding_norm.forward(&hidden)?;

        let mask_bias = padding_bias(attention_mask)?;
        for layer in &self.layers {
            hidden = layer.forward(&hidden, &mask_bias)?;
        }
        Ok(hidden)
    }
}

/// Turns a `[batch, tokens]` attention mask into the additive bias of the attention scores,
/// `[batch, 1, 1, tokens]`. Padding gets the lowest f32, as transformers' `finfo.min`.
fn padding_bias(attention_mask: &Tensor) -> Result<Tensor> {
    let (batch, tokens) = attention_mask.dims2()?;
    let mask = attention_mask.to_dtype(DType::F32)?;
    let padding = (mask.ones_like()? - mask)?;
    (padding * f64::from(f32::MIN))?.reshape((batch, 1, 1, tokens))
}

/// Returns the first token's vector of each row, `[batch, hidden]`.
pub fn first_token(hidden: &Tensor) -> Result<Tensor> {
    hidden.narrow(1, 0, 1)?.squeeze(1)?.contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn padding_bias_masks_only_padding() {
        let mask = Tensor::new(&[[1i64, 1, 0]], &Device::Cpu).unwrap();
        let bias = padding_bias(&mask).unwrap();
        assert_eq!(bias.dims(), &[1, 1, 1, 3]);
        let values = bias.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(values[0], 0.0);
        assert_eq!(values[1], 0.0);
        assert_eq!(values[2], f32::MIN);
    }

    #[test]
    fn unknown_activation_is_rejected() {
        let error = Activation::parse("swish").unwrap_err();
        assert!(error.to_string().contains("swish"), "{error}");
    }
}
