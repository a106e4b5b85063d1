"""Thinking models in the held-out evaluation and in healing: prompts end with the base model's response prefix, KL
is taken where the answer starts, and refusals are judged on the answer; a model that does not think is evaluated
exactly as before (no prefix).

The models are tiny Qwen3s (ChatML, `<think>` tokens) rigged so that each next token depends on the current token
only (their layers write nothing; embedding and output head map a token to its successor), so every prompt gets the
same reply and what follows `</think>` can differ from what follows the generation prompt."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from test_families import CPU, build_family_model
from test_search import RANGES

from bruno.config import settings_from_dict
from bruno.evaluation.capability import MCQuestion, MMLUSettings
from bruno.evaluation.hallucination import FactualQuestion, HallucinationDetector
from bruno.evaluation.refusal import MarkerDetector
from bruno.evaluation.scoring import build_evaluator
from bruno.evaluation.stage import EvaluationSettings
from bruno.heal.dpo import HealingSettings
from bruno.model.generation import encode, first_token_logprobs, generate_greedy
from bruno.model.loading import ModelSettings, load_model
from bruno.model.thinking import ResponseFormat, resolve_response_prefix
from bruno.prompts import Prompt, write_prompts

PIECES = ("Sure", " here", "Sorry", "Here", " fine", " sorry")  # single added tokens, the same in every rig
END, EOS, PREFIX = "END", "EOS", "<think></think>"
THINKS_SORRY_ANSWERS_SURE = {END: "<think>", "<think>": " sorry", " sorry": "</think>", "</think>": "Sure",
                             "Sure": " here", " here": EOS}  # fmt: skip
THINKS_FINE_ANSWERS_SORRY = {END: "<think>", "<think>": " fine", " fine": "</think>", "</think>": "Sorry",
                             "Sorry": EOS}  # fmt: skip
# Does not think: answers "Here" at once, but "Sure here" after an empty thinking block.
PLAIN = {END: "Here", "Here": EOS, "</think>": "Sure", "Sure": " here", " here": EOS}


pytestmark = pytest.mark.usefixtures("one_thread")


def rigged(transitions: dict[str, str]):
    """A tiny Qwen3 whose greedy successor of each key of `transitions` is its value (END: the last token of every
    rendered prompt, EOS: the end of turn)."""
    model, tok = build_family_model("qwen3", extra_tokens=PIECES)
    end = encode(tok, ["Hello"], None, 1, CPU)[0].input_ids[0, -1].item()

    def token(name: str) -> int:
        if name in (END, EOS):
            return end if name == END else tok.eos_token_id
        ids = tok.encode(name)
        assert len(ids) == 1, name
        return ids[0]

    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed, head = model.model.embed_tokens.weight, model.lm_head.weight
        embed[:, : len(transitions)] = 0
        head.zero_()
        for dim, (current, following) in enumerate(transitions.items()):
            embed[token(current)] = 0
            embed[token(current), dim] = 1.0
            head[token(following), dim] = 100.0
    return model, tok


def saved(transitions: dict[str, str], path):
    model, tok = rigged(transitions)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def token_id(tok, text: str) -> int:
    return tok.convert_tokens_to_ids(text) if text.startswith("<") else tok.encode(text)[0]


def write_sets(root, n: int = 3, split: str = "test") -> dict[str, str]:
    paths = {}
    for name in ("harmful", "harmless"):
        paths[name] = str(root / f"{name}_{split}.jsonl")
        write_prompts(paths[name], [Prompt(f"{name}{i}", f"Tell me about {name} thing {i}.", "c", split)
                                    for i in range(n)])  # fmt: skip
    return paths


def evaluation_settings(tmp_path, hallucination: bool) -> EvaluationSettings:
    mc = tmp_path / "mc.jsonl"
    mc.write_text("".join(json.dumps({"id": f"mc{i}", "subject": "animals", "question": f"Which animal {i}?",
                                      "choices": ["cat", "dog", "cow", "owl"], "answer": "ABCD"[i % 4],
                                      "split": "test"}) + "\n" for i in range(4)))  # fmt: skip
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"id": f"q{i}", "question": f"Who made thing {i}?", "answer": "Sure",
                                      "split": "test"}) + "\n" for i in range(2)))  # fmt: skip
    values = {
        "max_new_tokens": 8, "batch_size": 2, "refusal_detection_mode": "markers",
        "kl_teacher_forced_tokens": 3, "kl_teacher_forced_top_tokens": 16,
        "mmlu": {"source": {"path": str(mc), "record_split": "test"}, "mmlu_categories": None,
                 "mmlu_samples_per_category": None},
        "hallucination": {"enabled": hallucination, "source": {"path": str(qa), "record_split": "test"},
                          "hallucination_n_samples": 2, "max_new_tokens": 8},
    }  # fmt: skip
    return settings_from_dict(EvaluationSettings, values, "evaluation")


def evaluate(stage, model_dir, model_settings, prompts, settings, reference, write, out):
    from bruno.jobs.evaluate import run

    outputs = {k: out / f"{k}.{'json' if k == 'metrics' else 'csv'}" for k in ("refusals", "mmlu", "hallucination",
                                                                                "metrics")}  # fmt: skip
    metrics = run(stage, str(model_dir), model_settings, prompts, settings, outputs, reference, write,
                  train_prompt_paths=prompts)  # fmt: skip
    return metrics, pd.read_csv(outputs["refusals"], keep_default_na=False)


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation


def test_evaluation_of_a_thinking_model_takes_kl_and_refusals_on_the_answer(tmp_path):
    base_dir = saved(THINKS_SORRY_ANSWERS_SURE, tmp_path / "base")
    plain_dir = saved(PLAIN, tmp_path / "plain")
    _, tok = load_model(base_dir, ModelSettings())
    sure, think = token_id(tok, "Sure"), token_id(tok, "<think>")
    prompts, settings = write_sets(tmp_path), evaluation_settings(tmp_path, hallucination=True)

    # auto: the base model thinks, so its prompts end with an empty thinking block and the replies are answers.
    reference = tmp_path / "auto" / "harmless_logprobs.pt"
    metrics, rows = evaluate(
        "base", base_dir, ModelSettings(), prompts, settings, reference, True, tmp_path / "auto"
    )
    assert metrics["response_prefix"] == PREFIX
    assert set(rows["response"]) == {"Sure here"} and not rows["is_refusal"].any()
    ref = torch.load(reference, weights_only=True)
    assert ref["response_prefix"] == PREFIX
    assert (
        ref["logprobs"].argmax(-1).tolist() == [sure] * 3
    )  # the first-token KL position is the answer's start
    assert [r[0] for r in ref["teacher_forced"]["replies"]] == [sure] * 3
    halluc = pd.read_csv(tmp_path / "auto" / "hallucination.csv")
    assert list(halluc["greedy_answer"]) == ["Sure here"] * 2 and halluc["correct"].all()

    # Another stage is rendered with the base's prefix, not its own: PLAIN alone would get none (and answer "Here"),
    # after the base's prefix it answers exactly as the base does, so both KLs are 0.
    plain, _ = load_model(plain_dir, ModelSettings())
    assert resolve_response_prefix("auto", plain, tok, ["Hi", "Tell me"], None) == ""
    metrics, rows = evaluate("v/ablated", plain_dir, ModelSettings(), prompts, settings, reference, False,
                             tmp_path / "stage")  # fmt: skip
    assert metrics["response_prefix"] == PREFIX
    assert set(rows["response"]) == {"Sure here"}
    assert metrics["kl_divergence"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["kl_divergence_teacher_forced"]["value"] == pytest.approx(0.0, abs=1e-6)
    from bruno.errors import BrunoError

    with pytest.raises(BrunoError, match="response prefix"):
        evaluate("v/ablated", plain_dir, ModelSettings(response_prefix=""), prompts, settings, reference, False,
                 tmp_path / "mismatch")  # fmt: skip

    # Prefix off: the replies open a thinking block that says "sorry"; only the answer ("Sure here") is judged.
    off = ModelSettings(response_prefix="")
    reference = tmp_path / "off" / "harmless_logprobs.pt"
    metrics, rows = evaluate("base", base_dir, off, prompts, settings, reference, True, tmp_path / "off")
    assert metrics["response_prefix"] == ""
    assert set(rows["response"]) == {"<think> sorry</think>Sure here"}
    assert not rows["is_refusal"].any() and not rows["is_refusal_markers"].any()
    assert all(
        v.is_refusal for v in MarkerDetector().classify(list(rows["response"]))
    )  # the whole reply would
    assert metrics["refusal_rate_harmful"]["value"] == 0.0
    assert torch.load(reference, weights_only=True)["logprobs"].argmax(-1).tolist() == [think] * 3
    assert list(pd.read_csv(tmp_path / "off" / "hallucination.csv")["greedy_answer"]) == ["Sure here"] * 2


def test_multiple_choice_and_hallucination_prompts_end_with_the_prefix():
    model, tok = rigged(THINKS_SORRY_ANSWERS_SURE)
    think = [tok.convert_tokens_to_ids(t) for t in ("<think>", "</think>")]
    questions = [MCQuestion(f"q{i}", "animals", f"Which animal {i}?", ("cat", "dog", "cow", "owl"), "A")
                 for i in range(2)]  # fmt: skip
    for scoring in ("letter", "cloze"):
        chat = build_evaluator(MMLUSettings(scoring=scoring), tok, questions, None, None, PREFIX)
        ids = chat.token_ids if scoring == "letter" else [item.prompt_ids for item in chat.items]
        assert all(row[-2:] == think for row in ids), scoring
        raw = build_evaluator(MMLUSettings(scoring=scoring, use_chat_template=False), tok, questions, None, None,
                              PREFIX)  # fmt: skip
        ids = raw.token_ids if scoring == "letter" else [item.prompt_ids for item in raw.items]
        assert not any(row[-2:] == think for row in ids), scoring  # raw text has no assistant turn to prefix

    facts = [FactualQuestion(f"f{i}", f"Who made thing {i}?", ("Sure",), "all") for i in range(2)]
    with_prefix = HallucinationDetector(tok, facts, None, 2, 1.0, 8, response_format=ResponseFormat(PREFIX))
    assert all(row[-2:] == think for row in with_prefix.token_ids)
    assert with_prefix.greedy(model) == ["Sure here"] * 2
    plain = HallucinationDetector(tok, facts, None, 2, 1.0, 8)
    assert plain.greedy(model) == ["Sure here"] * 2  # the reply thinks first; the thinking is cut out
    assert (
        HallucinationDetector(tok, facts, None, 2, 1.0, 3).greedy(model) == [""] * 2
    )  # budget spent thinking


def test_evaluation_of_a_model_that_does_not_think_is_unchanged(tiny_model_dir, tmp_path):
    prompts, settings = write_sets(tmp_path), evaluation_settings(tmp_path, hallucination=False)
    reference = tmp_path / "harmless_logprobs.pt"
    metrics, rows = evaluate(
        "base", tiny_model_dir, ModelSettings(), prompts, settings, reference, True, tmp_path
    )
    assert metrics["response_prefix"] == ""
    # What the evaluation computed before there was a prefix: the plain chat prompts and whole-reply verdicts.
    model, tok = load_model(tiny_model_dir, ModelSettings())
    for name in ("harmful", "harmless"):
        texts = list(rows.loc[rows["set"] == name, "prompt"])
        replies = generate_greedy(model, tok, encode(tok, texts, None, 2, CPU), settings.max_new_tokens)
        assert list(rows.loc[rows["set"] == name, "response"]) == replies
        verdicts = MarkerDetector(settings.refusal_markers).classify(replies)
        assert list(rows.loc[rows["set"] == name, "is_refusal"]) == [v.is_refusal for v in verdicts]
    harmless = [p for p in rows.loc[rows["set"] == "harmless", "prompt"]]
    plain_logprobs = first_token_logprobs(model, encode(tok, harmless, None, 2, CPU))
    assert torch.equal(torch.load(reference, weights_only=True)["logprobs"], plain_logprobs)


def test_a_changed_response_prefix_does_not_resume_the_study(tiny_model_dir, tmp_path):
    import optuna

    from bruno.directions.mean import mean_difference, save_directions
    from bruno.edit.plan import AbliterationSettings
    from bruno.errors import BrunoError
    from bruno.jobs import optimize
    from bruno.search.space import SearchSettings
    from bruno.search.study import create_or_check_study

    val = write_sets(tmp_path, 2, "val")
    g = torch.Generator().manual_seed(0)
    directions = mean_difference(torch.randn(4, 32, generator=g).double(), torch.randn(4, 32, generator=g).double(),
                                 True)  # fmt: skip

    def fingerprint(prefix: str) -> dict:
        path = tmp_path / f"directions{len(prefix)}.pt"
        save_directions(path, {"directions": directions, "metadata": {"response_prefix": prefix}})
        ctx = optimize.prepare(
            str(tiny_model_dir), ModelSettings(), path, val["harmful"], val["harmless"],
            SearchSettings(n_trials=1, max_new_tokens=2, ranges=RANGES), AbliterationSettings(), ["sorry"],
            parallel=False,
        )  # fmt: skip
        return ctx.fingerprint

    plain, thinking = fingerprint(""), fingerprint(PREFIX)
    assert "response_prefix" not in plain  # a study made before the prefix counted still resumes
    assert thinking["response_prefix"] == PREFIX
    assert {k: v for k, v in thinking.items() if k != "response_prefix"} == plain
    sampler = optuna.samplers.TPESampler(seed=0)
    create_or_check_study(tmp_path / "study.db", plain, ["kl", "refusals"], sampler)
    with pytest.raises(BrunoError, match="changed: response_prefix"):
        create_or_check_study(tmp_path / "study.db", thinking, ["kl", "refusals"], sampler)


# ----------------------------------------------------------------------------------------------------------------------
# Healing


def heal(base_dir, ablated_dir, train, val, tmp_path, model_settings=None, **overrides):
    from bruno.jobs.heal import run

    values = {"enable_post_abliteration_finetuning": True, "dpo_learning_rate": 1e-3, "dpo_max_steps": 1,
              "lora_r": 2, "lora_alpha": 4, "lora_dropout": 0.0, "batch_size": 2, "gradient_accumulation_steps": 1,
              "max_length": 64, "max_new_tokens": 8, "include_harmless_pairs": False} | overrides  # fmt: skip
    return run(
        model_path=str(base_dir), model_settings=model_settings or ModelSettings(), ablated_path=ablated_dir,
        harmful_train_path=train["harmful"], harmless_train_path=train["harmless"],
        settings=HealingSettings(**values), refusal_markers=["sorry"], master_seed=0, out_dir=tmp_path / "healed",
        pairs_path=tmp_path / "pairs.jsonl", training_log_path=tmp_path / "log.csv",
        harmful_val_path=val["harmful"], harmless_val_path=val["harmless"],
    )  # fmt: skip


def test_healing_a_thinking_model_generates_and_checks_answers_after_the_prefix(tmp_path):
    # The base thinks "fine" and answers "Sorry"; the ablated model thinks "sorry" and answers "Sure here". Read
    # whole, both replies refuse and there is no pair; read as answers, every harmful prompt makes one.
    base_dir = saved(THINKS_FINE_ANSWERS_SORRY, tmp_path / "base")
    ablated_dir = saved(THINKS_SORRY_ANSWERS_SURE, tmp_path / "ablated")
    train, val = write_sets(tmp_path, 4, "train"), write_sets(tmp_path, 2, "val")
    record = heal(base_dir, ablated_dir, train, val, tmp_path, checkpoint_every=1)
    assert record["response_prefix"] == PREFIX
    assert record["pairs"]["harmful_base_refused"] == 4 and record["pairs"]["harmful_ablated_refused"] == 0
    pairs = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 4
    for pair in pairs:  # the assistant turn continues the generation prompt: the prefix, then the reply
        assert pair["chosen"][0]["content"] == PREFIX + "Sure here"
        assert pair["rejected"][0]["content"] == PREFIX + "Sorry"
    # Checkpoint selection measured the val prompts after the prefix: step 0 is the ablated model, whose answers
    # comply (whole replies would all count as refusals) and whose first answer token differs from the base's.
    step0 = record["training"]["checkpoints"][0]
    assert step0["step"] == 0 and step0["val_refusal_rate"] == 0.0 and step0["val_kl_divergence"] > 1.0


def test_healing_distils_the_base_answer_after_the_prefix(tmp_path, monkeypatch):
    import bruno.jobs.heal as job

    captured = {}

    def no_training(model, tokenizer, pairs, settings, seed, probe=None, distillation=None):
        captured.update(pairs=pairs, distillation=distillation, tokenizer=tokenizer)
        return model, [], {"steps": 0, "train_loss": 0.0}

    monkeypatch.setattr(job, "train_dpo", no_training)
    base_dir = saved(THINKS_SORRY_ANSWERS_SURE, tmp_path / "base")  # thinks "sorry", answers every prompt
    train, val = write_sets(tmp_path, 4, "train"), write_sets(tmp_path, 2, "val")
    record = heal(base_dir, base_dir, train, val, tmp_path, distill_weight=0.5, include_harmless_pairs=True,
                  harmless_degradation="truncate")  # fmt: skip
    # Read whole, the base "refused" every harmless prompt (nothing to distil); read as answers, it answered all.
    assert record["pairs"]["harmless_base_refused"] == 0 and record["pairs"]["distill_prompts"] == 4
    distillation, tok = captured["distillation"], captured["tokenizer"]
    think = [tok.convert_tokens_to_ids(t) for t in ("<think>", "</think>")]
    assert distillation.batch.input_ids[:, -2:].tolist() == [think] * 4
    assert distillation.base_logprobs.argmax(-1).tolist() == [token_id(tok, "Sure")] * 4
    harmless = [p for p in captured["pairs"] if p["kind"] == "harmless"]
    assert len(harmless) == 4
    assert {(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in harmless} == {
        (PREFIX + "Sure here", PREFIX + "Sure")
    }

    # Prefix off: the replies think "sorry" first, and the refusal checks still read the answer only.
    (tmp_path / "off").mkdir()
    record = heal(base_dir, base_dir, train, val, tmp_path / "off", ModelSettings(response_prefix=""),
                  distill_weight=0.5, include_harmless_pairs=True, harmless_degradation="truncate")  # fmt: skip
    assert record["response_prefix"] == ""
    assert record["pairs"]["harmless_base_refused"] == 0 and record["pairs"]["distill_prompts"] == 4
    assert captured["distillation"].base_logprobs.argmax(-1).tolist() == [think[0]] * 4
    assert {p["chosen"][0]["content"] for p in captured["pairs"]} == {"<think> sorry</think>Sure here"}
