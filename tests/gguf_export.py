"""Test helper: a tiny transformers Llama written as a GGUF file with the `gguf` package, as llama.cpp's converter does
(llama.cpp's q/k row order, the tokenizer as a byte-level BPE vocabulary with merges, the chat template)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _llama_cpp_order(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp stores q/k rows per head in interleaved rotary order; transformers undoes this when loading."""
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def tokenizer_metadata(model_dir: Path) -> tuple[list[str], list[int], list[str]]:
    """(tokens by id, token types: 3 = control for added tokens, merges) of a saved fast BPE tokenizer."""
    spec = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    tokens = [""] * (len(spec["model"]["vocab"]) + len(spec["added_tokens"]))
    for text, index in spec["model"]["vocab"].items():
        tokens[index] = text
    added = {token["id"]: token["content"] for token in spec["added_tokens"]}
    for index, text in added.items():
        tokens[index] = text
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    return tokens, [3 if i in added else 1 for i in range(len(tokens))], merges


def export_llama_gguf(model_dir: Path, out: Path, quantize: bool = True) -> Path:
    """Write the Llama in `model_dir` (with its tokenizer) to `out`; 2-D weights as Q8_0 when `quantize`."""
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = model.config
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    tokens, types, merges = tokenizer_metadata(model_dir)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_chat_template(tokenizer.chat_template)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        weight = tensor.float().numpy()
        if name.endswith("q_proj.weight"):
            weight = _llama_cpp_order(weight, config.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            weight = _llama_cpp_order(weight, config.num_key_value_heads)
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if quantize and weight.ndim == 2:
            q8 = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(gguf_name, gguf.quants.quantize(weight, q8), raw_dtype=q8)
        else:
            writer.add_tensor(gguf_name, weight)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def q8_round_trip(model_dir: Path):
    """The model of `model_dir` with every 2-D weight quantised to Q8_0 and back: what its GGUF holds exactly."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    q8 = gguf.GGMLQuantizationType.Q8_0
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.ndim == 2:
                packed = gguf.quants.quantize(tensor.float().numpy(), q8)
                tensor.copy_(torch.from_numpy(gguf.quants.dequantize(packed, q8).reshape(tensor.shape)))
    return model.eval()
