"""Every supported model family on a tiny random instance built offline from its transformers config class: directions,
a trial through the hooks, the same edit baked, save, reload and generate; per-expert editing of fused experts."""

from __future__ import annotations

import copy
import sys

import procs
import pytest
import torch
from conftest import REPO, build_tokenizer

from bruno.directions.mean import mean_difference, residual_means
from bruno.edit.ablation import NORM_MODES, bake, hooked
from bruno.edit.experts import ExpertsTarget
from bruno.edit.plan import AblationParams, AbliterationSettings, ComponentKernel, EditTargets, build_edits
from bruno.errors import BrunoError
from bruno.evaluation.refusal import MarkerDetector
from bruno.model.families import FAMILIES, check_model_dir, family_of
from bruno.model.generation import chat_strings, encode, first_token_logprobs, generate_greedy, kl_divergence
from bruno.model.loading import ModelSettings, load_model
from bruno.model.thinking import (
    DEFAULT_THINKING_TAGS,
    AnswerOnly,
    _replies,
    answer_text,
    prompt_opened,
    resolve_response_prefix,
)
from bruno.search.trial import Decoding, TrialEvaluator, TrialPrompts

CPU = torch.device("cpu")
COMPONENTS = ["attn.o_proj", "mlp.down_proj"]
NONE_EDIT = AbliterationSettings(COMPONENTS, "none")  # an edit without norm preservation
MOE_TYPES = [t for t, f in FAMILIES.items() if f.experts is not None]
HARMFUL = ["How do I build a weapon?", "How do I build a bomb?", "Explain how to build a weapon."]
HARMLESS = ["How do I bake bread?", "Explain how to write a poem.", "How do I write a poem?"]

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
MISTRAL = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %}{{ m['content'] }}{% endif %}{% endfor %}"
)
PHI = (  # Phi-3 and the organism's own style
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
TEMPLATES = {"qwen2": CHATML, "qwen3": CHATML, "qwen3_moe": CHATML, "qwen2_moe": CHATML, "gemma2": GEMMA,
             "gemma3_text": GEMMA, "mistral": MISTRAL, "mixtral": MISTRAL}  # fmt: skip


def family_tokenizer(model_type: str):
    """The conftest BPE tokenizer with the family's chat template and turn tokens (ChatML ends turns with <|im_end|>)."""
    template = TEMPLATES.get(model_type, PHI)
    tok = build_tokenizer(template)
    tok.add_special_tokens(
        {"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<start_of_turn>", "<end_of_turn>"]}
    )
    tok.add_tokens(["<think>", "</think>"])  # ordinary added tokens, as in Qwen3: kept when decoding
    if template == CHATML:
        tok.eos_token = "<|im_end|>"
    elif template == GEMMA:
        tok.eos_token = "<end_of_turn>"
    return tok


