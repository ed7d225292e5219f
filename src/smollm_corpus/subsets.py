"""The names the tool fetches: what each one is, where it lives and how it renders by default.

Built in: the three SmolLM-Corpus subsets, Cosmopedia v0.1 per config (``cosmopedia/<config>``)
and its 100k-row sample (``cosmopedia-100k``). Any other Hub dataset with parquet data files is
named ``hf:OWNER/NAME[:CONFIG]``. Figures shown here are for ``list`` only: a fetch reads columns,
row counts and sizes from the repository itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from .errors import UsageError

DEFAULT_SOURCE = "HuggingFaceTB/smollm-corpus"
COSMOPEDIA_SOURCE = "HuggingFaceTB/cosmopedia"
COSMOPEDIA_CONFIGS = (
    "auto_math_text", "khanacademy", "openstax", "stanford", "stories", "web_samples_v1", "web_samples_v2", "wikihow",
)
#: the prefix of names for any Hub dataset
HUB_PREFIX = "hf:"
_HUB_NAME = re.compile(r"^hf:(?P<repo>[\w.-]+/[\w.-]+)(?::(?P<config>[\w.-]+))?$")


@dataclass(frozen=True)
class Preset:
    """A named layout: the template, the separator it is meant for, and whether values are stripped."""

    template: str
    separator: str
    strip: bool = False


@dataclass(frozen=True)
class DatasetSpec:
    """One config of a Hub dataset repository, under the name the tool knows it by."""

    name: str
    repo: str  # the Hub repository it is read from unless --source says otherwise
    config: str | None  # None: the repository's only config, or the one named ``default`` (found at run time)
    presets: dict[str, Preset]
    #: what ``list`` shows; a fetch reads the real figures from the repository
    rows: str = ""
    download_size: str = ""
    columns: tuple[str, ...] = ()
    from_card: bool = False  # the listed figures are the dataset card's, not checked against the files
    #: True where the text is not on the Hub and is fetched from Software Heritage's S3 bucket
    hydrated: bool = False

    @property
    def template_columns(self) -> tuple[str, ...]:
        """Columns a template may name: the Hub's, plus the fetched ``text`` where hydrated."""
        return self.columns + (("text",) if self.hydrated else ())

    @property
    def folder(self) -> str:
        """Where its output goes, relative to the output folder: the name, ``hf:`` names as ``hf/OWNER/NAME/CONFIG``."""
        if self.name.startswith(HUB_PREFIX):
            return f"hf/{self.repo}/{self.config}"
        return self.name

    @property
    def prefix(self) -> str:
        """The name as one file-name component, for files named after the dataset (token shards)."""
        return self.folder.replace("/", "-")

    def with_config(self, config: str) -> DatasetSpec:
        """This dataset read from the repository's config ``config``; an ``hf:`` name then names it in full."""
        name = f"{HUB_PREFIX}{self.repo}:{config}" if self.name.startswith(HUB_PREFIX) else self.name
        return replace(self, name=name, config=config)




def _text(template: str = "{text}") -> Preset:
    return Preset(template, "\n\n")


#: the nanoGPT-style layout of Cosmopedia's rows (cosmopedia-v2's), each value stripped
_PROMPT_TEXT = Preset("#U:\n{prompt}\n#B:\n{text}", "\n", strip=True)
_COSMOPEDIA_COLUMNS = ("prompt", "text", "text_token_length", "format", "audience", "seed_data")

SUBSETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in (
        DatasetSpec(
            "cosmopedia-v2",
            DEFAULT_SOURCE,
            "cosmopedia-v2",
            {"text": _text(), "nanogpt": _PROMPT_TEXT},
            "39,134,000",
            "122 GB",
            ("prompt", "text", "token_length", "audience", "format", "seed_data"),
        ),
        DatasetSpec(
            "python-edu",
            DEFAULT_SOURCE,
            "python-edu",
            {"text": _text(), "nanogpt": Preset("# {repo_name}: {path}\n{text}", "\n", strip=True)},
            "7,678,448",
            "0.64 GB of ids; about 12 GB of code from S3",
            ("blob_id", "repo_name", "path", "length_bytes", "score", "int_score"),
            hydrated=True,
        ),
        DatasetSpec(
            "fineweb-edu-dedup",
            DEFAULT_SOURCE,
            "fineweb-edu-dedup",
            {"text": _text(), "nanogpt": Preset("#T:\n{text}", "\n", strip=True)},
            "190,168,005",
            "550 GB",
            ("text", "id", "metadata"),
        ),
    )
}

#: Cosmopedia v0.1, one name per config, and its 100k-row sample
COSMOPEDIA: dict[str, DatasetSpec] = {
    s.name: s
    for s in (
        *(
            DatasetSpec(f"cosmopedia/{config}", COSMOPEDIA_SOURCE, config, {"text": _text(), "nanogpt": _PROMPT_TEXT},
                        "about 30M over the eight configs, ~75% in web_samples_v1 and v2", "",
                        _COSMOPEDIA_COLUMNS, from_card=True)
            for config in COSMOPEDIA_CONFIGS
        ),
        DatasetSpec("cosmopedia-100k", "HuggingFaceTB/cosmopedia-100k", None, {"text": _text(), "nanogpt": _PROMPT_TEXT},
                    "about 100k", "", _COSMOPEDIA_COLUMNS, from_card=True),
    )
}

#: names that stand for several: ``fetch NAME --all-configs``
#: mix presets: the SmolLM-Corpus part of SmolLM's pretraining mixture (its open-web-math 0.06 and
#: Stack Overflow 0.01 live in other repositories); weights are normalised
MIX_PRESETS: dict[str, dict[str, float]] = {"smollm": {"fineweb-edu-dedup": 0.70, "cosmopedia-v2": 0.15, "python-edu": 0.08}}
FAMILIES: dict[str, tuple[str, ...]] = {"cosmopedia": tuple(f"cosmopedia/{c}" for c in COSMOPEDIA_CONFIGS)}

#: the presets of any other Hub dataset: its ``text`` column as is, or stripped one per line
HUB_PRESETS = {"text": _text(), "nanogpt": Preset("{text}", "\n", strip=True)}


def get_subset(name: str) -> DatasetSpec:
    """The dataset called ``name``: a built-in name, or ``hf:OWNER/NAME[:CONFIG]``.

    An ``hf:`` name without a config has ``config`` None until the repository is read.

    Raises:
        UsageError: no dataset has that name, or it stands for several (``cosmopedia``).
    """
    spec = SUBSETS.get(name) or COSMOPEDIA.get(name)
    if spec is not None:
        return spec
    match = _HUB_NAME.match(name)
    if match:
        repo, config = match.group("repo"), match.group("config")
        spec = DatasetSpec(name, repo, None, HUB_PRESETS)
        return spec.with_config(config) if config else spec
    if name in FAMILIES:
        raise UsageError(f"{name} stands for {', '.join(FAMILIES[name])}; name one, or add --all-configs")
    if name.startswith(HUB_PREFIX):
        raise UsageError(f"{name!r} is not a Hub dataset name; write it as hf:OWNER/NAME or hf:OWNER/NAME:CONFIG")
    raise UsageError(
        f"unknown subset {name!r}; choose one of: {', '.join([*SUBSETS, *COSMOPEDIA])}, "
        "or any Hub dataset with parquet files as hf:OWNER/NAME[:CONFIG] (see smollm-corpus list)"
    )
