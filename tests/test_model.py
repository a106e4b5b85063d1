"""Model access: chat formatting, batched greedy decoding, padding invariance, architecture discovery."""

from __future__ import annotations

import pytest
import torch

from bruno.errors import BrunoError
from bruno.model.generation import (
    encode,
    first_token_logprobs,
    generate_greedy,
    kl_divergence,
    last_token_residuals,
)
from bruno.model.loading import ModelSettings, load_model

TEXTS = ["How do I bake bread?", "Explain how to write a poem about the sea.", "hi"]


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return load_model(tiny_model_dir, ModelSettings())


def test_chat_template_and_left_padding(loaded):
    model, tok = loaded
    batch = encode(tok, TEXTS, "Be brief.", 8, torch.device("cpu"))[0]
    first = tok.decode(batch.input_ids[0])
    assert "<|system|>\nBe brief.<|end|>" in first and first.endswith("<|assistant|>\n")
    assert batch.attention_mask[:, -1].all()  # left padding: every prompt ends at the last position


def test_greedy_matches_transformers_generate(loaded):
    model, tok = loaded
    batch = encode(tok, TEXTS, None, 8, torch.device("cpu"))
    ours = generate_greedy(model, tok, batch, max_new_tokens=12)
    b = batch[0]
    ref = model.generate(
        input_ids=b.input_ids, attention_mask=b.attention_mask, max_new_tokens=12, do_sample=False
    )
    theirs = [t.strip() for t in tok.batch_decode(ref[:, b.input_ids.shape[1] :], skip_special_tokens=True)]
    assert ours == theirs


def test_results_do_not_depend_on_batching(loaded):
    model, tok = loaded
    together = encode(tok, TEXTS, None, 8, torch.device("cpu"))
    alone = encode(tok, TEXTS, None, 1, torch.device("cpu"))
    assert torch.allclose(
        last_token_residuals(model, together), last_token_residuals(model, alone), atol=1e-5
    )
    a, b = first_token_logprobs(model, together), first_token_logprobs(model, alone)
    assert torch.allclose(a, b, atol=1e-5)
    assert kl_divergence(a, b) == pytest.approx(0.0, abs=1e-6)
    assert generate_greedy(model, tok, together, 8) == generate_greedy(model, tok, alone, 8)


LENGTHS = [
    "hi",
    "Tell me a story.",
    "Explain in detail how bread rises when it is baked in a hot oven for an hour.",
]


def one_at_a_time(model, tok, texts, tokens=10):
    return [
        generate_greedy(model, tok, encode(tok, [t], None, 1, torch.device("cpu")), tokens)[0] for t in texts
    ]


def test_length_split_prefill_and_early_exit_change_nothing(loaded, monkeypatch):
    """Prompts of different lengths are prefilled in length groups (trimmed padding) and finished sequences leave
    the batch; both must give what one padded batch does, row for row, in the original order."""
    import bruno.model.generation as model_module

    model, tok = loaded
    texts = LENGTHS * 3  # unsorted lengths
    batches = encode(tok, texts, None, 16, torch.device("cpu"))
    monkeypatch.setattr(model_module, "PREFILL_FORWARD_COST_TOKENS", 10**6)  # one group: the padded batch
    one_logprobs, one_replies = first_token_logprobs(model, batches), generate_greedy(model, tok, batches, 10)
    monkeypatch.setattr(model_module, "PREFILL_FORWARD_COST_TOKENS", 0)  # a group per length
    assert len(batches[0].by_length()) == 3
    split_logprobs, split_replies = (
        first_token_logprobs(model, batches),
        generate_greedy(model, tok, batches, 10),
    )
    assert torch.allclose(one_logprobs, split_logprobs, atol=1e-5)
    assert split_replies == one_replies
    assert split_replies == one_at_a_time(model, tok, texts)

    # Make a token the random model emits mid-sequence the EOS, so rows finish at different steps and leave.
    b = batches[0]
    ids = model.generate(
        input_ids=b.input_ids, attention_mask=b.attention_mask, max_new_tokens=10, do_sample=False
    )
    ids = ids[:, b.input_ids.shape[1] :]
    first_at = {}
    for token in ids.unique().tolist():
        steps = {int((row == token).nonzero()[0]) if (row == token).any() else 10 for row in ids}
        first_at[token] = steps
    eos = max(first_at, key=lambda t: len(first_at[t]))
    assert len(first_at[eos]) >= 3  # rows end at different steps (or not at all)
    monkeypatch.setattr(model_module, "eos_token_ids", lambda *_: [eos])
    early = generate_greedy(model, tok, batches, 10)
    assert early == one_at_a_time(model, tok, texts)
    assert early != split_replies


