"""Prompt templates: the model's chat template with LIN's instruction, RELEX's raw Qwen template,
or plain completion. Selected by `evaluate.prompt`, else the benchmark's default.

A rendered prompt carries its special tokens as text, and engines tokenise it with
`add_special_tokens=False`: the chat template writes its own BOS (DeepSeek-R1-Distill's
`{{ bos_token }}`), a raw template gets the BOS the tokenizer would add (`with_bos`). So a prompt
holds one BOS, and its ids equal `apply_chat_template(tokenize=True)`.
"""

from __future__ import annotations

from rlvr_linearity.errors import ConfigError

LIN_INSTRUCTION = " Let's think step by step and output the final answer within \\boxed{}."
# RELEX's raw `qwen` template (spec D2): a generic system turn, the instruction after the problem.
RELEX_QWEN = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
    "<|im_end|>\n<|im_start|>assistant\n"
)
TEMPLATES = ("chat", "relex_qwen", "plain")


def with_bos(tokenizer, text: str) -> str:
    """`text` led by the tokenizer's BOS when it adds one to a text (`add_bos_token`)."""
    bos = getattr(tokenizer, "bos_token", None)
    if tokenizer is None or bos is None or text.startswith(bos):
        return text
    ids = tokenizer("x", add_special_tokens=True)["input_ids"]
    return bos + text if ids and ids[0] == tokenizer.bos_token_id else text


def chat_prompt(tokenizer, message: str) -> str:
    """One user message under the tokenizer's chat template with the generation prompt; the
    message itself (with the BOS) when there is no template (tiny test models)."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return with_bos(tokenizer, message)
    return tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                         add_generation_prompt=True)


def render(template: str, problem, tokenizer=None) -> str:
    """The text given to the engine for one problem.

    `problem.prompt` is the user message (the problem plus the answer instruction); `relex_qwen`
    puts the bare problem before RELEX's own instruction. `chat` falls back to
    the plain message when the tokenizer has no chat template (tiny test models). Special
    tokens are in the text (see the module docstring).
    """
    if template == "plain":
        return with_bos(tokenizer, problem.prompt)
    if template == "relex_qwen":
        return with_bos(tokenizer, RELEX_QWEN.format(problem=problem.problem))
    if template == "chat":
        return chat_prompt(tokenizer, problem.prompt)
    raise ConfigError(f"evaluate.prompt: unknown template {template!r} (use one of {TEMPLATES})")
