"""Model names as data: which names a server answers to, and what each implies.

DeepSeek's API names (`deepseek-v4-flash`, `deepseek-v4-pro`, the legacy `deepseek-chat` and
`deepseek-reasoner`) map to a family and a default thinking mode. A server answers to the name it was
started with and to every alias of that model's family; the built-in `tiny` and a local folder whose
family is unknown answer to all of them, so a client with a hard-coded model name works unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Alias:
    family: str  # "flash" or "pro"
    thinking: bool | None = None  # None: the request decides (DeepSeek's default: on)


ALIASES: dict[str, Alias] = {
    "deepseek-v4-flash": Alias("flash"),
    "deepseek-v4-pro": Alias("pro"),
    "deepseek-chat": Alias("flash", thinking=False),
    "deepseek-reasoner": Alias("flash", thinking=True),
}
FAMILIES = {"flash": "flash", "pro": "pro", "deepseek-ai/DeepSeek-V4-Flash": "flash",
            "deepseek-ai/DeepSeek-V4-Pro": "pro"}


class UnknownModel(LookupError):
    def __init__(self, name: str, served: list[str]) -> None:
        super().__init__(f"Model Not Exist: {name!r} is not served here; this server answers to "
                         f"{', '.join(served)}")
        self.name = name


@dataclass(frozen=True)
class ModelTable:
    """The names one server answers to."""

    loaded: str  # what `--model` named: tiny, flash, pro, a repo id or a folder

    @property
    def family(self) -> str | None:
        return FAMILIES.get(self.loaded)

    def names(self) -> list[str]:
        fam = self.family
        names = [n for n, a in ALIASES.items() if fam is None or a.family == fam]
        return names + ([self.loaded] if self.loaded not in names else [])

    def resolve(self, name: str | None) -> Alias:
        """The alias a request's `model` names; the loaded name itself is an alias with no override."""
        if not name:
            raise UnknownModel("", self.names())
        if name == self.loaded:
            return Alias(self.family or "flash")
        if name in ALIASES and name in self.names():
            return ALIASES[name]
        raise UnknownModel(name, self.names())
