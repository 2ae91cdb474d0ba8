"""Alpaca-style prompt templates; one template serves training, scoring and inference, byte for byte."""

from __future__ import annotations

from dataclasses import dataclass

PROMPT_FORMAT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"


@dataclass(frozen=True)
class Template:
    instruction: str
    input_format: str  # contains "{history}"
    separator: str = "; "

    def render_input(self, titles: list[str]) -> str:
        return self.input_format.format(history=self.separator.join(titles))


TEMPLATES: dict[str, Template] = {
    "movies": Template(
        "Given the movies the user watched before, recommend the next movie the user will watch.",
        "The user watched: {history}.",
    ),
    "games": Template(
        "Given the games the user played before, recommend the next game the user will play.",
        "The user played: {history}.",
    ),
    "books": Template(
        "Given the books the user read before, recommend the next book the user will read.",
        "The user read: {history}.",
    ),
    "generic": Template(
        "Given the items the user interacted with before, recommend the next item the user will interact with.",
        "The user interacted with: {history}.",
    ),
}


def render_prompt(instruction: str, input_text: str) -> str:
    """The prompt the LLM sees, ending with the response header; the response follows it directly."""
    return PROMPT_FORMAT.format(instruction=instruction, input=input_text)
