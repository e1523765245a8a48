"""ICD ontology: descriptions, hierarchy, chapters, billability, Excludes notes and GEM mappings.

``get_ontology()`` returns one process-wide :class:`Ontology`. Importing this package loads no data;
the first question opens the ontology index, one SQLite file in the cache folder that the first
process to need it builds from the packages (``index`` says how, ``sources`` from where, ``gem``
which mappings exist); ``get_ontology.cache_clear()`` forgets the instance (tests that move
``ICDCODER_CACHE`` call it)::

    ont = get_ontology()
    ont.lookup("e119")                  # CodeInfo(code="E11.9", system=icd10cm, ...)
    ont.exists("428.0", "icd9cm")       # True
    ont.map_9_to_10("250.00", "icd9cm") # [GemMapping(source="250.00", target="E11.9", ...)]

Ancestors leave out the chapter and section/block levels (``chapter()`` gives the chapter). ICD-10-PCS
codes get pseudo-ancestors by prefix (root operation ``0DT``, body system ``0D``).
"""

from __future__ import annotations

from functools import lru_cache

from icdcoder.ontology.lookup import Ontology
from icdcoder.ontology.model import CodeInfo, GemMapping, MappingUnavailableError

__all__ = ["CodeInfo", "GemMapping", "MappingUnavailableError", "Ontology", "get_ontology"]


@lru_cache(maxsize=1)
def get_ontology() -> Ontology:
    return Ontology()
