"""Code checking shared by every loader: normalise, then count (or, with ``strict``, refuse) bad codes.

Malformed codes are dropped; ICD-10-PCS prefixes (3-6 characters) are kept and counted apart; well-formed codes the ontology does not know are kept (a source may use
an older or newer release than the packaged one) and counted. ``strict=True`` makes both errors
that name the file, line and field.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from icdcoder.codes import CodeFormatError, CodeSystem, normalize_code, parse_system
from icdcoder.errors import DataError

MAX_EXAMPLES = 5


class CodeResolver:
    def __init__(self, *, strict: bool = False, check_ontology: bool = True):
        self.strict = strict
        self.check_ontology = check_ontology
        self.counts: Counter = Counter()
        self.examples: dict[str, list[str]] = {}
        self._known: dict[tuple[str, CodeSystem], bool] = {}

    def count(self, kind: str, example: str) -> None:
        """Count one non-fatal problem of ``kind``, keeping a few examples."""
        self.counts[kind] += 1
        ex = self.examples.setdefault(kind, [])
        if len(ex) < MAX_EXAMPLES and example not in ex:
            ex.append(example)

    def known(self, code: str, system: CodeSystem) -> bool:
        key = (code, system)
        if key not in self._known:
            from icdcoder.ontology import get_ontology

            self._known[key] = get_ontology().exists(code, system)
        return self._known[key]

    def resolve(self, raw: str, system: str | CodeSystem, *, path: str | Path | None = None,
                line: int | None = None, field: str = "code") -> str | None:
        """Canonical code, or None when it is malformed and not strict."""
        system = parse_system(system)
        try:
            code = normalize_code(raw, system)
        except CodeFormatError as e:
            if self.strict:
                raise DataError(str(e), path=path, line=line, field=field) from None
            self.count(f"malformed_{system.value}_code", str(raw))
            return None
        if system is CodeSystem.ICD10PCS and len(code) < 7:
            self.count("partial_icd10pcs_code", code)  # a prefix (CodiEsp's convention): kept, never "unknown"
        elif self.check_ontology and not self.known(code, system):
            if self.strict:
                raise DataError(f"unknown {system.value} code {code!r} (not in the ontology)",
                                path=path, line=line, field=field)
            self.count(f"unknown_{system.value}_code", code)
        return code

    def report(self) -> dict[str, dict]:
        """What went to the manifest: counts and a few examples of each kind of problem."""
        return {k: {"count": n, "examples": self.examples.get(k, [])} for k, n in sorted(self.counts.items())}