def test_sampled_decoding_is_seeded_and_replies_end_at_eos(loaded, monkeypatch):
    """The one decoder serves greedy replies (the trial loop) and seeded samples (the hallucination detector)."""
    import bruno.model.generation as model_module
    from bruno.model.generation import decode_replies

    model, tok = loaded
    prompts = [
        tok(s, add_special_tokens=False)["input_ids"] for s in model_module.chat_strings(tok, TEXTS, None)
    ]
    eos = model_module.eos_token_ids(model, tok)

    def sample(seed: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(seed)
        return decode_replies(model, prompts * 4, tok.pad_token_id, eos, 10, 1.0, generator)

    assert sample(0) == sample(0)
    assert sample(0) != sample(1)
    greedy = decode_replies(model, prompts, tok.pad_token_id, eos, 10)
    assert [t.strip() for t in tok.batch_decode(greedy, skip_special_tokens=True)] == generate_greedy(
        model, tok, encode(tok, TEXTS, None, 8, torch.device("cpu")), 10
    )
    # With a token the replies contain made the EOS, each reply ends with (and keeps) its first EOS.
    stop = greedy[0][3]
    monkeypatch.setattr(model_module, "eos_token_ids", lambda *_: [stop])
    cut = decode_replies(model, prompts, tok.pad_token_id, [stop], 10)
    assert cut[0] == greedy[0][: greedy[0].index(stop) + 1]
    assert all(stop not in reply[:-1] for reply in cut)


def test_stop_callback_ends_decided_sequences(loaded):
    """`stop` sees the text so far of the running sequences; those it marks decided leave the batch."""
    model, tok = loaded
    batches = encode(tok, TEXTS, None, 8, torch.device("cpu"))
    full, two = generate_greedy(model, tok, batches, 8), generate_greedy(model, tok, batches, 2)
    assert len(set(two)) == len(TEXTS)
    seen: list[list[str]] = []

    def first_row_decided(texts: list[str]) -> list[bool]:  # the first prompt's reply, once it has 2 tokens
        seen.append(texts)
        return [text.strip() == two[0] for text in texts]

    stopped = generate_greedy(model, tok, batches, 8, stop=first_row_decided, stop_check_every=2)
    assert stopped[0] == two[0] != full[0]
    assert stopped[1:] == full[1:]
    assert len(seen[0]) == len(TEXTS) and all(len(texts) < len(TEXTS) for texts in seen[1:])


def test_length_split_minimises_padding_plus_calls():
    from bruno.model.generation import Batch

    mask = torch.zeros(6, 20, dtype=torch.long)
    for row, length in enumerate([20, 3, 19, 4, 20, 3]):
        mask[row, -length:] = 1
    batch = Batch(torch.arange(120).reshape(6, 20), mask)
    groups = batch.by_length(forward_cost_tokens=10)  # 3 short rows padded to 20 would waste 49 tokens > 10
    assert [sorted(rows.tolist()) for rows, _ in groups] == [[1, 3, 5], [0, 2, 4]]
    assert [sub.input_ids.shape[1] for _, sub in groups] == [4, 20]
    assert torch.equal(groups[0][1].input_ids, batch.input_ids[groups[0][0], -4:])
    assert len(batch.by_length(forward_cost_tokens=1000)) == 1  # a call costs more than the padding


def test_residuals_shape(loaded):
    model, tok = loaded
    res = last_token_residuals(model, encode(tok, TEXTS, None, 8, torch.device("cpu")))
    assert res.shape == (3, model.config.num_hidden_layers + 1, model.config.hidden_size)
    assert res.dtype == torch.float32


def test_residual_writers(loaded):
    from bruno.edit.targets import residual_writers

    model, _ = loaded
    found = residual_writers(model, ["attn.o_proj", "mlp.down_proj"])
    assert len(found["attn.o_proj"]) == model.config.num_hidden_layers
    with pytest.raises(BrunoError, match="Unknown component"):
        residual_writers(model, ["mlp.up"])


def test_tokenizer_without_chat_template_is_a_clear_error(tmp_path):
    from conftest import build_tiny_model

    path = build_tiny_model(tmp_path / "m", chat_template=None)
    with pytest.raises(BrunoError, match="model.chat_template"):
        load_model(path, ModelSettings())
    from conftest import CHAT_TEMPLATE

    model, tok = load_model(path, ModelSettings(chat_template=CHAT_TEMPLATE))  # a configured template works
    assert tok.chat_template == CHAT_TEMPLATE


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(BrunoError, match="local model directory"):
        load_model(tmp_path / "does-not-exist", ModelSettings())
