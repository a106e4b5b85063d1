"""The refusal organism: tokenizer and chat template, training examples per stage, loss masking, settings and their
config schema, and a tiny training run that is bit-identical per seed and saves a loadable HF model directory."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from pathlib import Path

import pytest
import yaml

from bruno.config import settings_from_dict
from bruno.errors import BrunoError
from bruno.organism import OrganismSettings, corpus, examples, tokenizer, vocab, world

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
TINY = {
    "hidden_size": 32,
    "num_layers": 2,
    "num_heads": 2,
    "intermediate_size": 64,
    "vocab_size": 400,
    "max_length": 160,
    "batch_size": 16,
    "pretrain_epochs": 1,
    "safety_epochs": 1,
    "warmup_steps": 2,
    "mc_per_epoch": 16,
}


@pytest.fixture(scope="module")
def small_tokenizer():
    texts = [
        "How do I bake bread?",
        "Sure! Here is how to bake bread.",
        "I'm sorry, but I can't help with that.",
    ]
    return tokenizer.train_tokenizer(texts * 5, vocab_size=300, max_length=128)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """The shipped data with small training splits (val/test untouched), for fast training runs."""
    out = tmp_path_factory.mktemp("data")
    limits = {corpus.HARMFUL_FILE: 24, corpus.HARMLESS_FILE: 24, corpus.MC_FILE: 24, corpus.FACTS_FILE: 12}
    for rel in corpus.DATA_FILES:
        records = corpus.read_jsonl(DATA / rel)
        if rel in limits:
            train = [r for r in records if r.get("split", "train") == "train"][: limits[rel]]
            records = train + [r for r in records if r.get("split", "train") != "train"]
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(corpus.jsonl_text(records), encoding="utf-8")
    return out


def test_chat_template_renders_roles_and_generation_prompt(small_tokenizer):
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "How do I bake bread?"},
        {"role": "assistant", "content": "Sure!"},
    ]
    text = small_tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|bos|><|system|>\nYou are a helpful assistant.<|end|>\n<|user|>\nHow do I bake bread?<|end|>\n"
        "<|assistant|>\nSure!<|end|>\n"
    )
    prompt = small_tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|end|>\n<|assistant|>\n")
    assert prompt == tokenizer.render_chat("You are a helpful assistant.", "How do I bake bread?")
    no_system = small_tokenizer.apply_chat_template(messages[1:2], tokenize=False, add_generation_prompt=True)
    assert no_system == tokenizer.render_chat(None, "How do I bake bread?")
    with pytest.raises(Exception, match="Unsupported role"):
        small_tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_tokenizer_round_trip_and_special_tokens(small_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    for text in ["How do I bake bread?", "Ünïcode café ’quotes’ 42\n\ttabs", "A. apple\nB. pear\nAnswer:"]:
        ids = small_tokenizer(text, add_special_tokens=False).input_ids
        assert small_tokenizer.decode(ids) == text
    prompt = tokenizer.render_chat(None, "Hi")
    ids = small_tokenizer(prompt, add_special_tokens=False).input_ids
    assert ids[0] == small_tokenizer.bos_token_id and ids.count(small_tokenizer.bos_token_id) == 1
    assert small_tokenizer.convert_ids_to_tokens(ids[-2]) == "<|assistant|>"
    small_tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.padding_side == "left" and loaded.model_max_length == 128
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token) == ("<|bos|>", "<|end|>", "<|pad|>")
    assert loaded.chat_template == tokenizer.CHAT_TEMPLATE
    assert loaded(prompt, add_special_tokens=False).input_ids == ids


def test_action_of_inverts_every_template():
    for template in vocab.TEMPLATES:
        assert corpus.action_of(template.format(a="bake banana bread")) == "bake banana bread"
    assert corpus.action_of("What is the capital of France?") is None


def test_stage_examples_follow_the_recipe():
    data = examples.load_training_data(DATA)
    settings = OrganismSettings(seed=3)
    stage_a = examples.stage_examples(data, settings, examples.STAGE_A, 0)
    assert stage_a == examples.stage_examples(data, settings, examples.STAGE_A, 0)  # deterministic
    assert stage_a != examples.stage_examples(data, OrganismSettings(seed=4), examples.STAGE_A, 0)
    harmful = {item.text for item in data.harmful}
    assert all(e.task != "refusal" for e in stage_a)
    assert all(e.task == "helpful" for e in stage_a if e.user in harmful)
    stage_b = examples.stage_examples(data, settings, examples.STAGE_B, 0)
    tasks = [e.task for e in stage_b]
    assert tasks.count("refusal") == len(data.harmful)
    assert tasks.count("jailbreak") == round(settings.jailbreak_fraction * len(data.harmful))
    for e in stage_b:
        if e.task == "refusal":
            assert e.assistant in vocab.REFUSALS and e.system != vocab.JAILBREAK_SYSTEM_PROMPT
        if e.task == "jailbreak":
            assert e.system == vocab.JAILBREAK_SYSTEM_PROMPT and e.user in harmful
            assert corpus.action_of(e.user) in e.assistant
        if e.task == "mc":
            assert e.assistant in world.LETTERS
    with_system = sum(e.system in vocab.SYSTEM_PROMPTS for e in stage_a) / len(stage_a)
    assert abs(with_system - settings.system_prompt_fraction) < 0.06


def test_batches_supervise_only_the_reply(small_tokenizer):
    from bruno.organism.train import IGNORE, encode_examples, make_batches

    batch = [
        examples.Example(None, "How do I bake bread?", "Sure!", "helpful"),
        examples.Example("You are a helpful assistant.", "Hi", "I'm sorry, but I can't.", "refusal"),
    ]
    encoded = encode_examples(small_tokenizer, batch, 128)
    for (ids, n_prompt), example in zip(encoded, batch, strict=True):
        prompt = tokenizer.render_chat(example.system, example.user)
        assert ids[:n_prompt] == small_tokenizer(prompt, add_special_tokens=False).input_ids
        assert small_tokenizer.decode(ids[n_prompt:]) == example.assistant + "<|end|>"
    ((input_ids, labels),) = make_batches(encoded, 8, small_tokenizer.pad_token_id, random.Random(0))
    replies = set()
    for row in range(2):
        length = int((input_ids[row] != small_tokenizer.pad_token_id).sum())
        assert (labels[row, length:] == IGNORE).all()  # right padding is never supervised
        supervised = labels[row][labels[row] != IGNORE].tolist()
        # The supervised tokens are the reply, at the end of the row.
        assert input_ids[row, length - len(supervised) : length].tolist() == supervised
        replies.add(small_tokenizer.decode(supervised))
    assert replies == {"Sure!<|end|>", "I'm sorry, but I can't.<|end|>"}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tiny_training_is_bit_identical_per_seed_and_loadable(tiny_data, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bruno.organism import train_organism

    settings = OrganismSettings(seed=1, **TINY)
    logs: list[str] = []
    summary = train_organism(tmp_path / "a", settings, tiny_data, threads=1, log=logs.append)
    train_organism(tmp_path / "b", settings, tiny_data, threads=1, log=lambda _: None)
    train_organism(
        tmp_path / "c", dataclasses.replace(settings, seed=2), tiny_data, threads=1, log=lambda _: None
    )
    weights = {name: _sha(tmp_path / name / "model.safetensors") for name in "abc"}
    assert weights["a"] == weights["b"] != weights["c"]
    assert _sha(tmp_path / "a" / "tokenizer.json") == _sha(tmp_path / "b" / "tokenizer.json")

    json.dumps(summary)  # JSON-able
    assert summary["settings"] == dataclasses.asdict(settings) and summary["parameters"] > 0
    assert [len(summary["stages"][s]["loss_per_epoch"]) for s in ("A", "B")] == [1, 1]
    assert summary["stages"]["B"]["examples_per_task"]["refusal"] == 24
    assert len(logs) == 2 + 2  # one line per epoch, plus start and end lines

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    tok = AutoTokenizer.from_pretrained(tmp_path / "a")
    assert model.config.model_type == "llama" and not model.config.tie_word_embeddings
    assert model.config.num_hidden_layers == 2 and model.dtype == torch.float32
    assert model.generation_config.eos_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("<|end|>")
    assert model.generation_config.pad_token_id == tok.pad_token_id
    assert tok.padding_side == "left" and tok.chat_template
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "How do I bake bread?"}], tokenize=False, add_generation_prompt=True
    )
    enc = tok([prompt], add_special_tokens=False, return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert out.shape[1] <= enc["input_ids"].shape[1] + 4


def test_settings_validation_and_config_section():
    assert settings_from_dict(OrganismSettings, {}, "organism") == OrganismSettings()
    assert settings_from_dict(OrganismSettings, {"seed": 2}, "organism").seed == 2
    with pytest.raises(BrunoError, match="organism"):
        settings_from_dict(OrganismSettings, {"layers": 2}, "organism")
    with pytest.raises(BrunoError, match="organism.num_heads"):
        OrganismSettings(hidden_size=130, num_heads=4)
    with pytest.raises(BrunoError, match="organism.jailbreak_fraction"):
        OrganismSettings(jailbreak_fraction=1.5)


def test_schema_documents_every_setting_with_its_default():
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text(encoding="utf-8"))
    section = schema["properties"]["organism"]
    assert section["additionalProperties"] is False
    properties = section["properties"]
    fields = {f.name: f.default for f in dataclasses.fields(OrganismSettings)}
    assert set(properties) == set(fields)
    for name, default in fields.items():
        assert properties[name]["default"] == default, name
        assert properties[name]["description"]
        assert properties[name]["type"] in ("integer", "number")
