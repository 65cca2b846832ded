"""`LoomModel.objective_with`: by name, by class or protocol, by test, with a preference."""

from __future__ import annotations

import pytest
from torch import nn

from modaloom.core.compose import LoomModel
from modaloom.core.errors import CheckpointError, SpecError
from modaloom.core.generation import TextGenerator
from modaloom.core.interfaces import Objective


class Plain(Objective):
    pass


class Generator(Objective):
    """Satisfies `TextGenerator` (attributes are enough for a runtime protocol check)."""

    default_condition = ["vision"]

    def __init__(self, qa: bool) -> None:
        super().__init__()
        self.answers_questions = qa

    def generate(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def answer(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise NotImplementedError


@pytest.fixture
def model() -> LoomModel:
    objectives: list[tuple[str, float, Objective]] = [
        ("itc", 1.0, Plain()),
        ("mgc", 1.0, Generator(qa=True)),
        ("lm", 1.0, Generator(qa=False)),
    ]
    return LoomModel({"vision": nn.Identity()}, {"vision": ("image",)}, objectives)


def test_by_protocol_with_and_without_a_preference(model: LoomModel) -> None:
    mgc, lm = model.objectives[1], model.objectives[2]
    assert model.objective_with(TextGenerator, what="generate text") is mgc
    prefer_captions = model.objective_with(
        TextGenerator, what="generate text", prefer=lambda o: not o.answers_questions
    )
    assert prefer_captions is lm
    nothing_preferred = model.objective_with(
        TextGenerator, what="generate text", prefer=lambda o: False
    )
    assert nothing_preferred is mgc


def test_by_name_and_by_test(model: LoomModel) -> None:
    assert model.objective_with(TextGenerator, "lm", what="generate text") is model.objectives[2]
    found = model.objective_with(lambda o: isinstance(o, Plain), what="be plain")
    assert found is model.objectives[0]


def test_errors_name_the_objective_or_list_them(model: LoomModel) -> None:
    with pytest.raises(SpecError) as info:
        model.objective_with(TextGenerator, "cap", what="generate text")
    assert info.value.problems == [
        ("model.objectives", "no objective named 'cap'; objectives are ['itc', 'mgc', 'lm']")
    ]
    with pytest.raises(SpecError) as info:
        model.objective_with(TextGenerator, "itc", what="generate text", fix="use lm or mgc")
    assert info.value.problems == [
        ("model.objectives", "objective 'itc' cannot generate text; use lm or mgc")
    ]
    with pytest.raises(CheckpointError) as checkpoint_info:
        model.objective_with(lambda o: False, what="embed 'audio'", error=CheckpointError)
    assert str(checkpoint_info.value) == (
        "no objective can embed 'audio' (objectives are ['itc', 'mgc', 'lm'])"
    )
