"""How a task's prompt text becomes the tokens the model sees: as is, or through the chat template.

With `task.chat_template` on, the prompt (after `task.template`) is the user message, `task.system_prompt`
the optional system message, and the text the model sees is the tokenizer's chat template with the
generation prompt (the assistant turn opened), as verl and TRL build prompts for instruct models. That
text already holds the template's special tokens, so it is tokenized without adding any.

The rendered text replaces the problem's prompt (`PromptFormat.problem`): rollout JSON, tree drawings and
eval samples then show the prompt exactly as the model saw it.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from treepo_lab.registry import ConfigError


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


NO_TEMPLATE = ("the tokenizer of {model} has no chat template: prompts go in as plain text; "
               "task.chat_template=<file.jinja> applies one (experiments/chat_templates/ has Gemma's)")


def template_file(value) -> Path | None:
    """The Jinja file task.chat_template names (None: it is true, false or null). ConfigError when missing."""
    if not isinstance(value, str):
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError("task.chat_template", value, "true, false, null or an existing Jinja chat template file")
    return path


def use_chat_template(task_cfg, model_path: str | None, tokenizer) -> bool:
    """task.chat_template resolved: null = on when the tokenizer has a chat template and the model is not
    the embedded one (its character tokenizer has none); a file: its template, set on the tokenizer. On
    without a template is refused."""
    chat = task_cfg.chat_template
    path = template_file(chat)
    if path is not None:
        tokenizer.chat_template = path.read_text()
        chat = True
    if chat is None:
        chat = model_path is not None and has_chat_template(tokenizer)
    if chat and not has_chat_template(tokenizer):
        model = model_path or "the embedded model"
        raise ConfigError("task.chat_template", True,
                          f"false, null or a template file: the tokenizer of {model} has no chat template")
    if not chat and task_cfg.system_prompt is not None:
        raise ConfigError("task.system_prompt", task_cfg.system_prompt,
                          "null when the chat template is off (it is the chat's system message)")
    return chat


def prompt_format(task_cfg, model_path: str | None, tokenizer) -> PromptFormat:
    """The PromptFormat a task config asks for (`use_chat_template` resolves and checks it)."""
    return PromptFormat(tokenizer, use_chat_template(task_cfg, model_path, tokenizer), task_cfg.system_prompt)


class PromptFormat:
    """render(prompt) -> the text the model sees; encode(that text) -> its token ids."""

    def __init__(self, tokenizer, chat: bool = False, system_prompt: str | None = None):
        self.tokenizer, self.chat, self.system_prompt = tokenizer, chat, system_prompt

    def render(self, prompt: str) -> str:
        if not self.chat:
            return prompt
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt is not None else []
        messages.append({"role": "user", "content": prompt})
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def encode(self, text: str) -> list[int]:
        # a chat-rendered text carries its own special tokens (BOS included where the template has one)
        return self.tokenizer(text, add_special_tokens=not self.chat)["input_ids"]

    def problem(self, problem):
        """The problem with its prompt as the model sees it (scoring reads the answer only)."""
        return problem if not self.chat else dataclasses.replace(problem, prompt=self.render(problem.prompt))