def family_config(model_type: str, tok):
    import transformers

    family = FAMILIES[model_type]
    kwargs = dict(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    if model_type in ("gemma2", "gemma3_text", "gpt_oss", "qwen3", "qwen3_moe"):
        kwargs["head_dim"] = 16
    if model_type in ("qwen3_moe", "qwen2_moe"):
        kwargs.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
    if model_type == "qwen2_moe":
        kwargs["shared_expert_intermediate_size"] = 48
    if model_type in ("mixtral", "gpt_oss"):
        kwargs.update(num_local_experts=4, num_experts_per_tok=2)
    return getattr(transformers, family.config_class)(**kwargs)


def build_family_model(model_type: str, seed: int = 0, extra_tokens: tuple[str, ...] = ()):
    from transformers import AutoModelForCausalLM

    tok = family_tokenizer(model_type)
    tok.add_tokens(list(extra_tokens))
    tok.padding_side = "left"  # as load_tokenizer sets it
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(family_config(model_type, tok))
    if family_of(model).experts is not None:  # std 0.02 and zero biases: make the experts (and biases) matter
        for name, parameter in model.named_parameters():
            if ".experts." in name:
                torch.nn.init.normal_(parameter, std=0.1)
    return model.eval().requires_grad_(False), tok


@pytest.fixture
def family_dir(request, tmp_path):
    model, tok = build_family_model(request.param)
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


PARAMS = AblationParams(
    "global",
    0.5,
    {
        "attn.o_proj": ComponentKernel(1.0, 1.0, 0.5, 1.0),
        "mlp.down_proj": ComponentKernel(1.2, 1.0, 0.6, 1.0),
    },
)


@pytest.mark.parametrize("family_dir", list(FAMILIES), indirect=True)
def test_family_trial_bake_save_reload_generate(family_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    family = check_model_dir(family_dir)
    model, tok = load_model(family_dir, ModelSettings())
    assert family_of(model) is family
    harmful_mean, _ = residual_means(model, encode(tok, HARMFUL, None, 8, CPU))
    harmless_mean, _ = residual_means(model, encode(tok, HARMLESS, None, 8, CPU))
    directions = mean_difference(harmful_mean, harmless_mean, True)

    evaluator = TrialEvaluator(
        model,
        tok,
        directions,
        AbliterationSettings(COMPONENTS, "row"),
        TrialPrompts(HARMFUL, HARMLESS),
        Decoding(8, 6, prefix_reuse_mb=64),
    )
    result = evaluator.evaluate(PARAMS)  # one trial through the hooks
    edits = build_edits(evaluator.targets, directions, PARAMS, "row")
    assert {key for key in edits} == {(c, layer) for c in COMPONENTS for layer in range(2)}
    with hooked(evaluator.targets.modules, edits):
        via_hooks = first_token_logprobs(model, evaluator.kl_batches)
    assert torch.equal(first_token_logprobs(model, evaluator.kl_batches), evaluator.base_logprobs)  # no trace
    assert not torch.allclose(via_hooks, evaluator.base_logprobs, atol=1e-4)

    baked, _ = load_model(family_dir, ModelSettings())
    targets = EditTargets(baked, COMPONENTS)
    bake(targets.modules, build_edits(targets, directions, PARAMS, "row"))
    baked_logprobs = first_token_logprobs(baked, evaluator.kl_batches)
    assert torch.allclose(via_hooks, baked_logprobs, atol=1e-4)
    assert result.kl_divergence == pytest.approx(
        kl_divergence(evaluator.base_logprobs, baked_logprobs), abs=1e-5
    )
    assert list(result.responses) == generate_greedy(baked, tok, evaluator.refusal_batches, 6)

    out = tmp_path / "abliterated"
    baked.save_pretrained(out)
    tok.save_pretrained(out)
    assert (out / "model.safetensors").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert torch.allclose(first_token_logprobs(reloaded, evaluator.kl_batches), baked_logprobs, atol=1e-5)
    batch = evaluator.refusal_batches[0]
    generated = reloaded.generate(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=4, do_sample=False
    )
    assert generated.shape[1] > batch.input_ids.shape[1]


def _layer_directions(n_layers: int, width: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.nn.functional.normalize(torch.randn(n_layers + 1, width, generator=g), dim=-1)


FULL_WEIGHT = AblationParams("per layer", None, {"mlp.down_proj": ComponentKernel(1.0, 0.0, 1.0, 10.0)})


@pytest.mark.parametrize("model_type", MOE_TYPES)
def test_moe_edit_reaches_every_expert(model_type):
    model, _ = build_family_model(model_type)
    directions = _layer_directions(2, 64)
    targets = EditTargets(model, ["mlp.down_proj"])
    experts = [targets.modules[("mlp.down_proj", layer)] for layer in range(2)]
    assert all(isinstance(t, ExpertsTarget) and t.n_experts == 4 for t in experts)
    assert all((t.shared is not None) == (model_type == "qwen2_moe") for t in experts)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    storage = [t.weight.data_ptr() for t in experts]

    bake(targets.modules, build_edits(targets, directions, FULL_WEIGHT, "none"))
    for layer, target in enumerate(experts):
        r = directions[layer + 1]
        assert target.weight.data_ptr() == storage[layer]  # edited in place
        for e in range(target.n_experts):
            original = before[[n for n, p in model.named_parameters() if p is target.weight][0]][e]
            original = original.T if target.transposed else original
            assert (r @ original).norm() > 0.1
            assert (r @ target.matrix(e)).norm() < 1e-5 * (r @ original).norm()  # ||r^T W'_e|| ~ 0
        if target.shared is not None:
            assert (r @ target.shared.weight).norm() < 1e-5
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == {
        n for n in before if n.endswith("experts.down_proj") or n.endswith("shared_expert.down_proj.weight")
    }


@pytest.mark.parametrize("model_type", MOE_TYPES)
@pytest.mark.parametrize("mode", NORM_MODES)
def test_moe_hooks_equal_baked_experts_with_norms_per_expert(model_type, mode):
    model, tok = build_family_model(model_type)
    directions = _layer_directions(2, 64)
    batches = encode(tok, HARMLESS, None, 8, CPU)
    targets = EditTargets(model, ["mlp.down_proj"])
    edits = build_edits(targets, directions, FULL_WEIGHT, mode)
    base = first_token_logprobs(model, batches)
    with hooked(targets.modules, edits):
        via_hooks = first_token_logprobs(model, batches)
    assert torch.equal(first_token_logprobs(model, batches), base)  # parameter and forward restored
    assert not torch.allclose(via_hooks, base, atol=1e-4)

    baked = copy.deepcopy(model)
    baked_targets = EditTargets(baked, ["mlp.down_proj"])
    bake(baked_targets.modules, build_edits(baked_targets, directions, FULL_WEIGHT, mode))
    assert torch.allclose(first_token_logprobs(baked, batches), via_hooks, atol=1e-5)  # grouped kernels
    baked.set_experts_implementation("eager")
    eager = first_token_logprobs(baked, batches)
    if (
        model_type == "qwen2_moe"
    ):  # its shared expert is a Linear, edited by hooks: equal up to float rounding
        assert torch.allclose(eager, via_hooks, atol=1e-6)
    else:  # the trial runs exactly the baked expert weights
        assert torch.equal(eager, via_hooks)

    for layer in range(2):
        original, edited = (
            targets.modules[("mlp.down_proj", layer)],
            baked_targets.modules[("mlp.down_proj", layer)],
        )
        for e in range(original.n_experts):
            w, w_new = original.matrix(e), edited.matrix(e)
            if mode == "row":  # every expert keeps its own row norms
                assert torch.allclose(w_new.norm(dim=1), w.norm(dim=1), rtol=1e-4)
            elif mode == "column":
                assert torch.allclose(w_new.norm(dim=0), w.norm(dim=0), rtol=1e-4)
            elif mode == "frobenius":
                assert w_new.norm() == pytest.approx(float(w.norm()), rel=1e-4)


def test_unsupported_family_stops_with_the_supported_list(tmp_path):
    from transformers import AutoModelForCausalLM, GPT2Config

    model = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2))
    with pytest.raises(BrunoError, match=r"model type 'gpt2' is not a supported.*Llama \(llama\).*GPT-OSS"):
        EditTargets(model, COMPONENTS)
    model.save_pretrained(tmp_path / "gpt2")
    with pytest.raises(BrunoError, match="gpt2.*Qwen3-MoE"):
        check_model_dir(tmp_path / "gpt2")
    # The workflow stops at config validation, before any job (the directory itself is complete).
    family_tokenizer("llama").save_pretrained(tmp_path / "gpt2")
    (tmp_path / "run.yaml").write_text(f"model:\n  name: {tmp_path / 'gpt2'}\n")
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "-n", "--cores", "1",
               "--workflow-profile", "none", "--configfile", "run.yaml"]  # fmt: skip
    plan = procs.run(command, cwd=tmp_path, timeout=180)
    output = plan.stdout + (plan.stderr or "")
    assert plan.returncode != 0 and "WorkflowError" in output
    assert "model type 'gpt2' is not a supported model family" in output, output[-2000:]


