"""The built-in text encoder and tokenizer as a Hugging Face folder (transformers).

vlp's `bert` encoder is a pre-norm transformer (LayerNorm before attention and MLP, one after
the embeddings and one at the end); BERT itself is post-norm, so the exact transformers
counterpart is RoBERTa-PreLayerNorm. Its positions start after the padding id, so vlp's position
i is written to row pad_id + 1 + i. `AutoModel.from_pretrained(OUT)` and
`AutoTokenizer.from_pretrained(OUT)` then give vlp's token features for every real token;
`vlp_text_head.safetensors` holds the projection and `vlp_export.json` the pooling that make
vlp's text embedding.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer

from vlp.core.model import VLPModel
from vlp.data.tokenize import TokenIds
from vlp.encoders.bert import BertEncoder
from vlp.export.errors import ExportError

TEXT_HEAD = "vlp_text_head.safetensors"
EXPORT_INFO = "vlp_export.json"


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ExportError("exporting for Hugging Face needs transformers: "
                          "pip install -e '.[export]'") from None
    return transformers


def hf_text_model(model: VLPModel, tokens: TokenIds):
    """A transformers RobertaPreLayerNormModel with the weights of vlp's text encoder."""
    encoder = model.text_encoder
    if not isinstance(encoder, BertEncoder):
        raise ExportError(f"the text encoder is {type(encoder).__name__}; the Hugging Face export "
                          "of weights supports 'bert'")
    transformers = _transformers()
    params, width = encoder.params, encoder.width
    max_len = encoder.pos_embed.shape[1]
    config = transformers.RobertaPreLayerNormConfig(
        vocab_size=encoder.token_embed.num_embeddings, hidden_size=width,
        num_hidden_layers=params.layers, num_attention_heads=params.heads,
        intermediate_size=encoder.blocks[0].mlp[0].out_features, hidden_act="gelu",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        max_position_embeddings=max_len + tokens.pad + 1, type_vocab_size=1,
        layer_norm_eps=encoder.norm.eps, pad_token_id=tokens.pad, bos_token_id=tokens.cls,
        eos_token_id=tokens.sep)
    hf = transformers.RobertaPreLayerNormModel(config, add_pooling_layer=False)
    positions = torch.zeros(config.max_position_embeddings, width)
    positions[tokens.pad + 1:] = encoder.pos_embed[0].detach()
    state = {"embeddings.word_embeddings.weight": encoder.token_embed.weight,
             "embeddings.position_embeddings.weight": positions,
             "embeddings.token_type_embeddings.weight": torch.zeros(1, width),
             "embeddings.LayerNorm.weight": encoder.embed_norm.weight,
             "embeddings.LayerNorm.bias": encoder.embed_norm.bias,
             "LayerNorm.weight": encoder.norm.weight, "LayerNorm.bias": encoder.norm.bias}
    for i, block in enumerate(encoder.blocks):
        layer, attn = f"encoder.layer.{i}.", block.attn
        key_weight, value_weight = attn.kv.weight.chunk(2)  # kv packs (two h d): k, then v
        key_bias, value_bias = attn.kv.bias.chunk(2)
        parts = {"attention.LayerNorm": (block.norm1.weight, block.norm1.bias),
                 "attention.self.query": (attn.q.weight, attn.q.bias),
                 "attention.self.key": (key_weight, key_bias),
                 "attention.self.value": (value_weight, value_bias),
                 "attention.output.dense": (attn.out.weight, attn.out.bias),
                 "intermediate.LayerNorm": (block.norm2.weight, block.norm2.bias),
                 "intermediate.dense": (block.mlp[0].weight, block.mlp[0].bias),
                 "output.dense": (block.mlp[3].weight, block.mlp[3].bias)}
        for name, (weight, bias) in parts.items():
            state[layer + name + ".weight"], state[layer + name + ".bias"] = weight, bias
    hf.load_state_dict({k: v.detach().clone() for k, v in state.items()})
    return hf.eval()


def hf_tokenizer(tokenizer: Tokenizer, max_len: int):
    """vlp's tokenizer as a transformers fast tokenizer (same ids, [CLS] ... [SEP])."""
    transformers = _transformers()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tokenizer.to_str()), model_max_length=max_len,
        pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", bos_token="[CLS]", eos_token="[SEP]")


def export_hf(model: VLPModel, tokenizer: Tokenizer, out: Path) -> Path:
    tokens = TokenIds.of(tokenizer)
    hf_text_model(model, tokens).save_pretrained(str(out))
    hf_tokenizer(tokenizer, model.text_encoder.pos_embed.shape[1]).save_pretrained(str(out))
    save_file({"text_projection.weight": model.text_proj.weight.detach().contiguous()},
              str(out / TEXT_HEAD))
    info = {"pool": model.text_encoder.pool, "embed_dim": model.text_proj.out_features,
            "embedding": "l2_normalize(text_projection.weight @ pool(last_hidden_state))",
            "pool_note": "cls: token 0; mean: mean over attention_mask tokens"}
    (out / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return out
