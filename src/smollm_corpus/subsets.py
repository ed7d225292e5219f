"""The subsets of the SmolLM-Corpus: what each holds and how it renders by default."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UsageError

DEFAULT_SOURCE = "HuggingFaceTB/smollm-corpus"


@dataclass(frozen=True)
class Preset:
    """A named layout: the template, the separator it is meant for, and whether values are stripped."""

    template: str
    separator: str
    strip: bool = False


@dataclass(frozen=True)
class Subset:
    name: str
    rows: int
    download_size: str
    columns: tuple[str, ...]
    presets: dict[str, Preset]
    #: True where the text is not on the Hub and is fetched from Software Heritage's S3 bucket
    hydrated: bool = False

    @property
    def template_columns(self) -> tuple[str, ...]:
        """Columns a template may name: the Hub's, plus the fetched ``text`` where hydrated."""
        return self.columns + (("text",) if self.hydrated else ())


def _text(template: str = "{text}") -> Preset:
    return Preset(template, "\n\n")


SUBSETS: dict[str, Subset] = {
    s.name: s
    for s in (
        Subset(
            "cosmopedia-v2",
            39_134_000,
            "122 GB",
            ("prompt", "text", "token_length", "audience", "format", "seed_data"),
            {"text": _text(), "nanogpt": Preset("#U:\n{prompt}\n#B:\n{text}", "\n", strip=True)},
        ),
        Subset(
            "python-edu",
            7_678_448,
            "0.64 GB of ids; about 12 GB of code from S3",
            ("blob_id", "repo_name", "path", "length_bytes", "score", "int_score"),
            {"text": _text(), "nanogpt": Preset("# {repo_name}: {path}\n{text}", "\n", strip=True)},
            hydrated=True,
        ),
        Subset(
            "fineweb-edu-dedup",
            190_168_005,
            "550 GB",
            ("text", "id", "metadata"),
            {"text": _text(), "nanogpt": Preset("#T:\n{text}", "\n", strip=True)},
        ),
    )
}


def get_subset(name: str) -> Subset:
    """The subset called ``name``.

    Raises:
        UsageError: no subset has that name.
    """
    try:
        return SUBSETS[name]
    except KeyError:
        raise UsageError(f"unknown subset {name!r}; choose one of: {', '.join(SUBSETS)}") from None