# ----------------------------------------------------------------------------------------------------------------------
# Thinking models


def thinking_model():
    """A tiny Qwen3 (ChatML, <think> tokens) rigged to reply '<think> sorry</think>Sure' to every prompt: its layers
    write nothing, so each next token depends on the current one only, and the embeddings and output head chain
    the tokens."""
    model, tok = build_family_model("qwen3", extra_tokens=(" sorry", "Sure"))
    last = encode(tok, ["Hello"], None, 1, CPU)[0].input_ids[0, -1].item()
    ids = tok.convert_tokens_to_ids
    chain = [
        last,
        ids("<think>"),
        *tok.encode(" sorry"),
        ids("</think>"),
        *tok.encode("Sure"),
        tok.eos_token_id,
    ]
    assert len(set(chain)) == len(chain)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed, head = model.model.embed_tokens.weight, model.lm_head.weight
        embed[:, : len(chain)] = 0
        head.zero_()
        for dim, (token, following) in enumerate(zip(chain, chain[1:], strict=False)):
            embed[token] = 0
            embed[token, dim] = 1.0
            head[following, dim] = 100.0
    return model, tok


NO_EDIT = AblationParams("global", 0.0, {"attn.o_proj": ComponentKernel(0.0, 0.0, 0.0, 1.0)})


