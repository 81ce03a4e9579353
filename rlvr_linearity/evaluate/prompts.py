"""Prompt templates: the model's chat template with LIN's instruction, RELEX's raw Qwen template,
or plain completion. Selected by `evaluate.prompt`, else the benchmark's default."""

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


def render(template: str, problem, tokenizer=None) -> str:
    """The text given to the engine for one problem.

    `problem.prompt` is the user message (the problem plus the answer instruction); `relex_qwen`
    puts the bare problem before RELEX's own instruction. `chat` falls back to
    the plain message when the tokenizer has no chat template (tiny test models).
    """
    if template == "plain":
        return problem.prompt
    if template == "relex_qwen":
        return RELEX_QWEN.format(problem=problem.problem)
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            return problem.prompt
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": problem.prompt}], tokenize=False, add_generation_prompt=True)
    raise ConfigError(f"evaluate.prompt: unknown template {template!r} (use one of {TEMPLATES})")
