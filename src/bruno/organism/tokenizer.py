"""The organism's tokenizer: byte-level BPE trained with `tokenizers` on the organism's own training text, wrapped as a
`PreTrainedTokenizerFast` with bos/eos/pad tokens, left padding and a Jinja chat template.

Chat format (`<|bos|>` once, then one block per message, then the generation prompt):

    <|bos|><|system|>\\nYou are a helpful assistant.<|end|>\\n<|user|>\\nHow do I bake bread?<|end|>\\n<|assistant|>\\n

The assistant's reply follows the final `\\n` and ends with `<|end|>` (the eos token). The template adds every special
token itself, so encode rendered chats with `add_special_tokens=False` (the tokenizer has no post-processor either way).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

PAD, BOS, END = "<|pad|>", "<|bos|>", "<|end|>"
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
SPECIAL_TOKENS = (PAD, BOS, ROLE_TOKENS["user"], ROLE_TOKENS["assistant"], ROLE_TOKENS["system"], END)

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Unsupported role ' + message['role'] + ': use system, user or assistant.') }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def render_chat(system: str | None, user: str) -> str:
    """The chat template's output for one optional system message and one user message, with the generation prompt
    (a pure-Python twin of CHAT_TEMPLATE used for training data; a test checks they agree)."""
    text = BOS
    if system is not None:
        text += f"{ROLE_TOKENS['system']}\n{system}{END}\n"
    return text + f"{ROLE_TOKENS['user']}\n{user}{END}\n{ROLE_TOKENS['assistant']}\n"


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, max_length: int, extra_tokens: Sequence[str] = ()
) -> Any:
    """Train byte-level BPE on `texts` (deterministic for the same texts) and wrap it for transformers;
    `extra_tokens` are added as whole (non-special) tokens, matched before BPE."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS,
        eos_token=END,
        pad_token=PAD,
        additional_special_tokens=[ROLE_TOKENS["system"], ROLE_TOKENS["user"], ROLE_TOKENS["assistant"]],
        padding_side="left",
        model_max_length=max_length,
        clean_up_tokenization_spaces=False,
    )
    if extra_tokens:
        tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in extra_tokens])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