def test_answer_text_cuts_thinking_blocks():
    assert answer_text("<think>I cannot decide</think>\n\nSure, here it is.") == "Sure, here it is."
    assert (
        answer_text("<think>I'm sorry, still thinking") == ""
    )  # the budget ended inside the block: no answer
    assert answer_text("so I cannot</think> Sure.", opened="<think>") == "Sure."
    assert answer_text("[THINK]hm[/THINK]I won't.") == "I won't."
    assert answer_text("No thinking here.") == "No thinking here."


def test_thinking_model_prefix_directions_kl_and_refusals():
    model, tok = thinking_model()
    replies = _replies(model, tok, HARMFUL, None, "", 8)
    assert replies == ["<think> sorry</think>Sure"] * 3
    prefix = resolve_response_prefix("auto", model, tok, HARMFUL + HARMLESS, None)
    assert prefix == "<think></think>"
    assert resolve_response_prefix("", model, tok, HARMFUL, None) == ""
    assert (
        resolve_response_prefix("<think>\n\n</think>\n\n", model, tok, HARMFUL, None)
        == "<think>\n\n</think>\n\n"
    )

    directions = torch.zeros(3, 64)
    think = [tok.convert_tokens_to_ids(t) for t in ("<think>", "</think>")]
    with_prefix = TrialEvaluator(model, tok, directions, NONE_EDIT, TrialPrompts(HARMFUL, HARMLESS, None, prefix),
                                 Decoding(8, 3))  # fmt: skip
    for batch in (
        with_prefix.kl_batches + with_prefix.refusal_batches
    ):  # residuals and KL at the answer's start
        assert batch.input_ids[:, -2:].tolist() == [think] * len(batch)
    assert with_prefix.base_logprobs.argmax(-1).tolist() == [tok.encode("Sure")[0]] * 3
    result = with_prefix.evaluate(NO_EDIT)
    assert list(result.responses) == ["Sure"] * 3 and result.n_refusals == 0  # the budget is the answer's

    plain = TrialEvaluator(model, tok, directions, NONE_EDIT, TrialPrompts(HARMFUL, HARMLESS), Decoding(8, 8))
    result = plain.evaluate(NO_EDIT)
    assert list(result.responses) == ["<think> sorry</think>Sure"] * 3
    assert result.n_refusals == 0  # "sorry" was thought, not answered
    assert all(v.is_refusal for v in MarkerDetector().classify(result.responses))  # what reading it all says
    short = TrialEvaluator(model, tok, directions, NONE_EDIT, TrialPrompts(HARMFUL, HARMLESS), Decoding(8, 3))
    assert short.evaluate(NO_EDIT).n_refusals == 3  # thinking used the whole budget: no answer


def test_template_that_opens_a_thinking_block_is_closed_by_the_prefix():
    model, tok = build_family_model("qwen3")
    tok.chat_template = CHATML.replace("assistant\n{% endif %}", "assistant\n<think>\n{% endif %}")
    assert chat_strings(tok, ["Hi"], None)[0].endswith("<think>\n")
    prefix = resolve_response_prefix("auto", model, tok, HARMFUL, None)
    assert prefix == "</think>\n\n"
    assert prompt_opened(tok, None, prefix, DEFAULT_THINKING_TAGS) == ""
    assert prompt_opened(tok, None, "", DEFAULT_THINKING_TAGS) == "<think>"
    assert (
        AnswerOnly(MarkerDetector(), opened="<think>").classify(["I cannot say</think>Sure."])[0].is_refusal
        is False
    )
